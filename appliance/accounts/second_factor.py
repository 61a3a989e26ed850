"""Failed attempts and fresh TOTP codes, shared by logins, approval
decisions and policy changes.

``record_failure`` is the one way a failure is kept: a row the lockout
counts, an audit entry naming why, and — once, when a limit is reached — a
``user.locked_out`` entry. ``require_fresh_code`` is what every action that
needs "an admin and a fresh TOTP code" does: refuse while locked, match the
code to a time step, consume that step in one atomic UPDATE (a code works
once, even when two requests race with it from two connections), and count
every failure. A recovery code is never a TOTP code (wrong length and
alphabet), so it passes none of these.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from appliance.accounts import totp
from appliance.core.accounts import (
    MAX_FAILURES_PER_ADDRESS,
    MAX_FAILURES_PER_USER,
    User,
    locked_until,
    refuse_while_locked,
)
from appliance.core.errors import InvalidInput
from appliance.store import Store
from appliance.store.sessions import TOTP


def record_failure(
    store: Store,
    kind: str,
    key: str,
    address: str,
    now: datetime,
    *,
    actor: str,
    audit_failure: Callable[[], object],
) -> None:
    """Keep one failed attempt of ``kind`` by ``key`` (from ``address``, or
    "" when the address does not count); ``audit_failure`` writes the
    caller's own audit entry for it (its action named where it happens)."""
    store.sessions.record_failure(kind, key, address, now)
    audit_failure()
    by_user = len(store.sessions.failures(kind, now, user=key))
    by_address = len(store.sessions.failures(kind, now, address=address)) if address else 0
    # Audited once, when the limit is reached, not on every refused try.
    if by_user == MAX_FAILURES_PER_USER or by_address == MAX_FAILURES_PER_ADDRESS:
        locked: dict[str, Any] = {"failures": by_user, "kind": kind}
        if address:
            locked["address"] = address
        store.audit.append(actor, "user.locked_out", key, locked)


def refuse_if_code_locked(store: Store, user: User, what: str, now: datetime) -> None:
    failures = store.sessions.failures(TOTP, now, user=user.name)
    until = locked_until(failures, MAX_FAILURES_PER_USER, now)
    if until is not None:
        raise refuse_while_locked(what, until)


def require_fresh_code(
    store: Store,
    user: User,
    code: str,
    now: datetime,
    audit_failure: Callable[[str], object],
) -> None:
    """Spend ``user``'s TOTP ``code`` or raise; a wrong or reused code is
    recorded, audited by ``audit_failure(why)`` (``wrong`` or ``reused``) and
    counts towards the lockout. The caller has checked the lockout before anything
    it refuses for free (``refuse_if_code_locked``)."""
    secret = store.users.active_totp(user.name)
    if secret is None:
        raise InvalidInput(
            f"{user.name} has no TOTP set up, so cannot do this",
            f"enrol first: `clawden user totp {user.name} --uri-file PATH`, then --confirm CODE",
        )
    step = totp.matching_step(secret, code, now)
    if step is None or not store.users.consume_step(user.name, step):
        why = "wrong" if step is None else "reused"
        record_failure(
            store,
            TOTP,
            user.name,
            "",
            now,
            actor=user.actor,
            audit_failure=lambda: audit_failure(why),
        )
        raise InvalidInput(
            "that code is wrong or was already used",
            "wait for the next code in your authenticator and try again",
        )
    store.sessions.clear_failures(TOTP, user.name)
