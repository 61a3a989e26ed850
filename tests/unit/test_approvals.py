"""Approvals on the host: the repository (injected clock), the host API routes
called directly, and `clawden approval list|show|approve|deny` on a real
SQLite home. The routes over a real SSH channel are in test_hostapi.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.channel.forwarding import ClawIdentity
from appliance.cli import main
from appliance.config import Settings
from appliance.core.approvals import MAX_PENDING_PER_CLAW, Approval, request_hash
from appliance.core.errors import Conflict, InvalidInput, NotFound
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest
from appliance.store import Store, open_db
from appliance.store.approvals import ApprovalRepository
from appliance.store.audit import AuditLog
from tests.unit.test_schedule_store import add_claw

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def repo(db: Database, clock: FakeClock) -> ApprovalRepository:
    return ApprovalRepository(db, clock=clock, sleep=clock.sleep)


# ---- the repository -------------------------------------------------------------
def test_request_is_pending_pinned_and_expires_after_the_clamped_timeout(
    repo: ApprovalRepository, clock: FakeClock
) -> None:
    a = repo.request("alice", "email.send", "to: grandma\nsubject: hi", 60)
    assert a.id.startswith("ap-") and len(a.id) == 15
    assert (a.claw, a.status, a.reason, a.decided_at, a.decided_by) == (
        "alice",
        "pending",
        "",
        None,
        None,
    )
    assert a.sha256 == request_hash("alice", "email.send", "to: grandma\nsubject: hi")
    assert a.sha256 != request_hash("bob", "email.send", "to: grandma\nsubject: hi")
    assert (a.created_at, a.expires_at) == (T0, T0 + timedelta(seconds=60))
    assert repo.request("alice", "x", "", 1).expires_at == T0 + timedelta(seconds=10)
    assert repo.request("alice", "x", "", 10**6).expires_at == T0 + timedelta(seconds=900)

    clock.now = T0 + timedelta(seconds=60)
    expired = repo.require(a.id, "alice")
    assert (expired.status, expired.decided_at) == ("expired", a.expires_at)
    assert "expired" in expired.reason
    with pytest.raises(Conflict, match=f"approval {a.id} is already expired"):
        repo.decide(a.id, True, by="cli")


@pytest.mark.parametrize(
    ("action", "details", "message"),
    [
        ("", "x", "has no action"),
        ("   ", "x", "has no action"),
        ("a" * 101, "x", "the limit is 100"),
        ("email.send\nrm -rf /", "x", "newline or other control character"),
        ("email\x1b[2Jsend", "x", "control character"),
        ("email\u202esend", "x", "control character"),
        ("email.send", "d" * 4001, "the limit is 4000"),
        ("email.send", "bad \ud800", "invalid Unicode"),
    ],
)
def test_bad_requests_are_refused_and_store_nothing(
    repo: ApprovalRepository, action: str, details: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        repo.request("alice", action, details, 60)
    assert repo.list(pending_only=False) == []


def test_at_most_five_pending_per_claw_and_expired_ones_free_a_slot(
    repo: ApprovalRepository, clock: FakeClock
) -> None:
    first = repo.request("alice", "a0", "", 10)
    for n in range(1, MAX_PENDING_PER_CLAW):
        repo.request("alice", f"a{n}", "", 600)
    with pytest.raises(Conflict, match="already have 5 approval requests waiting"):
        repo.request("alice", "one too many", "", 60)
    repo.request("bob", "bob's own", "", 60)  # another claw's quota is its own
    clock.now += timedelta(seconds=10)
    assert repo.require(first.id).status == "expired"
    repo.request("alice", "fits again", "", 60)


def test_a_claw_sees_only_its_own_requests(repo: ApprovalRepository) -> None:
    a = repo.request("alice", "email.send", "x", 60)
    assert repo.get(a.id, "bob") is None
    with pytest.raises(NotFound, match=f"you have no approval request '{a.id}'"):
        repo.wait(a.id, "bob", 5)
    with pytest.raises(NotFound, match="no approval request 'ap-nope'"):
        repo.decide("ap-nope", True, by="cli")
    assert repo.require(a.id).claw == "alice"
    assert [x.id for x in repo.list("bob")] == []
    assert [x.id for x in repo.list("alice")] == [a.id]


def test_wait_returns_pending_after_wait_s_polling_a_quarter_second(
    repo: ApprovalRepository, clock: FakeClock
) -> None:
    a = repo.request("alice", "x", "", 600)
    assert repo.wait(a.id, "alice", 1).status == "pending"
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]
    clock.slept.clear()
    repo.wait(a.id, "alice", 500)  # capped at 25 s
    assert sum(clock.slept) == pytest.approx(25)


def test_wait_sees_expiry_before_wait_s_runs_out(
    repo: ApprovalRepository, clock: FakeClock
) -> None:
    a = repo.request("alice", "x", "", 10)
    clock.now += timedelta(seconds=9)
    assert repo.wait(a.id, "alice", 25).status == "expired"
    assert sum(clock.slept) == pytest.approx(1)


def test_decide_once_only_and_list_filters(repo: ApprovalRepository) -> None:
    a = repo.request("alice", "a", "", 60)
    b = repo.request("alice", "b", "", 60)
    ok = repo.decide(a.id, True, by="cli")
    assert (ok.status, ok.reason, ok.decided_by) == ("approved", "approved by your admin", "cli")
    no = repo.decide(b.id, False, by="cli", reason="  not today ")
    assert (no.status, no.reason) == ("denied", "not today")
    assert repo.decide(repo.request("alice", "c", "", 60).id, False, "cli").reason == (
        "denied by your admin"
    )
    with pytest.raises(Conflict, match="is already approved"):
        repo.decide(a.id, False, by="cli")
    with pytest.raises(Conflict, match="is already denied"):
        repo.decide(b.id, True, by="cli")
    with pytest.raises(InvalidInput, match="the limit is 500"):
        repo.decide(repo.request("alice", "d", "", 60).id, False, "cli", "r" * 501)
    assert [x.action for x in repo.list()] == ["d"]
    assert [x.action for x in repo.list("alice", pending_only=False)] == ["a", "b", "c", "d"]
    assert repo.delete_claw("alice") == 4
    assert repo.list(pending_only=False) == []


def test_a_wait_is_answered_when_another_thread_decides(db: Database) -> None:
    repo = ApprovalRepository(db)  # the real clock and sleep
    a = repo.request("alice", "x", "", 60)
    got: list[Approval] = []
    waiter = threading.Thread(target=lambda: got.append(repo.wait(a.id, "alice", 20)))
    waiter.start()
    repo.decide(a.id, True, by="cli")
    waiter.join(timeout=5)
    assert not waiter.is_alive() and got[0].status == "approved"


# ---- the host API routes, called directly ---------------------------------------
def _post(db: Database, claw: str, path: str, body: object) -> tuple[int, dict[str, object]]:
    request = HttpRequest("POST", path, {}, json.dumps(body).encode())
    response = host_api_service(Store(db)).dispatch(ClawIdentity(claw), request)
    return response.status, json.loads(response.body)


def test_routes_queue_poll_audit_and_refuse_bad_input(db: Database) -> None:
    status, created = _post(
        db, "alice", "/v1/approvals", {"action": "email.send", "details": "hi", "timeout_s": 60}
    )
    assert status == 201 and created["status"] == "pending" and created["reason"] == ""
    approval_id = str(created["id"])
    [entry] = [e for e in AuditLog(db).entries() if e.action == "approval.request"]
    assert (entry.actor, entry.target, entry.details["action"]) == (
        "claw:alice",
        approval_id,
        "email.send",
    )
    assert entry.details["sha256"] == request_hash("alice", "email.send", "hi")
    assert _post(db, "alice", "/v1/approvals/wait", {"id": approval_id, "wait_s": 0}) == (
        200,
        {"id": approval_id, "status": "pending", "reason": ""},
    )
    status, body = _post(db, "bob", "/v1/approvals/wait", {"id": approval_id, "wait_s": 0})
    assert status == 404 and body["error"] == {
        "message": f"you have no approval request '{approval_id}' — use the id you were given",
        "code": "not_found",
    }
    status, body = _post(db, "alice", "/v1/approvals", {"action": "a\nb", "details": ""})
    assert status == 400 and "control character" in str(body["error"])
    status, body = _post(db, "alice", "/v1/approvals", {"action": "a", "details": 3})
    assert (status, body["error"]) == (
        400,
        {"message": "'details' must be a str", "code": "bad_request"},
    )
    status, body = _post(
        db, "alice", "/v1/approvals", {"action": "a", "details": "", "timeout_s": "9"}
    )
    assert status == 400 and "'timeout_s' must be a number" in str(body["error"])


def test_a_full_queue_is_a_denial_the_agent_can_read(db: Database) -> None:
    for n in range(MAX_PENDING_PER_CLAW):
        _post(db, "alice", "/v1/approvals", {"action": f"a{n}", "details": "", "timeout_s": 60})
    status, body = _post(db, "alice", "/v1/approvals", {"action": "more", "details": ""})
    assert status == 201 and (body["id"], body["status"]) == ("none", "denied")
    assert "already have 5 approval requests waiting" in str(body["reason"])
    assert len(ApprovalRepository(db).list("alice")) == MAX_PENDING_PER_CLAW


# ---- the CLI ----------------------------------------------------------------------
def _store() -> Database:
    return open_db(Settings.from_env().db_path)


def _ask(action: str, details: str, claw: str = "alice") -> Approval:
    db = _store()
    try:
        if not db["claws"].count_where("name = ?", [claw]):
            add_claw(db, claw)
        return ApprovalRepository(db).request(claw, action, details, 300)
    finally:
        db.close()


def test_list_show_approve_then_the_wait_returns_approved(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _ask("email.send", "to: grandma\x1b[31m\x07\nsecond line\x1b]0;x")
    assert main(["approval", "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert a.id in out and "alice" in out and a.sha256[:12] in out
    assert "email.send — to: grandma\\x1b[31m\\x07…" in out

    assert main(["approval", "show", a.id]) == 0
    out = capsys.readouterr().out
    assert f"sha256:   {a.sha256}" in out and "    second line\\x1b]0;x" in out
    assert "\x1b" not in out and "pending" in out

    assert main(["approval", "approve", a.id]) == 0
    assert f"approved {a.id}" in capsys.readouterr().out
    db = _store()
    try:
        assert ApprovalRepository(db).wait(a.id, "alice", 5).status == "approved"
        [entry] = [e for e in AuditLog(db).entries() if e.action == "approval.approve"]
        assert (entry.actor, entry.target, entry.details["sha256"]) == ("root@cli", a.id, a.sha256)
        assert ApprovalRepository(db).require(a.id).decided_by == "root@cli"
    finally:
        db.close()
    assert main(["audit", "verify"]) == 0  # the head file kept up with the decision
    capsys.readouterr()
    assert main(["approval", "list"]) == 0
    assert "no pending approval requests" in capsys.readouterr().out
    assert main(["approval", "list", "alice", "--all"]) == 0
    assert "approved" in capsys.readouterr().out


def test_deny_with_a_reason_reaches_the_claw(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _ask("shell.sudo", "apt upgrade")
    assert main(["approval", "deny", a.id, "--reason", "ask me after dinner"]) == 0
    assert f"denied {a.id}" in capsys.readouterr().out
    db = _store()
    try:
        got = ApprovalRepository(db).wait(a.id, "alice", 0)
        assert (got.status, got.reason) == ("denied", "ask me after dinner")
        assert [e.action for e in AuditLog(db).entries()][-1] == "approval.deny"
    finally:
        db.close()


@pytest.mark.parametrize(
    ("argv", "expected", "code"),
    [
        (["approval", "approve", "ap-000000000000"], "no approval request 'ap-000000000000'", 2),
        (["approval", "deny", "nonsense"], "no approval request 'nonsense'", 2),
        (["approval", "show", "ap-000000000000"], "no approval request", 2),
        (["approval", "list", "nobody"], "no claw named 'nobody'", 2),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str, code: int
) -> None:
    a = _ask("email.send", "x")
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err
    db = _store()
    try:
        assert ApprovalRepository(db).require(a.id).status == "pending"
        assert AuditLog(db).entries() == []
    finally:
        db.close()


def test_deciding_twice_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _ask("email.send", "x")
    assert main(["approval", "deny", a.id]) == 0
    capsys.readouterr()
    assert main(["approval", "approve", a.id]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: approval {a.id} is already denied — nothing to decide")
    assert err.count("\n") == 1
