"""What the pages show, gathered from the store and the controller into
plain objects the templates render (no query in a template)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.core.accounts import User
from appliance.core.llm_policy import ClawPolicy, Totals
from appliance.core.model import Claw
from appliance.core.schedule import Job
from appliance.llm.config import LlmConfigError
from web.panel import Panel
from web.ports import ChannelInfo


@dataclass(frozen=True)
class Budget:
    used: float
    limit: float | None
    unit: str  # "tokens" or "USD"

    @property
    def percent(self) -> int | None:
        if not self.limit:
            return None
        return min(100, int(100 * self.used / self.limit))


@dataclass(frozen=True)
class ClawCard:
    claw: Claw
    channel: ChannelInfo | None
    up_since: datetime | None
    last_activity: datetime | None
    last_heartbeat: datetime | None
    heartbeat_status: str | None
    today: Budget
    month: Budget
    pending_approvals: int
    alerts: tuple[str, ...]


@dataclass(frozen=True)
class HostStats:
    cpus: int
    load_1m: float
    memory_used_mib: int
    memory_total_mib: int
    disk_used_gib: float
    disk_total_gib: float


@dataclass(frozen=True)
class Dashboard:
    cards: tuple[ClawCard, ...]
    host: HostStats
    config_error: str | None
    # First run: no model provider yet (the admin gets a banner to Settings).
    needs_provider: bool = False
    # The controller's recent warnings, admin only: hostile text.
    warnings: tuple[str, ...] = ()


def visible_claws(panel: Panel, user: User) -> list[Claw]:
    claws = panel.store.claws.list()
    return claws if user.is_admin else [c for c in claws if c.name in user.claws]


def budget(used: Totals, tokens_limit: int | None, cost_limit: float | None) -> Budget:
    if cost_limit is not None:
        return Budget(round(used.cost_usd, 4), cost_limit, "USD")
    return Budget(used.tokens, tokens_limit, "tokens")


@dataclass(frozen=True)
class _Facts:
    """What the cards need from the store, each fetched for every claw in
    one query: the dashboard costs the same few queries for 1 claw or 50."""

    usage: dict[str, tuple[Totals, Totals]]
    last_activity: dict[str, str]
    heartbeats: dict[str, Job]
    pending: dict[str, int]


def _facts(panel: Panel, now: datetime) -> _Facts:
    store = panel.store
    return _Facts(
        usage=store.usage.period_totals_by_claw(now),
        last_activity=store.messages.last_activity_by_claw(),
        heartbeats=store.schedules.heartbeats(),
        pending=store.approvals.pending_by_claw(),
    )


def claw_card(panel: Panel, claw: Claw, policy: ClawPolicy, facts: _Facts) -> ClawCard:
    channel = panel.claws.channel(claw.name)
    today, month = facts.usage.get(claw.name, (Totals(), Totals()))
    last = facts.last_activity.get(claw.name)
    heartbeat = facts.heartbeats.get(claw.name)
    alerts = []
    if channel is not None and channel.last_error and channel.state != "ready":
        alerts.append(f"channel: {channel.last_error}")
    if heartbeat is not None and heartbeat.last_status not in (None, "ok", "skipped"):
        alerts.append(f"heartbeat: {heartbeat.last_status}")
    ready = channel is not None and channel.state == "ready"
    return ClawCard(
        claw=claw,
        channel=channel,
        up_since=datetime.fromtimestamp(channel.since, UTC) if ready and channel else None,
        last_activity=datetime.fromisoformat(last) if last else None,
        last_heartbeat=None if heartbeat is None else heartbeat.last_run_at,
        heartbeat_status=None if heartbeat is None else heartbeat.last_status,
        today=budget(today, policy.daily_tokens, policy.daily_cost_usd),
        month=budget(month, policy.monthly_tokens, policy.monthly_cost_usd),
        pending_approvals=facts.pending.get(claw.name, 0),
        alerts=tuple(alerts),
    )


def host_stats(panel: Panel) -> HostStats:
    meminfo = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            meminfo[key] = int(rest.split()[0])
    disk = shutil.disk_usage(panel.home)
    total = meminfo.get("MemTotal", 0)
    return HostStats(
        cpus=os.cpu_count() or 1,
        load_1m=os.getloadavg()[0],
        memory_used_mib=(total - meminfo.get("MemAvailable", 0)) // 1024,
        memory_total_mib=total // 1024,
        disk_used_gib=round((disk.total - disk.free) / 2**30, 1),
        disk_total_gib=round(disk.total / 2**30, 1),
    )


def dashboard_view(panel: Panel, user: User) -> Dashboard:
    now = panel.clock()
    try:
        config = panel.llm_config()
        config_error = None
    except LlmConfigError as exc:
        config, config_error = None, str(exc)
    claws = visible_claws(panel, user)
    facts = _facts(panel, now) if claws else _Facts({}, {}, {}, {})
    cards = tuple(
        claw_card(panel, c, config.policy_for(c.name) if config else ClawPolicy(), facts)
        for c in claws
    )
    admin = user.is_admin
    return Dashboard(
        cards,
        host_stats(panel),
        config_error,
        needs_provider=config is not None and config.upstream is None,
        warnings=tuple(panel.recent_warnings()) if admin else (),
    )
