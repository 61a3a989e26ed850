"""ScheduleRepository and the `clawden schedule` handlers, on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.core.errors import Conflict, InvalidInput, NotFound
from appliance.core.model import Claw, ClawState
from appliance.schedule.jobs import (
    DEFAULT_HEARTBEAT_TEXT,
    JobKind,
    ScheduleRepository,
    ensure_heartbeat,
    host_timezone,
    schedule_add,
    schedule_list_lines,
    schedule_rm,
)
from appliance.store import ClawRepository, Store, open_db
from appliance.store.schedules import MAX_CLAW_JOBS

NOW = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)


def add_claw(db: Database, name: str = "alice") -> None:
    ClawRepository(db).add(
        Claw(name, name.title(), ClawState.RUNNING, "v1", 1, 512, "2024-06-01T00:00:00.000000Z")
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_db(tmp_path / "clawden.db")
    add_claw(database)
    yield database
    database.close()


def test_jobs_survive_reopening_the_database(tmp_path: Path) -> None:
    path = tmp_path / "clawden.db"
    first = open_db(path)
    try:
        add_claw(first)
        cron = schedule_add(
            Store(first), "alice", "cron", "0 9 * * mon-fri", "Europe/Berlin", "news", now=NOW
        )
        beat = schedule_add(
            Store(first), "alice", "heartbeat", "every=1h active=08:00-22:00", "UTC", "", now=NOW
        )
    finally:
        first.close()
    second = open_db(path)
    try:
        repo = ScheduleRepository(second)
        assert repo.list("alice") == [cron, beat]
        assert repo.require(cron.id).next_run_at == datetime(2024, 6, 3, 7, tzinfo=UTC)
        assert beat.text == DEFAULT_HEARTBEAT_TEXT
    finally:
        second.close()


def test_add_validates_with_fixes(db: Database) -> None:
    cases = [
        (("nobody", "cron", "@daily", "UTC", "x"), NotFound),
        (("alice", "weekly", "x", "UTC", "x"), InvalidInput),
        (("alice", "cron", "61 * * * *", "UTC", "x"), InvalidInput),
        (("alice", "cron", "@daily", "Nowhere/Town", "x"), InvalidInput),
        (("alice", "every", "1h", "UTC", "   "), InvalidInput),
        (("alice", "at", "2024-06-01T09:00", "UTC", "late"), InvalidInput),
        (("alice", "every", "1h", "UTC", "x" * 5000), InvalidInput),
    ]
    for args, error in cases:
        with pytest.raises(error) as info:
            schedule_add(Store(db), *args, now=NOW)
        assert info.value.fix
    assert ScheduleRepository(db).list() == []


def test_heartbeat_is_one_per_claw_and_add_replaces_its_settings(db: Database) -> None:
    first = schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=NOW)
    second = schedule_add(
        Store(db), "alice", "heartbeat", "every=2h model=small", "UTC", "", now=NOW
    )
    assert second.id == first.id
    assert second.spec == "every=2h model=small"
    assert second.next_run_at == NOW + timedelta(hours=2)
    assert ensure_heartbeat(Store(db), "alice").id == first.id
    with pytest.raises(Conflict, match="already has a heartbeat"):
        ScheduleRepository(db).add(
            "alice", JobKind.HEARTBEAT, "every=30m", "UTC", "x", first.created_by, NOW
        )


def test_claw_rules_for_adding_and_removing(db: Database) -> None:
    operator_job = schedule_add(Store(db), "alice", "every", "1h", "UTC", "water", now=NOW)
    beat = ensure_heartbeat(Store(db), "alice", "UTC")
    own = schedule_add(Store(db), "alice", "every", "2h", "UTC", "mine", created_by="claw", now=NOW)
    with pytest.raises(InvalidInput, match="heartbeat"):
        schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", created_by="claw", now=NOW)
    for job_id in (operator_job.id, beat.id):
        with pytest.raises(InvalidInput, match="may not remove"):
            schedule_rm(Store(db), job_id, claw="alice")
    assert schedule_rm(Store(db), own.id, claw="alice") == f"removed job {own.id} (every for alice)"
    assert [j.id for j in ScheduleRepository(db).list("alice")] == [operator_job.id, beat.id]


def test_operator_rm_turns_the_heartbeat_off_and_add_turns_it_back_on(db: Database) -> None:
    beat = ensure_heartbeat(Store(db), "alice", "UTC")
    assert schedule_rm(Store(db), beat.id) == f"heartbeat of alice turned off (job {beat.id})"
    assert not ScheduleRepository(db).require(beat.id).enabled
    assert ScheduleRepository(db).due(NOW + timedelta(days=1)) == []
    assert schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=NOW).enabled
    with pytest.raises(NotFound, match="no scheduled job 999"):
        schedule_rm(Store(db), 999)


def test_a_claw_has_a_quota_of_its_own_jobs(db: Database) -> None:
    for _ in range(MAX_CLAW_JOBS):
        schedule_add(Store(db), "alice", "every", "1h", "UTC", "x", created_by="claw", now=NOW)
    with pytest.raises(Conflict, match=f"already has {MAX_CLAW_JOBS} jobs"):
        schedule_add(Store(db), "alice", "every", "1h", "UTC", "x", created_by="claw", now=NOW)
    schedule_add(Store(db), "alice", "every", "1h", "UTC", "the operator is not limited", now=NOW)


def test_list_lines_escape_untrusted_text(db: Database) -> None:
    schedule_add(Store(db), "alice", "cron", "@daily", "Europe/Berlin", "\x1b[2Jhi\nthere", now=NOW)
    lines = list(schedule_list_lines(Store(db)))
    assert lines[0].split()[:3] == ["ID", "CLAW", "KIND"]
    assert "\x1b" not in lines[1] and "\\x1b[2Jhi\\nthere" in lines[1]
    assert "2024-06-04 00:00 CEST" in lines[1]
    assert list(schedule_list_lines(Store(db), "bob")) == ["no scheduled jobs for bob"]


def test_due_and_claim_move_a_job_on_exactly_once(db: Database) -> None:
    job = schedule_add(Store(db), "alice", "every", "1h", "UTC", "x", now=NOW)
    repo = ScheduleRepository(db)
    later = NOW + timedelta(hours=1)
    assert repo.due(later - timedelta(seconds=1)) == []
    (due,) = repo.due(later)
    assert repo.claim(due, later + timedelta(hours=1), later, "running", ran=True)
    assert not repo.claim(due, later + timedelta(hours=1), later, "running", ran=True)
    assert repo.require(job.id).last_run_at == later
    assert repo.delete_claw("alice") == 1


def test_host_timezone_reads_tz_then_etc(tmp_path: Path) -> None:
    assert host_timezone({"TZ": "America/New_York"}, tmp_path) == "America/New_York"
    (tmp_path / "timezone").write_text("Europe/Berlin\n")
    assert host_timezone({}, tmp_path) == "Europe/Berlin"
    assert host_timezone({"TZ": "bogus"}, tmp_path / "missing") == "UTC"
