"""The approvals inbox in the panel (web/routes/approvals.py): hostile
details shown inert, repeats grouped, TOTP-bound decisions that reach the
waiting claw, replays, races, hash binding, lockout, recovery codes, grants
and their revocation, "expired unseen", the throttle line, and the doors
(members, CSRF) — on a real SQLite store through the real app and the real
host API handler."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from appliance.accounts.credentials import code_digest, new_recovery_codes
from appliance.accounts.decisions import decide
from appliance.channel.forwarding import ClawIdentity
from appliance.core.approvals import Approval
from appliance.core.errors import ClawdenError
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest, HttpResponse, HttpService
from appliance.store import Store
from tests.support.panel import ORIGIN, Harness

POST = {"Origin": ORIGIN}
HOSTILE = (
    '<script>alert(1)</script><img src=x onerror="alert(2)">'
    "\nsend to \u202emoc.live@\u202c and pay\u200b now"
)


def _home(panel: Harness) -> HttpService:
    """Claws alice and bob, admin mum, member kid (owns bob); the store and
    the host API on the harness's clock."""
    panel.store.clock = panel.clock
    panel.store.approvals.clock = panel.clock
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("mum", "admin")
    panel.add_user("kid", "member", ("bob",))
    return host_api_service(panel.store)


@dataclass
class Host:
    """The host API as the claws reach it, on the panel's store."""

    api: HttpService
    store: Store

    def post(self, body: dict[str, object], claw: str) -> HttpResponse:
        request = HttpRequest("POST", "/v1/approvals", {}, json.dumps(body).encode())
        return self.api.dispatch(ClawIdentity(claw), request)

    def ask(self, action: str, details: str, claw: str = "alice") -> Approval:
        response = self.post({"action": action, "details": details, "timeout_s": 900}, claw)
        assert response.status == 201, response.body
        return self.store.approvals.require(json.loads(response.body)["id"])


@pytest.fixture
def host(panel: Harness) -> Host:
    return Host(_home(panel), panel.store)


def _admin(panel: Harness) -> tuple[TestClient, str]:
    client = panel.client()
    return client, panel.login(client, "mum")


def _decide(
    panel: Harness,
    client: TestClient,
    csrf: str,
    a: Approval,
    decision: str = "approve",
    code: str | None = None,
    sha256: str | None = None,
    htmx: bool = True,
    **extra: str,
) -> Response:
    form = {
        "csrf": csrf,
        "sha256": sha256 or a.sha256,
        "code": code if code is not None else panel.code("mum"),
        "decision": decision,
        **extra,
    }
    headers = {**POST, "HX-Request": "true"} if htmx else POST
    return client.post(f"/approvals/{a.id}/decide", data=form, headers=headers)


def test_the_inbox_shows_hostile_details_inert_and_exact(panel: Harness, host: Host) -> None:
    a = host.ask("email.send<b>", HOSTILE)
    client, _ = _admin(panel)
    page = client.get("/approvals")
    assert page.status_code == 200
    html = page.text
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'onerror="alert' not in html and "onerror=&#34;alert(2)&#34;" in html
    # Bidi override and zero-width characters are shown, not obeyed.
    assert "\u202e" not in html and "\u200b" not in html
    assert "\\u202emoc.live@\\u202c" in html and "pay\\u200b now" in html
    assert "email.send&lt;b&gt;" in html
    # Inside <pre>, line breaks kept; with the request's fingerprint.
    details = re.search(r'<pre class="details">(.*?)</pre>', html, re.S)
    assert details and "\nsend to" in details.group(1)
    assert f"{a.sha256[:4]} {a.sha256[4:8]} {a.sha256[8:12]}" in html


def test_identical_requests_are_grouped_with_a_count(panel: Harness, host: Host) -> None:
    first = host.ask("email.send", "to grandma")
    panel.clock.tick(5)
    host.ask("email.send", "to grandma")
    host.ask("email.send", "to grandma")
    host.ask("email.send", "to grandpa")
    host.ask("email.send", "to grandma", claw="bob")
    client, _ = _admin(panel)
    html = client.get("/approvals").text
    assert html.count('class="card approval"') == 3
    assert "× 3 identical requests" in html and f'id="approval-{first.id}"' in html
    assert "Waiting (5)" in html
    assert client.get("/approvals/badge").text == "5"


