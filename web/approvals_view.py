"""What the approvals inbox and the policy pages show, gathered from the
store into plain objects the templates render (no query in a template).

Repeats are grouped: identical pending requests (same claw, same sha256)
show once, with how many there are, and deciding decides the oldest; the
others stay for the next decision (each has its own waiting claw call).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from appliance.core.approvals import Approval
from appliance.core.policy import GRANT_MINUTES, RULES, Grant, policy_table
from web.panel import Panel

RECENT_SHOWN = 20


@dataclass(frozen=True)
class PendingGroup:
    first: Approval  # the oldest: the one a decision decides
    count: int
    newest_at: datetime


@dataclass(frozen=True)
class Throttled:
    claw: str
    refused: int


@dataclass(frozen=True)
class Inbox:
    groups: tuple[PendingGroup, ...]
    recent: tuple[Approval, ...]
    grants: tuple[Grant, ...]
    throttled: tuple[Throttled, ...]
    now: datetime
    grant_minutes: tuple[int, ...] = GRANT_MINUTES

    @property
    def pending(self) -> int:
        return sum(g.count for g in self.groups)


def group_pending(pending: list[Approval]) -> tuple[PendingGroup, ...]:
    """Oldest first; one group per (claw, sha256), in the order its first
    request arrived."""
    groups: dict[tuple[str, str], list[Approval]] = {}
    for approval in pending:
        groups.setdefault((approval.claw, approval.sha256), []).append(approval)
    return tuple(PendingGroup(same[0], len(same), same[-1].created_at) for same in groups.values())


def inbox_view(panel: Panel) -> Inbox:
    """The inbox as the admin sees it now. Every pending request it shows is
    marked seen, so one that later expires is not "expired unseen"."""
    store = panel.store
    now = panel.clock()
    pending = store.approvals.list(None, pending_only=True)
    store.approvals.mark_seen([a.id for a in pending], now)
    refusals = panel.claws.approval_refusals()
    return Inbox(
        groups=group_pending(pending),
        recent=tuple(store.approvals.recent(RECENT_SHOWN)),
        grants=tuple(store.grants.active(now)),
        throttled=tuple(Throttled(c, n) for c, n in sorted(refusals.items()) if n),
        now=now,
    )


def badge_text(panel: Panel) -> str:
    """The pending count for the nav badge, or "" when nothing waits."""
    pending = len(panel.store.approvals.list(None, pending_only=True))
    return str(pending) if pending else ""


@dataclass(frozen=True)
class PolicyView:
    claw: str
    rows: tuple[tuple[str, str], ...]  # (capability, rule)
    rules: tuple[str, ...] = RULES


def policy_view(panel: Panel, claw: str) -> PolicyView:
    """The well-known capabilities, any with a rule, and any action the
    claw has asked for, each with its rule (``ask`` when none is set)."""
    store = panel.store
    asked = tuple({a.action for a in store.approvals.list(claw, pending_only=False)})
    return PolicyView(claw, tuple(policy_table(store.policy.rules(claw), asked)))
