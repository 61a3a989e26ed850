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

from appliance.accounts.second_factor import refuse_if_code_locked, require_fresh_code
from appliance.core.accounts import User, check_may_decide, may_see_claw
from appliance.core.approvals import Approval, Clock, not_found, utc_clock
from appliance.core.errors import Conflict
from appliance.core.policy import Grant, check_grant_minutes
from appliance.store import Store


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
    grant_minutes: int = 0,
) -> Approval:
    """Approve or deny ``approval_id`` as ``user_name`` with a TOTP code
    (and with it every pending request identical to it: same claw, same
    hash, shown as one group in the inbox); approved with ``grant_minutes``
    (15 or 60), the same claw's requests for the same action are approved
    for that long (a ``Grant``)."""
    check_grant_minutes(grant_minutes)
    now = clock()
    user = store.users.require(user_name)
    shown = show_approval(store, user, approval_id)
    check_may_decide(user)
    refuse_if_code_locked(store, user, "deciding with a TOTP code", now)
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
    require_fresh_code(
        store,
        user,
        code,
        now,
        lambda why: store.audit.append(
            user.actor, "approval.totp_failed", shown.id, {"claw": shown.claw, "reason": why}
        ),
    )
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
        # The inbox shows identical pending requests (same claw, same hash:
        # the very same text) as one, so the decision covers all of them.
        for twin in store.approvals.list(shown.claw, pending_only=True):
            if twin.sha256 != shown.sha256:
                continue
            same = store.approvals.decide(
                twin.id, approved, by=user.actor, reason=reason, expected_sha256=expected_sha256
            )
            store.audit.append(
                user.actor,
                "approval.approve" if approved else "approval.deny",
                same.id,
                {**details, "reason": same.reason, "second_factor": "totp", "same_as": shown.id},
            )
        if approved and grant_minutes:
            grant = store.grants.add(
                shown.claw, shown.action, shown.id, user.actor, now, grant_minutes
            )
            store.audit.append(
                user.actor,
                "approval.grant",
                grant.id,
                {
                    "claw": grant.claw,
                    "action": grant.action,
                    "approval": shown.id,
                    "expires_at": grant.expires_at.isoformat(),
                },
            )
    return decided


def revoke_grant(store: Store, user: User, grant_id: str, clock: Clock = utc_clock) -> Grant:
    """End a grant now. Narrowing what a claw may do needs no TOTP code:
    only an admin's session (``check_may_decide``)."""
    check_may_decide(user)
    with store.transaction():
        grant = store.grants.revoke(grant_id, user.actor, clock())
        store.audit.append(
            user.actor,
            "approval.grant_revoke",
            grant.id,
            {"claw": grant.claw, "action": grant.action},
        )
    return grant
