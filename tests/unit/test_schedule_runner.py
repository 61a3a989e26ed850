"""SchedulerRunner with an injected clock: heartbeats that cost nothing when idle,
HEARTBEAT_OK kept from the owner, the missed-run policy across a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.core.errors import Unavailable
from appliance.core.heartbeat import FakeHeartbeatSource
from appliance.core.schedule import Job
from appliance.schedule.jobs import ScheduleRepository, schedule_add
from appliance.schedule.runner import (
    DeliveryResult,
    FakeDelivery,
    SchedulerRunner,
    SchedulerThread,
)
from appliance.store import Store, open_db
from appliance.store.messages import MessageRepository
from tests.unit.test_schedule_store import add_claw

T0 = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)  # 08:00 in Berlin
EMPTY = "# HEARTBEAT.md\n<!-- add tasks below -->\n- [ ]\n"
TASK = "# HEARTBEAT.md\n- [ ] remind Alice about the dentist\n"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_db(tmp_path / "clawden.db")
    add_claw(database)
    yield database
    database.close()


def _runner(
    db: Database, files: dict[str, str], delivery: FakeDelivery
) -> tuple[SchedulerRunner, MessageRepository]:
    messages = MessageRepository(db)
    runner = SchedulerRunner(
        ScheduleRepository(db),
        delivery,
        clock=lambda: T0,
        heartbeats=FakeHeartbeatSource(files),
        messages=messages,
    )
    return runner, messages


def test_an_empty_heartbeat_file_costs_no_model_call_all_day(db: Database) -> None:
    schedule_add(Store(db), "alice", "heartbeat", "every=30m", "UTC", "", now=T0)
    delivery = FakeDelivery()
    runner, messages = _runner(db, {"alice": EMPTY}, delivery)
    fired = [f for step in range(1, 49) for f in runner.tick(T0 + step * timedelta(minutes=30))]
    assert len(fired) == 48
    assert {f.status for f in fired} == {"skipped: nothing actionable"}
    assert delivery.calls == []
    assert messages.list("alice") == []


def test_a_missing_heartbeat_file_is_not_actionable(db: Database) -> None:
    schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=T0)
    delivery = FakeDelivery()
    runner, _ = _runner(db, {}, delivery)
    (fired,) = runner.tick(T0 + timedelta(minutes=30))
    assert fired.ran and fired.status == "skipped: nothing actionable"
    assert delivery.calls == []


def test_heartbeat_ok_never_reaches_the_owner(db: Database) -> None:
    beat = schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=T0)
    delivery = FakeDelivery(replies={"alice": "**HEARTBEAT_OK**"})
    runner, messages = _runner(db, {"alice": TASK}, delivery)
    (fired,) = runner.tick(T0 + timedelta(minutes=30))
    assert delivery.calls == [(beat.id, "alice", "scheduled")]
    assert fired.status == "ok: HEARTBEAT_OK, not forwarded"
    assert messages.list("alice") == []
    assert ScheduleRepository(db).require(beat.id).last_status == fired.status


def test_a_real_heartbeat_reply_is_stored_for_the_owner_as_is(db: Database) -> None:
    schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=T0)
    reply = "Dentist at 15:00 \x1b[31mtoday\x1b[0m"
    runner, messages = _runner(db, {"alice": TASK}, FakeDelivery(replies={"alice": reply}))
    runner.tick(T0 + timedelta(minutes=30))
    (message,) = messages.undelivered("alice")
    assert (message.direction, message.kind, message.text) == ("out", "heartbeat", reply)


def test_host_down_five_hours_each_job_fires_once_per_policy(tmp_path: Path) -> None:
    path = tmp_path / "clawden.db"
    before = open_db(path)
    try:
        add_claw(before)
        beat = schedule_add(Store(before), "alice", "heartbeat", "every=30m", "UTC", "", now=T0)
        hourly = schedule_add(
            Store(before), "alice", "cron", "@hourly", "UTC", "check mail", now=T0
        )
        daily = schedule_add(
            Store(before), "alice", "cron", "0 9 * * *", "Europe/Berlin", "news", now=T0
        )
    finally:
        before.close()  # the controller (and the host) go down here

    # Two days later (the daily job missed twice), 5 h after the last start-up.
    back = datetime(2024, 6, 5, 12, 20, tzinfo=UTC)
    after = open_db(path)
    try:
        delivery = FakeDelivery(replies={"alice": "HEARTBEAT_OK"})
        runner, _ = _runner(after, {"alice": TASK}, delivery)
        fired = {f.job_id: f for f in runner.tick(back)}
        assert sorted(job_id for job_id, _, _ in delivery.calls) == sorted([beat.id, hourly.id])
        assert {reason for _, _, reason in delivery.calls} == {"missed"}
        assert fired[daily.id].ran is False
        assert fired[daily.id].status.startswith("skipped: missed the run of 2024-06-05 07:00 UTC")
        assert fired[daily.id].next_run_at == datetime(2024, 6, 6, 7, tzinfo=UTC)
        assert fired[beat.id].next_run_at == back + timedelta(minutes=30)
        assert fired[hourly.id].next_run_at == datetime(2024, 6, 5, 13, tzinfo=UTC)
        # The same moment again: nothing is due any more, nothing fires twice.
        assert runner.tick(back) == []
        assert len(delivery.calls) == 2
    finally:
        after.close()


def test_a_failed_delivery_is_recorded_and_the_job_moves_on(db: Database) -> None:
    job = schedule_add(Store(db), "alice", "every", "1h", "UTC", "report", now=T0)
    delivery = FakeDelivery(fail_with=Unavailable("claw alice is not running", "start it"))
    runner, _ = _runner(db, {}, delivery)
    (fired,) = runner.tick(T0 + timedelta(hours=1))
    assert fired.status == "failed: claw alice is not running"
    stored = ScheduleRepository(db).require(job.id)
    assert stored.last_status == fired.status
    assert stored.next_run_at == T0 + timedelta(hours=2)


def test_an_at_job_runs_once_and_is_done(db: Database) -> None:
    job = schedule_add(
        Store(db), "alice", "at", "2024-06-03T09:00", "Europe/Berlin", "call mum", now=T0
    )
    delivery = FakeDelivery(replies={"alice": "Reminder: call mum"})
    runner, messages = _runner(db, {}, delivery)
    assert runner.tick(T0 + timedelta(hours=1, seconds=30))[0].status == (
        "ok: reply stored for the owner"
    )
    assert ScheduleRepository(db).require(job.id).next_run_at is None
    assert runner.tick(T0 + timedelta(days=1)) == []
    assert [m.kind for m in messages.list("alice")] == ["schedule"]


class _SignallingDelivery(FakeDelivery):
    def __init__(self) -> None:
        super().__init__()
        self.called = threading.Event()

    def deliver(self, job: Job, reason: str) -> DeliveryResult:
        result = super().deliver(job, reason)
        self.called.set()
        return result


def test_thread_wrapper_ticks_until_stopped(db: Database) -> None:
    schedule_add(Store(db), "alice", "every", "1h", "UTC", "x", now=T0)
    delivery = _SignallingDelivery()
    runner = SchedulerRunner(
        ScheduleRepository(db), delivery, clock=lambda: T0 + timedelta(hours=1)
    )
    thread = SchedulerThread(runner, interval_s=3600)
    thread.start()
    try:
        assert delivery.called.wait(60)  # a generous bound, not a timing assertion
        with pytest.raises(RuntimeError, match="already started"):
            thread.start()
    finally:
        thread.stop()
    assert delivery.calls == [(1, "alice", "scheduled")]


class _UnreachableSource:
    def read(self, claw: str) -> str | None:
        raise Unavailable(f"claw {claw!r} is stopped", f"start it: `clawden claw start {claw}`")


def test_a_heartbeat_for_an_unreachable_claw_is_skipped_and_says_why(db: Database) -> None:
    schedule_add(Store(db), "alice", "heartbeat", "", "UTC", "", now=T0)
    delivery = FakeDelivery()
    runner = SchedulerRunner(
        ScheduleRepository(db), delivery, clock=lambda: T0, heartbeats=_UnreachableSource()
    )
    (fired,) = runner.tick(T0 + timedelta(minutes=30))
    assert fired.status == "skipped: claw 'alice' is stopped"
    assert delivery.calls == []
    # The job moved on: the next heartbeat looks again.
    assert fired.next_run_at == T0 + timedelta(minutes=60)


class _BlockingDelivery(FakeDelivery):
    """alice's delivery blocks until released; everyone else's returns at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.bob_done = threading.Event()

    def deliver(self, job: Job, reason: str) -> DeliveryResult:
        if job.claw == "alice":
            assert self.release.wait(60)
        result = super().deliver(job, reason)
        if job.claw == "bob":
            self.bob_done.set()
        return result


