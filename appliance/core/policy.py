"""Per-claw approval policy and time-boxed grants: what happens to a claw's
approval request before any human sees it.

A rule is set per claw and per *capability* (the request's action):

* ``ask`` — the default for every capability of every claw, new or old:
  the request waits for the admin (a claw begins read-only and asks for
  anything that leaves its VM);
* ``deny`` — refused at once; the claw is told "denied by policy";
* ``allow`` — approved at once, decided by ``policy``.

The well-known capabilities are listed so the panel can offer them; any
other action a claw names in a request is a capability too (free text,
checked like an action), so a rule can be set for it once it is seen.

A *grant* is narrower and temporary: approving one request "for 15
minutes" lets the same claw's requests for the same action through until
then (decided by ``grant:<id>``). Revoking it ends it at once. Both only
widen what ``ask`` would do; ``deny`` always wins over a grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from appliance.core.approvals import check_action
from appliance.core.errors import InvalidInput

ALLOW, DENY, ASK = "allow", "deny", "ask"
RULES = (ALLOW, DENY, ASK)
DEFAULT_RULE = ASK
CAPABILITIES = ("message.send", "skill.install", "egress.new_domain", "schedule.create")
GRANT_MINUTES = (0, 15, 60)
POLICY_ACTOR = "policy"


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise InvalidInput(f"unknown rule {rule[:20]!r}", "use allow, deny or ask")
    return rule


def check_capability(capability: str) -> str:
    """A capability is an action name: one short printable line."""
    try:
        return check_action(capability)
    except InvalidInput as exc:
        raise InvalidInput(exc.what.replace("action", "capability", 1), exc.fix) from None


def check_grant_minutes(minutes: int) -> int:
    if minutes not in GRANT_MINUTES:
        raise InvalidInput(
            f"a grant of {minutes} minutes is not offered",
            "choose 0 (this request only), 15 or 60 minutes",
        )
    return minutes


@dataclass(frozen=True)
class Grant:
    id: str
    claw: str
    action: str
    approval_id: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at

    @property
    def actor(self) -> str:
        """Who a request this grant approves is decided by."""
        return f"grant:{self.id}"


@dataclass(frozen=True)
class Outcome:
    """What to do with a new request: ``ask`` leaves it pending."""

    rule: str
    decided_by: str | None
    reason: str


def rule_for(rules: Mapping[str, str], action: str) -> str:
    return rules.get(action, DEFAULT_RULE)


def outcome(rules: Mapping[str, str], action: str, grant: Grant | None, now: datetime) -> Outcome:
    """The rule for ``action`` in a claw's ``rules``, then its live grant."""
    rule = rule_for(rules, action)
    if rule == DENY:
        return Outcome(DENY, POLICY_ACTOR, "denied by policy: your admin does not allow this")
    if rule == ALLOW:
        return Outcome(ALLOW, POLICY_ACTOR, "allowed by policy")
    if grant is not None and grant.active(now):
        until = grant.expires_at.strftime("%H:%M")
        return Outcome(ALLOW, grant.actor, f"allowed by your admin's grant until {until} UTC")
    return Outcome(ASK, None, "")


def policy_table(rules: Mapping[str, str], seen: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Every capability worth showing with its rule: the well-known ones,
    then any other the claw has a rule for or has asked for, sorted."""
    extra = sorted((set(rules) | set(seen)) - set(CAPABILITIES))
    return [(cap, rule_for(rules, cap)) for cap in (*CAPABILITIES, *extra)]