def test_one_decision_covers_the_group_it_was_shown_as(panel: Harness, host: Host) -> None:
    first = host.ask("email.send", "to grandma")
    second = host.ask("email.send", "to grandma")
    other = host.ask("email.send", "to grandpa")
    elsewhere = host.ask("email.send", "to grandma", claw="bob")
    client, csrf = _admin(panel)
    assert _decide(panel, client, csrf, first, decision="deny").status_code == 200
    status = {a.id: panel.store.approvals.require(a.id).status for a in (first, second)}
    assert status == {first.id: "denied", second.id: "denied"}
    # A different text, or the same text from another claw, is its own request.
    assert panel.store.approvals.require(other.id).pending
    assert panel.store.approvals.require(elsewhere.id).pending
    denials = [e for e in panel.store.audit.entries() if e.action == "approval.deny"]
    assert [e.target for e in denials] == [first.id, second.id]
    assert denials[1].details["same_as"] == first.id


def test_a_decision_with_a_fresh_code_reaches_the_waiting_claw(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "to grandma")
    client, csrf = _admin(panel)
    done = _decide(panel, client, csrf, a, reason="ok, once")
    assert done.status_code == 200 and 'id="approval-list"' in done.text
    seen = panel.store.approvals.wait(a.id, "alice", 0)
    assert (seen.status, seen.decided_by, seen.reason) == ("approved", "user:mum", "ok, once")
    assert client.get("/approvals/badge").text == ""
    # A plain form post is redirected back to the inbox.
    b = host.ask("email.send", "to grandpa")
    plain = _decide(panel, client, csrf, b, decision="deny", htmx=False)
    assert plain.status_code == 303 and plain.headers["location"] == "/approvals"
    assert panel.store.approvals.wait(b.id, "alice", 0).status == "denied"


def test_a_replayed_code_is_refused(panel: Harness, host: Host) -> None:
    a, b = host.ask("email.send", "one"), host.ask("email.send", "two")
    client, csrf = _admin(panel)
    code = panel.code("mum")
    assert _decide(panel, client, csrf, a, code=code).status_code == 200
    again = _decide(panel, client, csrf, b, code=code)
    assert again.status_code == 400
    assert "wrong or was already used" in again.text
    assert again.headers["HX-Retarget"] == "#errors"
    assert panel.store.approvals.require(b.id).pending


