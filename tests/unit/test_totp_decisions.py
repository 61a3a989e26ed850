"""TOTP (RFC 6238 vectors, replay) and approval decisions bound to it
(appliance/accounts/decisions.py), on real SQLite files."""

from __future__ import annotations

import base64
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.accounts import totp
from appliance.accounts.credentials import Passwords
from appliance.accounts.decisions import decide, show_approval, visible_approvals
from appliance.accounts.service import Accounts
from appliance.core.accounts import MAX_FAILURES_PER_USER, ROOT_CLI_ACTOR, Forbidden
from appliance.core.approvals import Approval
from appliance.core.errors import ClawdenError, Conflict, InvalidInput, NotFound
from appliance.store import Store
from tests.unit.test_accounts import FAST, PASSWORD, Clock, enrol
from tests.unit.test_schedule_store import add_claw

# RFC 6238 appendix B, SHA1 column: the 20-byte ASCII seed, 8 digits, 30 s steps.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("unix", "code"), RFC_VECTORS)
def test_rfc6238_vectors(unix: int, code: str) -> None:
    now = datetime.fromtimestamp(unix, UTC)
    step = totp.matching_step(RFC_SECRET, code, now, digits=8, digest=hashlib.sha1)
    assert step == unix // 30
    # One step either side is accepted (clock drift); two are not.
    for drift, expected in ((30, step), (-30, step), (90, None)):
        later = now + timedelta(seconds=drift)
        assert totp.matching_step(RFC_SECRET, code, later, digits=8) == expected


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "１２３４５６", " 1 2 3 "])
def test_malformed_codes_match_nothing(code: str) -> None:
    assert totp.matching_step(RFC_SECRET, code, datetime.now(UTC)) is None


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = Store.open(tmp_path / "clawden.db", audit_head=tmp_path / "audit.head")
    add_claw(store.db, "alice")
    add_claw(store.db, "bob")
    store.db.close()
    return tmp_path


def open_store(home: Path) -> Store:
    return Store.open(home / "clawden.db", audit_head=home / "audit.head")


@pytest.fixture
def store(home: Path) -> Store:
    return open_store(home)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mum(store: Store, clock: Clock) -> str:
    """An admin with TOTP on; returns its secret."""
    accounts = Accounts(store, Passwords(FAST), clock)
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    accounts.add("kid", "member", PASSWORD, ("alice",), ROOT_CLI_ACTOR)
    accounts.add("teen", "member", PASSWORD, ("bob",), ROOT_CLI_ACTOR)
    secret, _ = enrol(accounts, "mum", clock)
    return secret


def ask(store: Store, claw: str = "alice", details: str = "to: grandma") -> Approval:
    return store.approvals.request(claw, "email.send", details, 300)


def test_a_code_decides_once_and_a_replay_is_refused(store: Store, clock: Clock, mum: str) -> None:
    a, b = ask(store), ask(store, details="to: grandpa")
    code = totp.code_at(mum, clock.now)
    done = decide(store, "mum", a.id, a.sha256, code, True, clock=clock)
    assert (done.status, done.decided_by) == ("approved", "user:mum")
    with pytest.raises(InvalidInput, match="already used"):
        decide(store, "mum", b.id, b.sha256, code, True, clock=clock)
    assert store.approvals.require(b.id).pending
    # An older code (still inside the ±1 window) is refused too: steps only move forward.
    clock.now += timedelta(seconds=30)
    with pytest.raises(InvalidInput):
        decide(store, "mum", b.id, b.sha256, code, True, clock=clock)
    fresh = totp.code_at(mum, clock.now)
    with pytest.raises(Conflict, match="already approved"):
        decide(store, "mum", a.id, a.sha256, fresh, False, clock=clock)  # the code is not spent
    assert decide(store, "mum", b.id, b.sha256, fresh, False, "no", clock=clock).status == "denied"
    entries = [e for e in store.audit.entries() if e.action.startswith("approval.")]
    assert [e.action for e in entries] == [
        "approval.approve",
        "approval.totp_failed",
        "approval.totp_failed",
        "approval.deny",
    ]
    assert entries[0].actor == "user:mum" and entries[0].details["sha256"] == a.sha256
    assert all(code not in str(e.details) for e in store.audit.entries())


