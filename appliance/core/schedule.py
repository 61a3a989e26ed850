"""Scheduled jobs as values: kinds, specs, next runs and the missed-run policy (pure).

Every time here is an aware datetime; the store keeps UTC. A job's wall-clock
meaning (cron fields, active hours, an ``at`` without offset) is read in its
own time zone, so a heartbeat's 08:00-22:00 stays 08:00-22:00 across DST.

**Missed runs** (the host or controller was down past ``next_run_at``):

* a job runs **at most once** on catch-up, never once per missed occurrence;
* cron, every and at: it runs if its *latest* missed occurrence is at most
  ``GRACE`` (1 h) old, otherwise that run is skipped (status ``skipped: …``)
  and the job moves to its next future time; a skipped ``at`` job is done;
* heartbeat: it beats once as soon as the host is back (within active hours,
  else at the next window start), then every interval from that beat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from appliance.core.cron import cron_next, parse_cron, resolve_local
from appliance.core.errors import InvalidInput

GRACE = timedelta(hours=1)
# A run this late is still "scheduled", not "missed": the runner ticks every
# few seconds and a model call for another job may hold it up for a while.
TICK_SLACK = timedelta(minutes=2)
MIN_INTERVAL_S = 60
DEFAULT_HEARTBEAT_S = 30 * 60
MAX_TEXT_CHARS = 4000
# Walking a very frequent cron across a long outage: past this many steps the
# latest occurrence is certainly within the grace window.
_MAX_CATCH_UP_STEPS = 5000


class JobKind(StrEnum):
    HEARTBEAT = "heartbeat"
    CRON = "cron"
    EVERY = "every"
    AT = "at"


class CreatedBy(StrEnum):
    OPERATOR = "operator"
    CLAW = "claw"


@dataclass(frozen=True)
class HeartbeatSpec:
    interval_s: int = DEFAULT_HEARTBEAT_S
    active: tuple[dtime, dtime] | None = None  # [start, end) local; may wrap midnight
    model: str | None = None

    def format(self) -> str:
        parts = [f"every={format_duration(self.interval_s)}"]
        if self.active:
            parts.append(f"active={self.active[0]:%H:%M}-{self.active[1]:%H:%M}")
        if self.model:
            parts.append(f"model={self.model}")
        return " ".join(parts)


@dataclass(frozen=True)
class Job:
    id: int
    claw: str
    kind: JobKind
    spec: str
    tz: str
    text: str
    created_by: CreatedBy
    enabled: bool
    created_at: datetime
    next_run_at: datetime | None  # None: done (an ``at`` that ran) or nothing left
    last_run_at: datetime | None = None
    last_status: str | None = None


@dataclass(frozen=True)
class Plan:
    """What the runner does with a due job at ``now``."""

    run: bool
    reason: str  # "scheduled" or "missed" when run; why not otherwise
    next_run_at: datetime | None


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")


def parse_zone(name: str) -> ZoneInfo:
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {name!r}", "use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def parse_duration(text: str) -> int:
    """'90s', '15m', '2h', '1d', '1h30m' -> seconds (at least a minute)."""
    compact = text.strip().lower()
    if not compact or _DURATION.sub("", compact):
        raise InvalidInput(
            f"invalid interval {text!r}", "write it like '90s', '15m', '2h' or '1h30m'"
        )
    seconds = sum(int(n) * _UNIT_S[u] for n, u in _DURATION.findall(compact))
    if seconds < MIN_INTERVAL_S:
        raise InvalidInput(f"interval {text!r} is too short", "use at least 1m")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_heartbeat(spec: str) -> HeartbeatSpec:
    """``[every=]30m [active=08:00-22:00] [model=NAME]``; empty means the defaults."""
    interval, active, model = DEFAULT_HEARTBEAT_S, None, None
    for token in spec.split():
        key, eq, value = token.partition("=")
        if not eq:
            key, value = "every", token
        if key == "every":
            interval = parse_duration(value)
        elif key == "active":
            active = _parse_active(value)
        elif key == "model" and _MODEL.match(value):
            model = value
        else:
            raise InvalidInput(
                f"invalid heartbeat setting {token!r}",
                "use 'every=30m', 'active=08:00-22:00' and 'model=NAME', separated by spaces",
            )
    return HeartbeatSpec(interval, active, model)


def _parse_active(value: str) -> tuple[dtime, dtime]:
    start, _, end = value.partition("-")
    a, b = _HHMM.match(start), _HHMM.match(end)
    if not a or not b or start == end:
        raise InvalidInput(
            f"invalid active hours {value!r}",
            "write them as HH:MM-HH:MM with different times, e.g. 08:00-22:00",
        )
    return dtime(int(a[1]), int(a[2])), dtime(int(b[1]), int(b[2]))


def parse_at(spec: str, tz: ZoneInfo) -> datetime:
    """An ISO date-time; without an offset it is wall-clock time in ``tz``."""
    try:
        when = datetime.fromisoformat(spec.strip())
    except ValueError:
        raise InvalidInput(
            f"invalid date-time {spec!r}", "use ISO 8601, e.g. 2024-06-01T09:30"
        ) from None
    if when.tzinfo is None:
        return resolve_local(when, tz)
    return when.astimezone(UTC)


def canonical_spec(kind: JobKind, spec: str, tz: ZoneInfo) -> str:
    """Validate ``spec`` for ``kind`` and return the form that is stored."""
    if kind is JobKind.CRON:
        return parse_cron(spec).source
    if kind is JobKind.EVERY:
        return format_duration(parse_duration(spec))
    if kind is JobKind.AT:
        return parse_at(spec, tz).astimezone(tz).isoformat()
    return parse_heartbeat(spec).format()


def validate_text(text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(
            f"the job text is {len(text)} characters, the limit is {MAX_TEXT_CHARS}",
            "put the details in a file in the claw's workspace and refer to it",
        )
    return text


def in_active_hours(hb: HeartbeatSpec, when: datetime, tz: ZoneInfo) -> bool:
    if hb.active is None:
        return True
    start, end = hb.active
    local = when.astimezone(tz).time()
    return start <= local < end if start < end else (local >= start or local < end)


def next_window_start(hb: HeartbeatSpec, when: datetime, tz: ZoneInfo) -> datetime:
    """The next start of the active window after ``when`` (which is outside it)."""
    assert hb.active is not None
    local = when.astimezone(tz).replace(tzinfo=None)
    day = local.date()
    if local.time() >= hb.active[0]:
        day += timedelta(days=1)
    return resolve_local(datetime.combine(day, hb.active[0]), tz)


def _heartbeat_next(hb: HeartbeatSpec, after: datetime, tz: ZoneInfo) -> datetime:
    candidate = after + timedelta(seconds=hb.interval_s)
    if in_active_hours(hb, candidate, tz):
        return candidate.astimezone(UTC)
    return next_window_start(hb, candidate, tz)


def next_run(job: Job, after: datetime) -> datetime | None:
    """The job's next run strictly after ``after``; None when there is none."""
    tz = parse_zone(job.tz)
    if job.kind is JobKind.CRON:
        return cron_next(parse_cron(job.spec), after, tz)
    if job.kind is JobKind.EVERY:
        step = timedelta(seconds=parse_duration(job.spec))
        # Anchored to creation, so the times do not drift with late ticks.
        count = max(0, (after - job.created_at) // step + 1)
        return (job.created_at + count * step).astimezone(UTC)
    if job.kind is JobKind.AT:
        when = parse_at(job.spec, tz)
        return when if when > after else None
    return _heartbeat_next(parse_heartbeat(job.spec), after, tz)


def first_run(job: Job) -> datetime | None:
    """The first run of a job just created (at ``job.created_at``)."""
    return next_run(job, job.created_at)


def plan(job: Job, now: datetime, grace: timedelta = GRACE) -> Plan:
    """Apply the missed-run policy to a job whose ``next_run_at`` <= ``now``."""
    due = job.next_run_at
    if due is None:
        return Plan(False, "done", None)
    late = now - due > TICK_SLACK
    if job.kind is JobKind.HEARTBEAT:
        tz = parse_zone(job.tz)
        hb = parse_heartbeat(job.spec)
        if not in_active_hours(hb, now, tz):
            return Plan(False, "skipped: outside active hours", next_window_start(hb, now, tz))
        return Plan(True, "missed" if late else "scheduled", _heartbeat_next(hb, now, tz))
    latest = _latest_occurrence(job, due, now)
    upcoming = next_run(job, now)
    if now - latest <= grace:
        return Plan(True, "missed" if late else "scheduled", upcoming)
    when = latest.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Plan(False, f"skipped: missed the run of {when} by more than {grace}", upcoming)


def _latest_occurrence(job: Job, due: datetime, now: datetime) -> datetime:
    latest = due
    for _ in range(_MAX_CATCH_UP_STEPS):
        following = next_run(job, latest)
        if following is None or following > now:
            return latest
        latest = following
    return now


def check_can_create(kind: JobKind, created_by: CreatedBy) -> None:
    if created_by is CreatedBy.CLAW and kind is JobKind.HEARTBEAT:
        raise InvalidInput(
            "a claw cannot create or change its heartbeat", "ask the operator to change it"
        )


def check_can_delete(job: Job, requester: str | None) -> None:
    """``requester`` None is the operator (anything goes); a claw name may
    delete only jobs that claw created for itself, and never the heartbeat."""
    if requester is None:
        return
    if (
        job.claw != requester
        or job.kind is JobKind.HEARTBEAT
        or job.created_by is not CreatedBy.CLAW
    ):
        raise InvalidInput(
            f"claw {requester!r} may not remove job {job.id}",
            "a claw can remove only jobs it created itself, and never its heartbeat; "
            "ask the operator",
        )
