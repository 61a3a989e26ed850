"""The admin sets a claw's heartbeat on its page (web/routes/heartbeat.py):
the same rules and audit as `clawden schedule add NAME heartbeat SPEC`."""

from __future__ import annotations

from tests.support.panel import ORIGIN, Harness


def test_the_admin_sets_and_turns_off_the_heartbeat(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_user("mum", "admin")
    client = panel.client()
    csrf = panel.login(client, "mum")
    headers = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
    form = {"spec": "every=2h active=08:00-20:00", "enabled": "on"}
    done = client.post("/claws/alice/heartbeat", data=form, headers=headers)
    assert done.status_code == 303 and done.headers["location"] == "/claws/alice"
    job = panel.store.schedules.heartbeat("alice")
    assert job is not None and job.enabled and "every=2h" in job.spec
    page = client.get("/claws/alice").text
    assert 'name="spec"' in page and "every=2h" in page
    off = client.post("/claws/alice/heartbeat", data={"spec": job.spec}, headers=headers)
    assert off.status_code == 303
    after = panel.store.schedules.heartbeat("alice")
    assert after is not None and not after.enabled and after.spec == job.spec
    actions = [(e.actor, e.action) for e in panel.store.audit.entries()]
    assert ("user:mum", "schedule.add") in actions and ("user:mum", "schedule.rm") in actions


def test_a_bad_spec_is_a_clear_error_and_changes_nothing(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_user("mum", "admin")
    client = panel.client()
    csrf = panel.login(client, "mum")
    headers = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
    bad = client.post(
        "/claws/alice/heartbeat", data={"spec": "every=banana", "enabled": "on"}, headers=headers
    )
    assert bad.status_code == 400
    assert panel.store.schedules.heartbeat("alice") is None


def test_members_and_forged_posts_cannot_change_it(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("ana", "member", ("alice",), with_totp=False)
    client = panel.client()
    csrf = panel.login(client, "ana")
    headers = {"Origin": ORIGIN, "X-CSRF-Token": csrf}
    form = {"spec": "", "enabled": "on"}
    assert client.post("/claws/alice/heartbeat", data=form, headers=headers).status_code == 403
    assert client.post("/claws/bob/heartbeat", data=form, headers=headers).status_code == 404
    no_token = client.post("/claws/alice/heartbeat", data=form, headers={"Origin": ORIGIN})
    assert no_token.status_code == 403
    assert panel.store.schedules.heartbeat("alice") is None
