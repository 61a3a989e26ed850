"""Scheduled jobs as the operator and the claws change them: add, remove,
list, and the default heartbeat every claw gets.

The rules (cron expressions, next runs, the missed-run policy, who may
change what) are pure, in ``appliance.core.cron`` and
``appliance.core.schedule``; the rows live in ``appliance.store.schedules``;
``appliance.schedule.runner`` fires due jobs. These use cases take the
``Store`` and plain arguments, and return what the CLI or host API shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from appliance.core.errors import InvalidInput
from appliance.core.model import validate_claw_name
from appliance.core.schedule import (
    CreatedBy,
    Job,
    JobKind,
    canonical_spec,
    check_can_create,
    check_can_delete,
    parse_zone,
    validate_text,
)
from appliance.core.textsafe import printable
from appliance.store import ScheduleRepository, Store

DEFAULT_HEARTBEAT_TEXT = (
    "Heartbeat: read HEARTBEAT.md and do what it asks. If nothing needs the "
    "owner's attention, reply exactly HEARTBEAT_OK."
)

__all__ = [
    "DEFAULT_HEARTBEAT_TEXT",
    "CreatedBy",
    "Job",
    "JobKind",
    "ScheduleRepository",
    "ensure_heartbeat",
    "host_timezone",
    "schedule_add",
    "schedule_list_lines",
    "schedule_rm",
]


def host_timezone(env: dict[str, str] | None = None, etc: Path = Path("/etc")) -> str:
    """The host's IANA zone name, the default for a job without ``--tz``
    (claws have no zone of their own yet); ``UTC`` when it cannot be told."""
    env = dict(os.environ) if env is None else env
    candidates = [env.get("TZ", "").lstrip(":")]
    try:
        candidates.append((etc / "timezone").read_text(encoding="utf-8").strip())
    except OSError:
        pass
    localtime = etc / "localtime"
    if localtime.is_symlink():
        target = str(localtime.readlink())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        try:
            return parse_zone(name).key
        except InvalidInput:
            continue
    return "UTC"


def _kind(kind: str) -> JobKind:
    try:
        return JobKind(kind)
    except ValueError:
        raise InvalidInput(
            f"unknown job kind {kind!r}", "use one of: " + ", ".join(k.value for k in JobKind)
        ) from None


def schedule_add(
    store: Store,
    claw: str,
    kind: str,
    spec: str,
    tz: str | None,
    text: str,
    created_by: str = "operator",
    now: datetime | None = None,
) -> Job:
    """Add a job for ``claw`` (for ``heartbeat``: create it or replace its
    settings and turn it on). ``tz`` None is the host's zone."""
    validate_claw_name(claw)
    job_kind, author = _kind(kind), CreatedBy(created_by)
    check_can_create(job_kind, author)
    store.claws.require(claw)
    zone = parse_zone(tz or host_timezone())
    canonical = canonical_spec(job_kind, spec, zone)
    now = datetime.now(UTC) if now is None else now
    repo = store.schedules
    if job_kind is JobKind.HEARTBEAT:
        body = validate_text(text) if text.strip() else DEFAULT_HEARTBEAT_TEXT
        return repo.set_heartbeat(claw, canonical, zone.key, body, True, now)
    if not text.strip():
        raise InvalidInput("the job has no text", "say what the claw should do when it runs")
    if job_kind is JobKind.AT and (when := datetime.fromisoformat(canonical)) <= now:
        raise InvalidInput(
            f"{when.isoformat()} is in the past", "give a future date-time for an 'at' job"
        )
    return repo.add(claw, job_kind, canonical, zone.key, validate_text(text), author, now)


def ensure_heartbeat(store: Store, claw: str, tz: str | None = None) -> Job:
    """The claw's heartbeat, created with the defaults (every 30 min, on) if
    missing; for ``claw create`` to call, so every claw has one."""
    repo = store.schedules
    current = repo.heartbeat(claw)
    if current is not None:
        return current
    zone = parse_zone(tz or host_timezone())
    canonical = canonical_spec(JobKind.HEARTBEAT, "", zone)
    return repo.set_heartbeat(
        claw, canonical, zone.key, DEFAULT_HEARTBEAT_TEXT, True, datetime.now(UTC)
    )


def schedule_rm(store: Store, job_id: int, claw: str | None = None) -> str:
    """Remove a job; ``claw`` set means the request came from that claw.

    The operator's ``rm`` of a heartbeat turns it off instead of deleting it,
    so its settings are kept and `schedule add NAME heartbeat` brings it back.
    """
    repo = store.schedules
    job = repo.require(job_id)
    check_can_delete(job, claw)
    if job.kind is JobKind.HEARTBEAT:
        repo.set_enabled(job.id, False)
        return f"heartbeat of {job.claw} turned off (job {job.id})"
    repo.delete(job.id)
    return f"removed job {job.id} ({job.kind} for {job.claw})"


def _when(moment: datetime | None, tz: str) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(parse_zone(tz)).strftime("%Y-%m-%d %H:%M %Z")


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return "-"
    shown = printable(text).replace("\n", "\\n").replace("\t", " ")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def schedule_list_lines(store: Store, claw: str | None = None) -> Iterator[str]:
    """A header and one line per job; untrusted text is escaped and shortened."""
    if claw is not None:
        validate_claw_name(claw)
    jobs = store.schedules.list(claw)
    if not jobs:
        yield "no scheduled jobs" + (f" for {claw}" if claw else "")
        return
    yield (
        f"{'ID':>4}  {'CLAW':<12} {'KIND':<9} {'SPEC':<28} {'STATE':<8} "
        f"{'NEXT':<22} {'LAST STATUS':<30} TEXT"
    )
    for job in jobs:
        done = job.kind is JobKind.AT and job.next_run_at is None
        state = "done" if done else "on" if job.enabled else "off"
        yield (
            f"{job.id:>4}  {job.claw:<12} {job.kind.value:<9} {_one_line(job.spec, 28):<28} "
            f"{state:<8} {_when(job.next_run_at if job.enabled else None, job.tz):<22} "
            f"{_one_line(job.last_status, 30):<30} {_one_line(job.text, 40)}"
        )
