"""Changing a claw's approval policy (rules in ``appliance/core/policy.py``).

Widening or narrowing what a claw may do without asking is as weighty as a
decision, so the panel's path needs an admin and a fresh TOTP code, consumed
exactly as ``decide()`` consumes one (``second_factor.require_fresh_code``).
Root at the host's CLI needs none (actor ``root@cli``). Every change is
audited as ``policy.set`` with the old and the new rule, in the transaction
that writes it.
"""

from __future__ import annotations

from datetime import datetime

from appliance.accounts.second_factor import refuse_if_code_locked, require_fresh_code
from appliance.core.accounts import check_may_decide, unknown_claw_for
from appliance.core.approvals import Clock, utc_clock
from appliance.core.policy import check_capability, check_rule
from appliance.store import Store


def set_rule(store: Store, claw: str, capability: str, rule: str, actor: str, now: datetime) -> str:
    """Write and audit the rule; returns the old one. The caller has checked
    who may (``set_policy`` for accounts, the CLI for root)."""
    check_capability(capability)
    check_rule(rule)
    store.claws.require(claw)
    with store.transaction():
        old = store.policy.set(claw, capability, rule, actor, now)
        store.audit.append(
            actor, "policy.set", claw, {"capability": capability, "old": old, "new": rule}
        )
    return old


def set_policy(
    store: Store,
    user_name: str,
    claw: str,
    capability: str,
    rule: str,
    code: str,
    clock: Clock = utc_clock,
) -> str:
    """As an admin account with a TOTP code; returns the old rule."""
    now = clock()
    user = store.users.require(user_name)
    if store.claws.get(claw) is None:
        raise unknown_claw_for(user, claw)
    check_may_decide(user)
    # Bad input is refused before the code is looked at (no code spent on it).
    check_capability(capability)
    check_rule(rule)
    refuse_if_code_locked(store, user, "changing a policy with a TOTP code", now)
    require_fresh_code(
        store,
        user,
        code,
        now,
        lambda why: store.audit.append(
            user.actor, "policy.totp_failed", claw, {"capability": capability, "reason": why}
        ),
    )
    return set_rule(store, claw, capability, rule, user.actor, now)
