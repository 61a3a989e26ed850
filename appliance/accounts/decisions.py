"""Approvals as an account sees and decides them (the panel's path).

Seeing: an admin sees every claw's requests; a member sees their own
claws' only, and another claw's request is "not found", exactly like one
that does not exist.

Deciding needs an admin and a fresh TOTP code, bound to the request that was
shown: the caller passes the sha256 it displayed, and

1. a request whose hash differs, or that is no longer pending, is refused
   before the code is looked at (so the code is not spent on it);
2. the code's time step is consumed in one atomic UPDATE: a code works once,
   even when two approvals race with it from two connections;
3. failed codes count towards a lockout (5 in 15 minutes), audited;
4. the hash is checked once more inside the transaction that writes the
   decision (``ApprovalRepository.decide(expected_sha256=…)``).

A recovery code is never a TOTP code (wrong length and alphabet), so it
cannot approve anything. Root at the CLI decides without TOTP
(``appliance/cli/approvals.py``, actor ``root@cli``).
"""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from appliance.accounts import totp
from appliance.core.accounts import (
    MAX_FAILURES_PER_USER,
    User,
    check_may_decide,
    locked_until,
    may_see_claw,
    refuse_while_locked,
)
from appliance.core.approvals import Approval, Clock, not_found, utc_clock
from appliance.core.errors import Conflict, InvalidInput
from appliance.store import Store
from appliance.store.sessions import TOTP


def visible_approvals(store: Store, user: User, pending_only: bool = True) -> list[Approval]:
    """Oldest first, the claws ``user`` may see only."""
    if user.is_admin:
        return store.approvals.list(None, pending_only)
    mine = [a for claw in user.claws for a in store.approvals.list(claw, pending_only)]
    return sorted(mine, key=lambda a: a.created_at)


def show_approval(store: Store, user: User, approval_id: str) -> Approval:
    approval = store.approvals.get(approval_id)
    if approval is None or not may_see_claw(user, approval.claw):
        raise not_found(approval_id, None)
    return approval


def decide(
    store: Store,
    user_name: str,
    approval_id: str,
    expected_sha256: str,
    code: str,
    approved: bool,
    reason: str | None = None,
    clock: Clock = utc_clock,
) -> Approval:
    """Approve or deny ``approval_id`` as ``user_name`` with a TOTP code."""
    now = clock()
    user = store.users.require(user_name)
    shown = show_approval(store, user, approval_id)
    check_may_decide(user)
    failures = store.sessions.failures(TOTP, now, user=user.name)
    until = locked_until(failures, MAX_FAILURES_PER_USER, now)
    if until is not None:
        raise refuse_while_locked("deciding with a TOTP code", until)
    details = {"claw": shown.claw, "action": shown.action, "sha256": shown.sha256}
    if shown.sha256 != expected_sha256:
        store.audit.append(
            user.actor, "approval.hash_mismatch", shown.id, {**details, "shown": expected_sha256}
        )
        raise Conflict(
            f"approval {shown.id} is not the request that was shown",
            "reload the request, read it again and decide with a new code",
        )
    if not shown.pending:
        # Refused before the code is looked at, so the code is not spent on it.
        raise Conflict(
            f"approval {shown.id} is already {shown.status}", "nothing to decide; reload the list"
        )
    secret = store.users.active_totp(user.name)
    if secret is None:
        raise InvalidInput(
            f"{user.name} has no TOTP set up, so cannot decide approvals",
            f"enrol first: `clawden user totp {user.name} --uri-file PATH`, then --confirm CODE",
        )
    step = totp.matching_step(secret, code, now)
    if step is None or not store.users.consume_step(user.name, step):
        _failed(store, user, shown, "wrong" if step is None else "reused", now)
    with store.transaction():
        decided = store.approvals.decide(
            shown.id, approved, by=user.actor, reason=reason, expected_sha256=expected_sha256
        )
        store.audit.append(
            user.actor,
            "approval.approve" if approved else "approval.deny",
            decided.id,
            {**details, "reason": decided.reason, "second_factor": "totp"},
        )
    store.sessions.clear_failures(TOTP, user.name)
    return decided


def _failed(store: Store, user: User, shown: Approval, why: str, now: datetime) -> NoReturn:
    store.sessions.record_failure(TOTP, user.name, "", now)
    store.audit.append(
        user.actor, "approval.totp_failed", shown.id, {"claw": shown.claw, "reason": why}
    )
    failures = store.sessions.failures(TOTP, now, user=user.name)
    if len(failures) == MAX_FAILURES_PER_USER:
        store.audit.append(
            user.actor, "user.locked_out", user.name, {"failures": len(failures), "kind": TOTP}
        )
    raise InvalidInput(
        "that code is wrong or was already used",
        "wait for the next code in your authenticator and try again",
    )