def test_two_racing_decisions_with_one_code_only_one_wins(panel: Harness, host: Host) -> None:
    a, b = host.ask("email.send", "one"), host.ask("email.send", "two")
    code = panel.code("mum")
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def race(approval: Approval) -> None:
        store = Store.open(panel.home / "clawden.db", audit_head=panel.home / "audit.head")
        store.approvals.clock = panel.clock
        try:
            barrier.wait()
            decide(store, "mum", approval.id, approval.sha256, code, True, clock=panel.clock)
            results[approval.id] = "approved"
        except ClawdenError as exc:
            results[approval.id] = exc.what
        finally:
            store.db.close()

    threads = [threading.Thread(target=race, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["approved", "that code is wrong or was already used"]
    statuses = {panel.store.approvals.require(x.id).status for x in (a, b)}
    assert statuses == {"approved", "pending"}


def test_a_code_bound_to_one_request_cannot_approve_another(panel: Harness, host: Host) -> None:
    a, b = host.ask("email.send", "to grandma"), host.ask("wire.money", "to a stranger")
    client, csrf = _admin(panel)
    swapped = _decide(panel, client, csrf, b, sha256=a.sha256)
    assert swapped.status_code == 409
    assert "not the request that was shown" in swapped.text
    assert panel.store.approvals.require(b.id).pending
    mismatches = [e for e in panel.store.audit.entries() if e.action == "approval.hash_mismatch"]
    assert [e.target for e in mismatches] == [b.id]


def test_five_wrong_codes_lock_deciding(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "to grandma")
    client, csrf = _admin(panel)
    for _ in range(5):
        wrong = _decide(panel, client, csrf, a, code="000000")
        assert wrong.status_code == 400
    # Now even the right code is refused, without being looked at.
    locked = _decide(panel, client, csrf, a)
    assert locked.status_code == 403 and "locked" in locked.text
    assert panel.store.approvals.require(a.id).pending
    actions = [e.action for e in panel.store.audit.entries()]
    assert actions.count("approval.totp_failed") == 5 and actions.count("user.locked_out") == 1


def test_a_recovery_code_approves_nothing(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "to grandma")
    codes = new_recovery_codes()
    panel.store.users.replace_recovery_codes("mum", [code_digest(c) for c in codes])
    client, csrf = _admin(panel)
    refused = _decide(panel, client, csrf, a, code=codes[0])
    assert refused.status_code == 400
    assert panel.store.approvals.require(a.id).pending
    assert panel.store.users.recovery_codes_left("mum") == len(codes)


def test_a_grant_approves_repeats_until_it_ends_and_revoking_stops_it(
    panel: Harness, host: Host
) -> None:
    a = host.ask("email.send", "to grandma")
    client, csrf = _admin(panel)
    assert _decide(panel, client, csrf, a, grant_minutes="15").status_code == 200
    [grant] = panel.store.grants.active(panel.clock())
    auto = host.ask("email.send", "to grandpa this time")
    assert (auto.status, auto.decided_by) == ("approved", f"grant:{grant.id}")
    other = host.ask("skill.install", "weather")
    assert other.pending  # another action still asks
    audit = [e for e in panel.store.audit.entries() if e.action == "approval.granted_auto"]
    assert [e.target for e in audit] == [auto.id] and audit[0].actor == f"grant:{grant.id}"
    html = client.get("/approvals").text
    assert f'id="grant-{grant.id}"' in html
    # After 15 minutes it asks again.
    panel.clock.tick(15 * 60)
    assert host.ask("email.send", "later").pending
    # A new grant, revoked: asks again at once (no code needed to narrow).
    b = host.ask("email.send", "again")
    _decide(panel, client, csrf, b, grant_minutes="60")
    [grant] = panel.store.grants.active(panel.clock())
    revoked = client.post(
        f"/approvals/grants/{grant.id}/revoke",
        data={"csrf": csrf},
        headers={**POST, "HX-Request": "true"},
    )
    assert revoked.status_code == 200 and f'id="grant-{grant.id}"' not in revoked.text
    assert host.ask("email.send", "after revoking").pending
    assert "approval.grant_revoke" in [e.action for e in panel.store.audit.entries()]


def test_a_denial_makes_no_grant(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "to grandma")
    client, csrf = _admin(panel)
    _decide(panel, client, csrf, a, decision="deny", grant_minutes="60")
    assert panel.store.grants.active(panel.clock()) == []
    bad = _decide(panel, client, csrf, host.ask("x.y", "z"), grant_minutes="7")
    assert bad.status_code == 400 and "not offered" in bad.text


def test_expired_before_anyone_looked_is_shown_as_expired_unseen(
    panel: Harness, host: Host
) -> None:
    unseen = host.ask("email.send", "nobody saw me")
    panel.clock.tick(1000)
    seen = host.ask("email.send", "looked at")
    client, _ = _admin(panel)
    client.get("/approvals")  # the inbox shows `seen` while it is pending
    panel.clock.tick(1000)
    html = client.get("/approvals").text
    rows = re.findall(r'<tr class="status-expired">(.*?)</tr>', html, re.S)
    assert len(rows) == 2
    by_text = {("unseen" if "expired unseen" in r else "seen"): r for r in rows}
    assert set(by_text) == {"unseen", "seen"}
    assert panel.store.approvals.require(unseen.id).unseen_expiry
    assert not panel.store.approvals.require(seen.id).unseen_expiry


def test_a_throttled_claw_is_named_on_the_inbox(panel: Harness, host: Host) -> None:
    panel.claws.refused_approvals["alice"] = 37
    client, _ = _admin(panel)
    assert (
        "alice was throttled: 37 requests refused in the last hour" in client.get("/approvals").text
    )


def test_members_find_no_approvals_routes(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "bob's", claw="bob")
    client = panel.client()
    csrf = panel.login(client, "kid")
    for path in ("/approvals", "/approvals/list", "/approvals/badge", "/policy"):
        assert client.get(path).status_code == 404, path
    assert client.get("/claws/bob/policy").status_code == 404
    form = {"csrf": csrf, "sha256": a.sha256, "code": "123456", "decision": "approve"}
    assert client.post(f"/approvals/{a.id}/decide", data=form, headers=POST).status_code == 404
    revoke = client.post("/approvals/grants/gr-1/revoke", data={"csrf": csrf}, headers=POST)
    assert revoke.status_code == 404
    assert panel.store.approvals.require(a.id).pending


def test_deciding_without_the_csrf_token_is_refused(panel: Harness, host: Host) -> None:
    a = host.ask("email.send", "to grandma")
    client, _ = _admin(panel)
    form = {"sha256": a.sha256, "code": panel.code("mum"), "decision": "approve"}
    refused = client.post(f"/approvals/{a.id}/decide", data=form, headers=POST)
    assert refused.status_code == 403
    assert panel.store.approvals.require(a.id).pending
    revoke = client.post("/approvals/grants/gr-1/revoke", headers=POST)
    assert revoke.status_code == 403
