"""What the claw page shows, gathered into plain objects the templates
render: its power state, console tail, schedules, skills, LLM use over the
last 30 days (as bar heights for a server-drawn SVG) and messages.

Workspace files are read separately (``files_view``): they travel over the
claw's channel, so they load into the page after it, and a claw that is not
running gets a note instead of an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.core.errors import ClawdenError
from appliance.core.llm_policy import ClawPolicy, period_start
from appliance.core.messages import Message
from appliance.core.model import Claw, ClawState
from appliance.core.schedule import Job
from appliance.core.workspace_files import EDITABLE, WorkspaceFile
from appliance.llm.config import LlmConfigError
from appliance.store.operations import Operation
from appliance.store.skills import InstalledSkill
from web.panel import Panel
from web.ports import ChannelInfo
from web.views import Budget, budget

CONSOLE_LINES = 100
MESSAGE_LIMIT = 50
CHART_DAYS = 30
# The SVG chart's drawing box: one bar per day.
BAR_WIDTH = 10
CHART_HEIGHT = 60


@dataclass(frozen=True)
class PowerStatus:
    claw: Claw
    channel: ChannelInfo | None
    operation: Operation | None  # a lifecycle operation running now
    pending: str | None  # an action just asked for, not yet visible in the store

    @property
    def settling(self) -> bool:
        """A change is under way: the status partial polls until it is not."""
        if self.pending or self.operation is not None:
            return True
        if self.claw.state in (ClawState.CREATING, ClawState.DESTROYING):
            return True
        ready = self.channel is not None and self.channel.state == "ready"
        return self.claw.state is ClawState.RUNNING and not ready


@dataclass(frozen=True)
class Bar:
    day: str
    tokens: int
    cost_usd: float
    x: int
    y: int
    height: int


@dataclass(frozen=True)
class Usage:
    today: Budget
    month: Budget
    bars: tuple[Bar, ...]
    peak_tokens: int
    width: int
    height: int
    config_error: str | None


@dataclass(frozen=True)
class ClawPage:
    status: PowerStatus
    console: list[str] | None  # None: no log yet (or not shown to a member)
    heartbeat: Job | None
    jobs: tuple[Job, ...]
    skills: tuple[InstalledSkill, ...]
    usage: Usage
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class FilesView:
    files: tuple[WorkspaceFile, ...]
    unavailable: str | None  # why the files cannot be read now
    editable: tuple[str, ...] = EDITABLE


def power_status(panel: Panel, claw: str, pending: str | None = None) -> PowerStatus:
    record = panel.store.claws.require(claw)
    return PowerStatus(
        record,
        panel.claws.channel(claw),
        panel.store.ops.running_for(claw),
        pending,
    )


def usage_view(panel: Panel, claw: str, now: datetime) -> Usage:
    try:
        policy, config_error = panel.llm_config().policy_for(claw), None
    except LlmConfigError as exc:
        policy, config_error = ClawPolicy(), str(exc)
    today, month = panel.store.usage.period_totals(claw, now)
    first = period_start(now, "day") - timedelta(days=CHART_DAYS - 1)
    per_day = panel.store.usage.per_day(claw, first)
    days = [(first + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(CHART_DAYS)]
    peak = max((t.tokens for t in per_day.values()), default=0)
    bars = []
    for i, day in enumerate(days):
        used = per_day.get(day)
        tokens = used.tokens if used else 0
        height = 0 if not peak else max(1 if tokens else 0, round(CHART_HEIGHT * tokens / peak))
        bars.append(
            Bar(
                day,
                tokens,
                round(used.cost_usd, 4) if used else 0.0,
                x=i * BAR_WIDTH,
                y=CHART_HEIGHT - height,
                height=height,
            )
        )
    return Usage(
        today=budget(today, policy.daily_tokens, policy.daily_cost_usd),
        month=budget(month, policy.monthly_tokens, policy.monthly_cost_usd),
        bars=tuple(bars),
        peak_tokens=peak,
        width=CHART_DAYS * BAR_WIDTH,
        height=CHART_HEIGHT,
        config_error=config_error,
    )


def claw_page(panel: Panel, claw: str, is_admin: bool) -> ClawPage:
    store = panel.store
    status = power_status(panel, claw)
    heartbeat = store.schedules.heartbeat(claw)
    beat_id = None if heartbeat is None else heartbeat.id
    return ClawPage(
        status=status,
        console=panel.claws.console(claw, CONSOLE_LINES) if is_admin else None,
        heartbeat=heartbeat,
        jobs=tuple(j for j in store.schedules.list(claw) if j.id != beat_id),
        skills=tuple(store.skills.list(claw)),
        usage=usage_view(panel, claw, panel.clock()),
        messages=tuple(store.messages.list(claw, limit=MESSAGE_LIMIT)),
    )


def files_view(panel: Panel, claw: str) -> FilesView:
    record = panel.store.claws.require(claw)
    if record.state is not ClawState.RUNNING:
        return FilesView((), f"{claw} is {record.state.value}: start the claw to see its files")
    try:
        return FilesView(tuple(panel.claws.list_files(claw)), None)
    except ClawdenError as exc:
        return FilesView((), f"{exc.what} — start the claw to see its files, or retry in a moment")
