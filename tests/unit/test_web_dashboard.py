"""The dashboard's cards (web/views.py): every figure from the store, for
every claw at once, and what a member may see."""

from __future__ import annotations

from datetime import timedelta

from appliance.schedule.jobs import ensure_heartbeat
from tests.support.panel import Harness
from web.ports import ChannelInfo
from web.views import dashboard_view


def test_cards_show_usage_activity_heartbeat_and_approvals(panel: Harness) -> None:
    for name in ("alice", "bob", "carol"):
        panel.add_claw(name)
    panel.add_user("mum", "admin")
    panel.clock.tick(86400)  # 2 March: yesterday is in this month too
    store, now = panel.store, panel.clock.now
    store.messages.add("alice", "in", "web", "kid", "hi", created_at="2026-03-02T11:00:00.000000Z")
    store.messages.add(
        "alice", "out", "web", "alice", "hello", created_at="2026-03-02T11:58:00.000000Z"
    )
    store.usage.record("alice", "tiny", prompt_tokens=100, completion_tokens=20, ts=now)
    store.usage.record(
        "alice", "tiny", prompt_tokens=7, completion_tokens=3, ts=now - timedelta(days=1)
    )
    store.usage.record(
        "bob", "tiny", prompt_tokens=5, completion_tokens=5, ts=now - timedelta(days=40)
    )
    store.approvals.request("bob", "message.send", "to grandma", 300)
    store.approvals.request("bob", "message.send", "to grandpa", 300)
    job = ensure_heartbeat(store, "carol", "UTC")
    store.schedules.claim(job, now + timedelta(minutes=30), now, "failed: model down", ran=True)
    panel.claws.channels["alice"] = ChannelInfo("ready", now.timestamp() - 120)
    panel.claws.channels["carol"] = ChannelInfo("backoff", now.timestamp(), "connection refused")

    view = dashboard_view(panel.panel, store.users.require("mum"))
    cards = {c.claw.name: c for c in view.cards}
    alice, bob, carol = cards["alice"], cards["bob"], cards["carol"]
    assert (alice.today.used, alice.month.used, alice.today.unit) == (120, 130, "tokens")
    assert alice.last_activity is not None and alice.last_activity.minute == 58
    assert alice.up_since is not None and (now - alice.up_since).total_seconds() == 120
    assert (bob.today.used, bob.month.used, bob.pending_approvals) == (0, 0, 2)
    assert bob.last_activity is None and bob.up_since is None
    assert carol.last_heartbeat == now and carol.heartbeat_status == "failed: model down"
    assert carol.alerts == ("channel: connection refused", "heartbeat: failed: model down")
    assert view.host.memory_total_mib > 0 and view.host.disk_total_gib > 0


def test_a_member_sees_only_their_claws(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("kid", "member", ("alice",), with_totp=False)
    view = dashboard_view(panel.panel, panel.store.users.require("kid"))
    assert [c.claw.name for c in view.cards] == ["alice"]


def test_the_cards_fragment_renders_live_figures(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_user("mum", "admin")
    client = panel.client()
    panel.login(client, "mum")
    panel.store.approvals.request("alice", "skill.install", "weather", 300)
    html = client.get("/dashboard/cards", headers={"HX-Request": "true"}).text
    assert "1 waiting" in html and "<html" not in html  # a fragment, not a page
