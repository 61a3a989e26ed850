"""Account use cases: add, remove, change a password, enrol TOTP, log in and out.

Each one audits what it did in the hash-chained log, with the account and
(for logins) the address, never a password, code, secret or token. A failed
login is recorded and audited before the error is raised, so the lockout
counts it even though the caller sees only "wrong name, password or code".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from appliance.accounts import totp
from appliance.accounts.credentials import (
    Passwords,
    code_digest,
    looks_like_recovery_code,
    new_recovery_codes,
)
from appliance.accounts.second_factor import record_failure
from appliance.core.accounts import (
    MAX_FAILURES_PER_ADDRESS,
    MAX_FAILURES_PER_USER,
    SESSION_TTL,
    User,
    check_password,
    locked_until,
    refuse_while_locked,
    user_actor,
    validate_role,
    validate_user_name,
)
from appliance.core.approvals import Clock, utc_clock
from appliance.core.errors import Conflict, InvalidInput
from appliance.store import Store
from appliance.store.sessions import LOGIN


def _bad_login() -> InvalidInput:
    # One answer for every failure: which part was wrong is for the audit log.
    return InvalidInput("wrong user name, password or code", "check them and try again")


@dataclass(frozen=True)
class Login:
    token: str
    user: User
    via: str  # "password", "totp" or "recovery_code"


class Accounts:
    def __init__(
        self, store: Store, passwords: Passwords | None = None, clock: Clock = utc_clock
    ) -> None:
        self.store = store
        self.passwords = passwords or Passwords()
        self.clock = clock

    # ---- administration (root at the CLI) -------------------------------------
    def add(self, name: str, role: str, password: str, claws: tuple[str, ...], actor: str) -> User:
        validate_user_name(name)
        validate_role(role)
        check_password(password)
        digest = self.passwords.hash(password)
        with self.store.transaction():
            user = self.store.users.add(name, role, digest, claws, self.clock())
            self.store.audit.append(actor, "user.add", name, {"role": role, "claws": list(claws)})
        return user

    def remove(self, name: str, actor: str) -> None:
        with self.store.transaction():
            user = self.store.users.require(name)
            self.store.users.remove(name)
            self.store.audit.append(
                actor, "user.rm", name, {"role": user.role, "claws": list(user.claws)}
            )

    def set_password(self, name: str, password: str, actor: str) -> int:
        """A new password; every session of the account ends. Returns how many did."""
        check_password(password)
        self.store.users.require(name)
        digest = self.passwords.hash(password)
        now = self.clock()
        with self.store.transaction():
            self.store.users.set_password_hash(name, digest, now)
            ended = self.store.sessions.revoke_user(name, now)
            self.store.audit.append(actor, "user.passwd", name, {"sessions_revoked": ended})
        return ended

    def start_totp(self, name: str, actor: str) -> str:
        """A new pending secret; returns its otpauth URI (show it once)."""
        self.store.users.require(name)
        secret = totp.new_secret()
        with self.store.transaction():
            self.store.users.set_pending_totp(name, secret)
            self.store.audit.append(actor, "user.totp_enrol", name, {})
        return totp.provisioning_uri(secret, name)

    def confirm_totp(self, name: str, code: str, actor: str) -> list[str]:
        """Activate the pending secret with a code from it; returns new
        recovery codes (replacing any older ones), to be shown once."""
        self.store.users.require(name)
        pending = self.store.users.pending_totp(name)
        if pending is None:
            raise Conflict(
                f"{name} has no TOTP enrolment waiting to be confirmed",
                f"start one with `clawden user totp {name} --uri-file PATH`",
            )
        step = totp.matching_step(pending, code, self.clock())
        if step is None:
            raise InvalidInput(
                "that code does not match the new TOTP secret",
                "type the code the authenticator shows now (check the phone's clock)",
            )
        codes = new_recovery_codes()
        with self.store.transaction():
            if not self.store.users.confirm_totp(name, step):
                raise Conflict(f"{name}'s enrolment changed meanwhile", "start it again")
            self.store.users.replace_recovery_codes(name, [code_digest(c) for c in codes])
            self.store.audit.append(
                actor, "user.totp_confirm", name, {"recovery_codes": len(codes)}
            )
        return codes

    # ---- logins (the panel) ---------------------------------------------------
    def login(self, name: str, password: str, second_factor: str, address: str) -> Login:
        """A session for ``name`` if the password, and (once TOTP is active)
        a TOTP code or an unused recovery code, are right."""
        now = self.clock()
        self._refuse_if_locked(name, address, now)
        user = self.store.users.get(name) if _valid_name(name) else None
        ok = self.passwords.verify(
            None if user is None else self.store.users.password_hash(name), password
        )
        if user is None or not ok:
            self._failed(name, address, "password", now)
        via = "password"
        if user.totp_active:
            via = self._second_factor(user, second_factor, address, now)
        token = self.store.sessions.create(user.name, now, SESSION_TTL)
        self.store.sessions.clear_failures(LOGIN, user.name)
        details: dict[str, object] = {"address": address, "via": via}
        if via == "recovery_code":
            details["recovery_codes_left"] = self.store.users.recovery_codes_left(user.name)
        self.store.audit.append(user.actor, "user.login", user.name, details)
        return Login(token, user, via)

    def logout(self, token: str) -> None:
        user = self.store.sessions.revoke(token, self.clock())
        if user is not None:
            self.store.audit.append(user_actor(user), "user.logout", user, {})

    def session_user(self, token: str) -> User | None:
        """The account behind a live session token, or None."""
        name = self.store.sessions.user_of(token, self.clock())
        return None if name is None else self.store.users.get(name)

    def _second_factor(self, user: User, code: str, address: str, now: datetime) -> str:
        if looks_like_recovery_code(code):
            if self.store.users.use_recovery_code(user.name, code_digest(code), now):
                return "recovery_code"
            self._failed(user.name, address, "recovery_code", now)
        secret = self.store.users.active_totp(user.name)
        step = None if secret is None else totp.matching_step(secret, code, now)
        if step is None:
            self._failed(user.name, address, "totp", now)
        if not self.store.users.consume_step(user.name, step):
            self._failed(user.name, address, "totp_reused", now)
        return "totp"

    def _refuse_if_locked(self, name: str, address: str, now: datetime) -> None:
        sessions = self.store.sessions
        target = _attempt_key(name)
        for until in (
            locked_until(sessions.failures(LOGIN, now, user=target), MAX_FAILURES_PER_USER, now),
            locked_until(
                sessions.failures(LOGIN, now, address=address), MAX_FAILURES_PER_ADDRESS, now
            ),
        ):
            if until is not None:
                self.store.audit.append(
                    "anonymous",
                    "user.login_failed",
                    target,
                    {"address": address, "reason": "locked"},
                )
                raise refuse_while_locked("logging in", until)

    def _failed(self, name: str, address: str, reason: str, now: datetime) -> NoReturn:
        """Record, audit, maybe lock out; always raises."""
        target = _attempt_key(name)
        record_failure(
            self.store,
            LOGIN,
            target,
            address,
            now,
            actor="anonymous",
            audit_failure=lambda: self.store.audit.append(
                "anonymous", "user.login_failed", target, {"address": address, "reason": reason}
            ),
        )
        raise _bad_login()


def _attempt_key(name: str) -> str:
    # Failures are recorded and counted under the same key: the name as
    # typed, cut short (a guesser may type anything, of any length).
    return name[:40]


def _valid_name(name: str) -> bool:
    try:
        validate_user_name(name)
    except InvalidInput:
        return False
    return True
