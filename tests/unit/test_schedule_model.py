"""Job specs, next runs of every/at/heartbeat, active hours, the missed-run plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest

from appliance.core.errors import InvalidInput
from appliance.core.schedule import (
    CreatedBy,
    HeartbeatSpec,
    Job,
    JobKind,
    canonical_spec,
    check_can_create,
    check_can_delete,
    first_run,
    next_run,
    parse_duration,
    parse_heartbeat,
    parse_zone,
    plan,
)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)  # Monday 08:00 in Berlin


def _job(kind: JobKind, spec: str, tz: str = "Europe/Berlin", **kw: object) -> Job:
    fields: dict[str, object] = {
        "id": 1,
        "claw": "alice",
        "kind": kind,
        "spec": spec,
        "tz": tz,
        "text": "do it",
        "created_by": CreatedBy.OPERATOR,
        "enabled": True,
        "created_at": T0,
        "next_run_at": None,
    }
    fields.update(kw)
    job = Job(**fields)  # type: ignore[arg-type]
    if "next_run_at" not in kw:
        job = Job(**{**fields, "next_run_at": first_run(job)})  # type: ignore[arg-type]
    return job


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1d") == 86400
    for bad in ("", "10", "5x", "30s", "m"):
        with pytest.raises(InvalidInput):
            parse_duration(bad)


def test_heartbeat_spec_defaults_and_canonical_form() -> None:
    assert parse_heartbeat("") == HeartbeatSpec(1800, None, None)
    spec = parse_heartbeat("15m active=08:00-22:00 model=gpt-4o-mini")
    assert spec == HeartbeatSpec(900, (dtime(8), dtime(22)), "gpt-4o-mini")
    assert spec.format() == "every=15m active=08:00-22:00 model=gpt-4o-mini"
    assert canonical_spec(JobKind.HEARTBEAT, "", BERLIN) == "every=30m"
    for bad in ("active=8-22", "active=08:00-08:00", "colour=red", "model=$(rm)"):
        with pytest.raises(InvalidInput):
            parse_heartbeat(bad)


def test_unknown_zone_is_refused() -> None:
    assert parse_zone("America/New_York").key == "America/New_York"
    for bad in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(InvalidInput, match="unknown time zone"):
            parse_zone(bad)


def test_every_is_anchored_to_creation() -> None:
    job = _job(JobKind.EVERY, "45m")
    assert job.next_run_at == T0 + timedelta(minutes=45)
    # A late tick does not shift the grid.
    assert next_run(job, T0 + timedelta(minutes=47)) == T0 + timedelta(minutes=90)


def test_at_without_offset_is_wall_clock_in_its_zone_and_runs_once() -> None:
    spec = canonical_spec(JobKind.AT, "2024-06-03T09:30", BERLIN)
    assert spec == "2024-06-03T09:30:00+02:00"
    job = _job(JobKind.AT, spec)
    assert job.next_run_at == datetime(2024, 6, 3, 7, 30, tzinfo=UTC)
    assert next_run(job, datetime(2024, 6, 3, 7, 30, tzinfo=UTC)) is None


def test_heartbeat_next_respects_active_hours_in_its_zone() -> None:
    job = _job(JobKind.HEARTBEAT, "every=30m active=08:00-22:00")
    assert job.next_run_at == T0 + timedelta(minutes=30)
    late = datetime(2024, 6, 3, 19, 45, tzinfo=UTC)  # 21:45 Berlin
    assert next_run(job, late) == datetime(2024, 6, 4, 6, 0, tzinfo=UTC)  # 08:00 next day


def test_active_hours_may_wrap_midnight() -> None:
    job = _job(JobKind.HEARTBEAT, "every=1h active=22:00-06:00", tz="UTC")
    assert next_run(job, datetime(2024, 6, 3, 23, 30, tzinfo=UTC)) == datetime(
        2024, 6, 4, 0, 30, tzinfo=UTC
    )
    assert next_run(job, datetime(2024, 6, 4, 5, 30, tzinfo=UTC)) == datetime(
        2024, 6, 4, 22, 0, tzinfo=UTC
    )


def test_plan_on_time_is_scheduled() -> None:
    job = _job(JobKind.EVERY, "1h")
    decision = plan(job, T0 + timedelta(hours=1, seconds=5))
    assert decision.run and decision.reason == "scheduled"
    assert decision.next_run_at == T0 + timedelta(hours=2)


def test_plan_hourly_cron_after_five_hours_down_runs_once() -> None:
    job = _job(JobKind.CRON, "0 * * * *", next_run_at=T0 + timedelta(hours=1))
    now = T0 + timedelta(hours=6, minutes=10)
    decision = plan(job, now)
    assert decision.run and decision.reason == "missed"
    assert decision.next_run_at == T0 + timedelta(hours=7)


def test_plan_daily_cron_missed_by_two_days_is_skipped_to_the_next_time() -> None:
    job = _job(JobKind.CRON, "0 9 * * *", next_run_at=datetime(2024, 6, 3, 7, tzinfo=UTC))
    now = datetime(2024, 6, 5, 13, 0, tzinfo=UTC)  # 15:00 Berlin, 6 h after today's 09:00
    decision = plan(job, now)
    assert not decision.run
    assert decision.reason.startswith("skipped: missed the run of 2024-06-05 07:00 UTC")
    assert decision.next_run_at == datetime(2024, 6, 6, 7, tzinfo=UTC)


def test_plan_daily_cron_back_within_the_hour_catches_up_once() -> None:
    job = _job(JobKind.CRON, "0 9 * * *", next_run_at=datetime(2024, 6, 3, 7, tzinfo=UTC))
    decision = plan(job, datetime(2024, 6, 5, 7, 40, tzinfo=UTC))
    assert decision.run and decision.reason == "missed"
    assert decision.next_run_at == datetime(2024, 6, 6, 7, tzinfo=UTC)


def test_plan_missed_at_job_is_done_either_way() -> None:
    job = _job(JobKind.AT, "2024-06-03T09:30:00+02:00")
    assert plan(job, datetime(2024, 6, 3, 8, 0, tzinfo=UTC)).run
    skipped = plan(job, datetime(2024, 6, 3, 12, 0, tzinfo=UTC))
    assert not skipped.run and skipped.next_run_at is None


def test_plan_heartbeat_beats_once_then_one_interval_later() -> None:
    job = _job(JobKind.HEARTBEAT, "every=30m", next_run_at=T0)
    now = T0 + timedelta(hours=5, minutes=7)
    decision = plan(job, now)
    assert decision.run and decision.reason == "missed"
    assert decision.next_run_at == now + timedelta(minutes=30)


def test_plan_heartbeat_outside_active_hours_waits_for_the_window() -> None:
    job = _job(JobKind.HEARTBEAT, "every=30m active=08:00-22:00", next_run_at=T0)
    night = datetime(2024, 6, 3, 22, 30, tzinfo=UTC)  # 00:30 Berlin
    decision = plan(job, night)
    assert not decision.run and decision.reason == "skipped: outside active hours"
    assert decision.next_run_at == datetime(2024, 6, 4, 6, 0, tzinfo=UTC)


def test_a_claw_cannot_create_a_heartbeat_or_remove_what_is_not_its_own() -> None:
    check_can_create(JobKind.CRON, CreatedBy.CLAW)
    with pytest.raises(InvalidInput, match="cannot create or change its heartbeat"):
        check_can_create(JobKind.HEARTBEAT, CreatedBy.CLAW)
    own = _job(JobKind.EVERY, "1h", created_by=CreatedBy.CLAW)
    check_can_delete(own, "alice")
    check_can_delete(own, None)
    for job, requester in (
        (own, "bob"),
        (_job(JobKind.EVERY, "1h"), "alice"),
        (_job(JobKind.HEARTBEAT, ""), "alice"),
    ):
        with pytest.raises(InvalidInput, match="may not remove job"):
            check_can_delete(job, requester)