def test_two_concurrent_approvals_with_one_code_exactly_one_wins(
    home: Path, store: Store, clock: Clock, mum: str
) -> None:
    a, b = ask(store), ask(store, details="to: grandpa")
    code = totp.code_at(mum, clock.now)
    results: dict[str, object] = {}
    start = threading.Barrier(2)

    def run(approval: Approval) -> None:
        own = open_store(home)  # its own connection to the same file
        try:
            start.wait()
            results[approval.id] = decide(
                own, "mum", approval.id, approval.sha256, code, True, clock=clock
            )
        except ClawdenError as exc:
            results[approval.id] = exc
        finally:
            own.db.close()

    threads = [threading.Thread(target=run, args=(x,)) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [r for r in results.values() if isinstance(r, Approval)]
    lost = [r for r in results.values() if isinstance(r, InvalidInput)]
    assert (len(won), len(lost)) == (1, 1)
    statuses = sorted(store.approvals.require(x.id).status for x in (a, b))
    assert statuses == ["approved", "pending"]


def test_a_code_bound_to_request_a_cannot_approve_b(store: Store, clock: Clock, mum: str) -> None:
    a, b = ask(store), ask(store, details="rm -rf /")
    code = totp.code_at(mum, clock.now)
    with pytest.raises(Conflict, match="not the request that was shown"):
        decide(store, "mum", b.id, a.sha256, code, True, clock=clock)
    assert store.approvals.require(b.id).pending
    assert store.audit.entries()[-1].action == "approval.hash_mismatch"
    # The code was not spent on the refused request: A can still be decided with it.
    assert decide(store, "mum", a.id, a.sha256, code, True, clock=clock).status == "approved"


def test_the_hash_is_checked_again_just_before_the_decision(
    store: Store, clock: Clock, mum: str
) -> None:
    a = ask(store)
    # The row's text is rewritten after it was shown (and its stored hash kept).
    store.db.execute("UPDATE approvals SET details = 'to: attacker' WHERE id = ?", [a.id])
    with pytest.raises(Conflict):
        store.approvals.decide(a.id, True, by="user:mum", expected_sha256=a.sha256)
    assert store.approvals.require(a.id).pending


def test_brute_forcing_codes_locks_deciding_and_is_audited(
    store: Store, clock: Clock, mum: str
) -> None:
    a = ask(store)
    right = totp.code_at(mum, clock.now)
    wrong = [f"{(int(right) + n) % 1_000_000:06d}" for n in range(1, 100)]
    wrong = [w for w in wrong if totp.matching_step(mum, w, clock.now) is None]
    for guess in wrong[:MAX_FAILURES_PER_USER]:
        with pytest.raises(InvalidInput):
            decide(store, "mum", a.id, a.sha256, guess, True, clock=clock)
    with pytest.raises(Forbidden, match="locked"):
        decide(store, "mum", a.id, a.sha256, right, True, clock=clock)
    assert store.approvals.require(a.id).pending
    logged = [e.action for e in store.audit.entries()]
    assert logged.count("approval.totp_failed") == MAX_FAILURES_PER_USER
    assert logged.count("user.locked_out") == 1


def test_a_recovery_code_logs_in_but_approves_nothing(store: Store, clock: Clock, mum: str) -> None:
    accounts = Accounts(store, Passwords(FAST), clock)
    accounts.start_totp("kid", ROOT_CLI_ACTOR)  # unrelated: mum's codes are what matter
    uri = accounts.start_totp("mum", ROOT_CLI_ACTOR)
    secret = uri.split("secret=")[1].split("&")[0]
    codes = accounts.confirm_totp("mum", totp.code_at(secret, clock.now), ROOT_CLI_ACTOR)
    clock.now += timedelta(seconds=30)
    assert accounts.login("mum", PASSWORD, codes[0], "10.0.0.2").via == "recovery_code"
    a = ask(store)
    with pytest.raises(InvalidInput):
        decide(store, "mum", a.id, a.sha256, codes[1], True, clock=clock)
    assert store.approvals.require(a.id).pending
    assert store.users.recovery_codes_left("mum") == 9  # the refused one was not spent


def test_members_see_their_own_claws_only_and_decide_nothing(
    store: Store, clock: Clock, mum: str
) -> None:
    mine, theirs = ask(store, "alice"), ask(store, "bob")
    kid, admin = store.users.require("kid"), store.users.require("mum")
    assert [x.id for x in visible_approvals(store, kid)] == [mine.id]
    assert {x.id for x in visible_approvals(store, admin)} == {mine.id, theirs.id}
    assert show_approval(store, kid, mine.id) == mine
    with pytest.raises(NotFound) as info:
        show_approval(store, kid, theirs.id)
    assert "bob" not in str(info.value)
    code = totp.code_at(mum, clock.now)
    with pytest.raises(NotFound):
        decide(store, "kid", theirs.id, theirs.sha256, code, True, clock=clock)
    with pytest.raises(Forbidden, match="only an admin"):
        decide(store, "kid", mine.id, mine.sha256, code, True, clock=clock)
    assert store.approvals.require(mine.id).pending and store.approvals.require(theirs.id).pending


def test_an_admin_without_totp_cannot_decide(store: Store, clock: Clock) -> None:
    Accounts(store, Passwords(FAST), clock).add("dad", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    a = ask(store)
    with pytest.raises(InvalidInput, match="no TOTP set up"):
        decide(store, "dad", a.id, a.sha256, "123456", True, clock=clock)
