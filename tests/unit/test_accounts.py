"""Family accounts on a real SQLite file: users and their claws, passwords,
logins with lockout, recovery codes and sessions (appliance/accounts/service.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from appliance.accounts import totp
from appliance.accounts.credentials import Passwords, code_digest, normalise_code
from appliance.accounts.service import Accounts
from appliance.core.accounts import (
    LOCKOUT,
    MAX_FAILURES_PER_ADDRESS,
    MAX_FAILURES_PER_USER,
    ROOT_CLI_ACTOR,
    SESSION_TTL,
    Forbidden,
    locked_until,
)
from appliance.core.errors import Conflict, InvalidInput, NotFound
from appliance.store import Store
from tests.unit.test_schedule_store import add_claw

T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
PASSWORD = "correct horse battery"
# Cheap argon2 parameters: the tests check behaviour, not the cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "clawden.db", audit_head=tmp_path / "audit.head")
    add_claw(s.db, "alice")
    add_claw(s.db, "bob")
    yield s
    s.db.close()


@pytest.fixture
def accounts(store: Store, clock: Clock) -> Accounts:
    return Accounts(store, Passwords(FAST), clock)


def enrol(accounts: Accounts, name: str, clock: Clock) -> tuple[str, list[str]]:
    """Enrol TOTP for ``name``: (its secret, its recovery codes)."""
    uri = accounts.start_totp(name, ROOT_CLI_ACTOR)
    secret = uri.split("secret=")[1].split("&")[0]
    codes = accounts.confirm_totp(name, totp.code_at(secret, clock.now), ROOT_CLI_ACTOR)
    clock.now += timedelta(seconds=30)  # the confirming step is spent
    return secret, codes


def actions(store: Store) -> list[str]:
    return [e.action for e in store.audit.entries()]


# ---- users ----------------------------------------------------------------------
def test_add_links_claws_hashes_the_password_and_audits(accounts: Accounts, store: Store) -> None:
    user = accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    kid = accounts.add("kid", "member", PASSWORD, ("alice",), ROOT_CLI_ACTOR)
    assert (user.role, user.claws, user.totp_active) == ("admin", (), False)
    assert kid.claws == ("alice",) and store.users.owner_of("alice") == "kid"
    stored = store.users.password_hash("mum")
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    assert actions(store) == ["user.add", "user.add"]
    assert store.audit.entries()[1].details == {"role": "member", "claws": ["alice"]}
    assert store.audit.verify().ok


@pytest.mark.parametrize(
    ("name", "role", "password", "claws", "error"),
    [
        ("Mum", "admin", PASSWORD, (), InvalidInput),
        ("mum", "root", PASSWORD, (), InvalidInput),
        ("mum", "admin", "short", (), InvalidInput),
        ("mum", "member", PASSWORD, ("nobody",), NotFound),
        ("kid", "member", PASSWORD, ("alice",), Conflict),  # a name taken
        ("kid2", "member", PASSWORD, ("alice",), Conflict),  # a claw owned already
    ],
)
def test_bad_adds_store_nothing(
    accounts: Accounts,
    store: Store,
    name: str,
    role: str,
    password: str,
    claws: tuple[str, ...],
    error: type[Exception],
) -> None:
    accounts.add("kid", "member", PASSWORD, ("alice",), ROOT_CLI_ACTOR)
    before = (store.users.list(), actions(store))
    with pytest.raises(error) as info:
        accounts.add(name, role, password, claws, ROOT_CLI_ACTOR)
    assert password not in str(info.value) or password == PASSWORD
    assert (store.users.list(), actions(store)) == before


def test_remove_forgets_links_totp_codes_and_sessions(
    accounts: Accounts, store: Store, clock: Clock
) -> None:
    accounts.add("kid", "member", PASSWORD, ("alice",), ROOT_CLI_ACTOR)
    enrol(accounts, "kid", clock)
    login = accounts.login(
        "kid", PASSWORD, totp.code_at(enrol_secret(store, "kid"), clock.now), "a"
    )
    accounts.remove("kid", ROOT_CLI_ACTOR)
    assert store.users.get("kid") is None and store.users.owner_of("alice") is None
    assert accounts.session_user(login.token) is None
    for table in ("totp", "recovery_codes", "sessions", "user_claws"):
        assert store.db[table].count == 0, table
    assert actions(store)[-1] == "user.rm"
    with pytest.raises(NotFound):
        accounts.remove("kid", ROOT_CLI_ACTOR)


def enrol_secret(store: Store, name: str) -> str:
    secret = store.users.active_totp(name)
    assert secret is not None
    return secret


# ---- logins and lockout ------------------------------------------------------
def test_password_only_until_totp_is_on_then_both(
    accounts: Accounts, store: Store, clock: Clock
) -> None:
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    assert accounts.login("mum", PASSWORD, "", "10.0.0.2").via == "password"
    secret, _ = enrol(accounts, "mum", clock)
    with pytest.raises(InvalidInput, match="wrong user name, password or code"):
        accounts.login("mum", PASSWORD, "", "10.0.0.2")
    login = accounts.login("mum", PASSWORD, totp.code_at(secret, clock.now), "10.0.0.2")
    assert login.via == "totp" and accounts.session_user(login.token) == login.user
    entry = store.audit.entries()[-1]
    assert (entry.action, entry.actor, entry.details) == (
        "user.login",
        "user:mum",
        {"address": "10.0.0.2", "via": "totp"},
    )


def test_a_pending_enrolment_does_not_replace_the_active_secret(
    accounts: Accounts, store: Store, clock: Clock
) -> None:
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    secret, _ = enrol(accounts, "mum", clock)
    accounts.start_totp("mum", ROOT_CLI_ACTOR)
    assert store.users.active_totp("mum") == secret
    with pytest.raises(InvalidInput, match="does not match"):
        accounts.confirm_totp("mum", "000000", ROOT_CLI_ACTOR)
    assert store.users.active_totp("mum") == secret


def test_brute_force_locks_the_account_and_is_audited(
    accounts: Accounts, store: Store, clock: Clock
) -> None:
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    for i in range(MAX_FAILURES_PER_USER):
        with pytest.raises(InvalidInput):
            accounts.login("mum", f"guess number {i}", "", "10.0.0.9")
    # Locked: even the right password is refused, without being checked.
    with pytest.raises(Forbidden, match="locked"):
        accounts.login("mum", PASSWORD, "", "10.0.0.3")
    logged = actions(store)
    assert logged.count("user.login_failed") == MAX_FAILURES_PER_USER + 1
    assert logged.count("user.locked_out") == 1
    assert all("guess" not in str(e.details) for e in store.audit.entries())
    clock.now += LOCKOUT + timedelta(seconds=1)
    assert accounts.login("mum", PASSWORD, "", "10.0.0.3").via == "password"


def test_one_address_guessing_many_accounts_is_locked_out(accounts: Accounts, store: Store) -> None:
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    for i in range(MAX_FAILURES_PER_ADDRESS):
        with pytest.raises(InvalidInput):
            accounts.login(f"user-{i}", "whatever-at-all", "", "10.0.0.66")
    with pytest.raises(Forbidden):
        accounts.login("mum", PASSWORD, "", "10.0.0.66")
    assert accounts.login("mum", PASSWORD, "", "10.0.0.2").via == "password"
    assert "user.locked_out" in actions(store)


def test_the_lockout_rule() -> None:
    recent = [T0 - timedelta(minutes=m) for m in (1, 2, 3, 4, 5)]
    assert locked_until(recent, 5, T0) == T0 - timedelta(minutes=1) + LOCKOUT
    assert locked_until(recent[:4], 5, T0) is None
    assert locked_until([t - timedelta(hours=1) for t in recent], 5, T0) is None


def test_a_recovery_code_logs_in_once(accounts: Accounts, store: Store, clock: Clock) -> None:
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    _, codes = enrol(accounts, "mum", clock)
    assert len(codes) == len(set(codes)) == 10
    stored = [r["code_sha256"] for r in store.db["recovery_codes"].rows]
    assert codes[0] not in str(stored) and code_digest(codes[0]) in stored
    login = accounts.login("mum", PASSWORD, codes[0].upper().replace("-", " "), "10.0.0.2")
    assert login.via == "recovery_code"
    assert store.audit.entries()[-1].details["recovery_codes_left"] == 9
    with pytest.raises(InvalidInput):
        accounts.login("mum", PASSWORD, codes[0], "10.0.0.2")
    assert normalise_code(codes[1].upper()) == codes[1]


# ---- sessions -------------------------------------------------------------------
def test_sessions_expire_and_logout_and_password_change_revoke_them(
    accounts: Accounts, store: Store, clock: Clock
) -> None:
    accounts.add("kid", "member", PASSWORD, ("alice",), ROOT_CLI_ACTOR)
    first = accounts.login("kid", PASSWORD, "", "a").token
    assert [r["token_sha256"] for r in store.db["sessions"].rows] != [first]
    clock.now += SESSION_TTL
    assert accounts.session_user(first) is None  # expired
    second = accounts.login("kid", PASSWORD, "", "a").token
    accounts.logout(second)
    assert accounts.session_user(second) is None
    third, fourth = (accounts.login("kid", PASSWORD, "", "a").token for _ in range(2))
    assert accounts.set_password("kid", "another good password", ROOT_CLI_ACTOR) == 2
    assert accounts.session_user(third) is None and accounts.session_user(fourth) is None
    with pytest.raises(InvalidInput):
        accounts.login("kid", PASSWORD, "", "a")
    assert accounts.login("kid", "another good password", "", "a").via == "password"
    assert {"user.logout", "user.passwd"} <= set(actions(store))
    assert store.audit.verify().ok
