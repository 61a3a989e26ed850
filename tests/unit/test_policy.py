"""Per-claw approval policy (appliance/core/policy.py, store/policy.py,
accounts/policy.py): safe defaults, deny and allow applied where the host
API records a request, changes from the panel needing a fresh TOTP code and
audited, the `clawden policy` CLI, and a flooding claw throttled and
counted for the inbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.channel.forwarding import ClawIdentity
from appliance.cli import main
from appliance.config import Settings
from appliance.core.policy import CAPABILITIES, Grant, outcome, policy_table
from appliance.core.quotas import APPROVALS_PER_HOUR, Refusals
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest, HttpResponse, HttpService
from appliance.store import Store, open_db
from tests.support.panel import ORIGIN, Harness
from tests.unit.test_schedule_store import add_claw

POST = {"Origin": ORIGIN}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ask(api: HttpService, action: str, claw: str = "alice") -> HttpResponse:
    body = json.dumps({"action": action, "details": "d", "timeout_s": 600}).encode()
    return api.dispatch(ClawIdentity(claw), HttpRequest("POST", "/v1/approvals", {}, body))


def _body(response: HttpResponse) -> dict[str, object]:
    data: dict[str, object] = json.loads(response.body)
    return data


# ---- the pure rule ----------------------------------------------------------------
def test_everything_asks_by_default_and_deny_beats_a_grant() -> None:
    assert policy_table({}) == [(c, "ask") for c in CAPABILITIES]
    assert outcome({}, "message.send", None, T0).rule == "ask"
    grant = Grant("gr-1", "alice", "x.y", "ap-1", "user:mum", T0, T0 + timedelta(minutes=15),
                  None, None)  # fmt: skip
    assert outcome({}, "x.y", grant, T0).decided_by == "grant:gr-1"
    assert outcome({"x.y": "deny"}, "x.y", grant, T0).rule == "deny"
    assert outcome({}, "x.y", grant, T0 + timedelta(minutes=15)).rule == "ask"
    assert [c for c, _ in policy_table({"zz.custom": "allow"}, ("aa.asked",))][-2:] == [
        "aa.asked",
        "zz.custom",
    ]


# ---- applied at the host API -------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(open_db(tmp_path / "clawden.db"), audit_head=tmp_path / "audit.head")
    add_claw(s.db, "alice")
    add_claw(s.db, "bob")
    return s


def test_deny_refuses_at_once_and_allow_approves_at_once(store: Store) -> None:
    api = host_api_service(store)
    store.policy.set("alice", "skill.install", "deny", "root@cli", T0)
    store.policy.set("alice", "message.send", "allow", "root@cli", T0)
    denied = _body(_ask(api, "skill.install"))
    assert denied["status"] == "denied" and "denied by policy" in str(denied["reason"])
    allowed = _body(_ask(api, "message.send"))
    assert allowed["status"] == "approved"
    # Another claw, and another capability, still ask.
    assert _body(_ask(api, "skill.install", claw="bob"))["status"] == "pending"
    assert _body(_ask(api, "egress.new_domain"))["status"] == "pending"
    a = store.approvals.require(str(allowed["id"]))
    assert a.decided_by == "policy"
    actions = [(e.action, e.target) for e in store.audit.entries()]
    assert ("approval.policy_deny", denied["id"]) in actions
    assert ("approval.policy_allow", allowed["id"]) in actions
    # The claw's long poll sees the outcome like any other decision.
    assert store.approvals.wait(str(denied["id"]), "alice", 0).status == "denied"


def test_a_flood_is_throttled_with_a_429_and_counted(store: Store) -> None:
    refusals = Refusals()
    api = host_api_service(store, refusals=refusals)
    store.policy.set("alice", "spam.me", "deny", "root@cli", T0)  # nothing stays pending
    for _ in range(APPROVALS_PER_HOUR):
        assert _ask(api, "spam.me").status == 201
    for _ in range(17):
        refused = _ask(api, "spam.me")
        assert refused.status == 429 and "Retry-After" in refused.headers
    assert "the limit is 20 an hour" in str(_body(refused)["error"])
    assert refusals.recent("approvals.", 0) == {"alice": 17}
    assert refusals.recent("approvals.", store.clock().timestamp() + 1) == {}


# ---- changed from the panel ---------------------------------------------------------
def _admin(panel: Harness) -> tuple[TestClient, str]:
    panel.add_claw("alice")
    panel.add_user("mum", "admin")
    client = panel.client()
    return client, panel.login(client, "mum")


def test_a_policy_change_needs_a_fresh_code_and_is_audited(panel: Harness) -> None:
    client, csrf = _admin(panel)
    page = client.get("/claws/alice/policy").text
    assert all(f"<code>{c}</code>" in page for c in CAPABILITIES)
    form = {"csrf": csrf, "capability": "skill.install", "rule": "deny"}
    wrong = client.post("/claws/alice/policy", data={**form, "code": "000000"}, headers=POST)
    assert wrong.status_code == 400 and panel.store.policy.rules("alice") == {}
    code = panel.code("mum")
    done = client.post(
        "/claws/alice/policy",
        data={**form, "code": code},
        headers={**POST, "HX-Request": "true"},
    )
    assert done.status_code == 200 and "skill.install: ask → deny" in done.text
    assert panel.store.policy.rules("alice") == {"skill.install": "deny"}
    [entry] = [e for e in panel.store.audit.entries() if e.action == "policy.set"]
    assert (entry.actor, entry.target) == ("user:mum", "alice")
    assert entry.details == {"capability": "skill.install", "old": "ask", "new": "deny"}
    # The same code again is a replay.
    form["rule"] = "allow"
    replay = client.post("/claws/alice/policy", data={**form, "code": code}, headers=POST)
    assert (
        replay.status_code == 400 and panel.store.policy.rules("alice")["skill.install"] == "deny"
    )
    failed = [e.action for e in panel.store.audit.entries()]
    assert failed.count("policy.totp_failed") == 2


def test_policy_input_and_doors(panel: Harness) -> None:
    client, csrf = _admin(panel)
    bad_rule = {"csrf": csrf, "capability": "x.y", "rule": "maybe", "code": panel.code("mum")}
    refused = client.post("/claws/alice/policy", data=bad_rule, headers=POST)
    assert refused.status_code == 400 and "use allow, deny or ask" in refused.text
    bad_cap = {**bad_rule, "rule": "allow", "capability": "a\nb"}
    assert client.post("/claws/alice/policy", data=bad_cap, headers=POST).status_code == 400
    assert client.get("/claws/nobody/policy").status_code == 404
    no_csrf = {k: v for k, v in bad_rule.items() if k != "csrf"} | {"rule": "allow"}
    assert client.post("/claws/alice/policy", data=no_csrf, headers=POST).status_code == 403
    assert panel.store.policy.rules("alice") == {}


# ---- the CLI ---------------------------------------------------------------------
def test_the_cli_sets_and_lists_rules_as_root(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = open_db(Settings.from_env().db_path)
    add_claw(db, "alice")
    db.close()
    assert main(["policy", "set", "alice", "message.send", "allow"]) == 0
    assert "alice: message.send ask -> allow" in capsys.readouterr().out
    assert main(["policy", "list", "alice"]) == 0
    out = capsys.readouterr().out
    assert "alice        allow  message.send" in out and "alice        ask    skill.install" in out
    assert main(["policy", "set", "nobody", "message.send", "deny"]) != 0
    assert main(["audit", "verify"]) == 0
    store = Store.open(Settings.from_env().db_path)
    [entry] = [e for e in store.audit.entries() if e.action == "policy.set"]
    assert entry.actor == "root@cli" and entry.details["new"] == "allow"
    store.db.close()