def test_a_busy_claw_does_not_hold_up_another_claws_jobs(db: Database) -> None:
    add_claw(db, "bob")
    schedule_add(Store(db), "alice", "every", "1h", "UTC", "long task", now=T0)
    schedule_add(Store(db), "alice", "every", "1h", "UTC", "second task", now=T0)
    schedule_add(Store(db), "bob", "every", "1h", "UTC", "short task", now=T0)
    delivery = _BlockingDelivery()
    runner = SchedulerRunner(
        ScheduleRepository(db), delivery, clock=lambda: T0 + timedelta(hours=1)
    )
    thread = SchedulerThread(runner, interval_s=3600)
    # One pass starts alice's first job and bob's; alice's second waits its turn.
    assert thread.pass_once() == 2
    try:
        assert delivery.bob_done.wait(60)  # while alice is still busy
        _wait_until(lambda: thread.busy_claws() == {"alice"})  # bob's worker unregisters
        assert thread.pass_once() == 0  # alice's second job stays due, not started twice
        delivery.release.set()
        _wait_until(lambda: not thread.busy_claws())
        assert sorted(delivery.calls) == [(1, "alice", "scheduled"), (3, "bob", "scheduled")]
        assert thread.pass_once() == 1  # now alice's second job runs
    finally:
        delivery.release.set()
        thread.stop(timeout=60)
    assert thread.pass_once() == 0  # a stopped scheduler starts nothing
    assert sorted(delivery.calls)[1] == (2, "alice", "scheduled")


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60  # generous: a bound, not a timing assertion
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)
