"""The scheduler loop: find due jobs, apply the missed-run policy, deliver.

``SchedulerRunner.tick(now)`` does one pass and returns what it did, so tests
drive it with an injected clock; ``SchedulerThread`` calls it every few
seconds inside the controller. The delivery into the claw's agent is a port
(``Delivery``); the real one is ``controller.delivery.ChannelDelivery``.

Heartbeats are cheap when idle: before delivering one, the runner reads the
claw's HEARTBEAT.md (``HeartbeatSource``) and, when it holds nothing
actionable, records ``skipped: nothing actionable`` without any delivery, so
no model is called. A heartbeat reply that is just ``HEARTBEAT_OK`` is not
stored for the owner; any other reply is stored as an undelivered outgoing
message for the channels to deliver — within the claw's message quotas
(bytes a day, undelivered backlog; appliance/core/quotas.py), since the claw
wrote it: a claw cannot get around them by scheduling its messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from appliance.core.errors import ClawdenError, OverQuota
from appliance.core.heartbeat import HeartbeatSource, heartbeat_is_actionable, is_heartbeat_ok
from appliance.core.quotas import DEFAULT_QUOTAS, Quotas, Refusals
from appliance.core.schedule import GRACE, Job, JobKind, plan
from appliance.store.messages import MessageRepository
from appliance.store.schedules import ScheduleRepository

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    reply: str | None = None  # what the claw answered, if anything
    detail: str = ""  # e.g. the model used or why it failed, for last_status


class Delivery(Protocol):
    """Hands one run of ``job`` to the claw's agent; ``reason`` is
    ``scheduled`` or ``missed`` (a catch-up after downtime)."""

    def deliver(self, job: Job, reason: str) -> DeliveryResult: ...


@dataclass
class FakeDelivery:
    """Records every delivery and answers with ``replies[claw]`` (default ``HEARTBEAT_OK``)."""

    replies: dict[str, str] = field(default_factory=dict)
    fail_with: ClawdenError | None = None
    calls: list[tuple[int, str, str]] = field(default_factory=list)  # (job id, claw, reason)

    def deliver(self, job: Job, reason: str) -> DeliveryResult:
        self.calls.append((job.id, job.claw, reason))
        if self.fail_with is not None:
            raise self.fail_with
        return DeliveryResult(True, self.replies.get(job.claw, "HEARTBEAT_OK"))


@dataclass(frozen=True)
class Fired:
    """One due job handled by a tick: delivered (``ran``) or skipped, and why."""

    job_id: int
    claw: str
    kind: JobKind
    scheduled_for: datetime
    ran: bool
    status: str
    next_run_at: datetime | None


class SchedulerRunner:
    def __init__(
        self,
        store: ScheduleRepository,
        deliver: Delivery,
        clock: Clock = utc_clock,
        heartbeats: HeartbeatSource | None = None,
        messages: MessageRepository | None = None,
        grace: timedelta = GRACE,
        quotas: Quotas = DEFAULT_QUOTAS,
        refusals: Refusals | None = None,
    ) -> None:
        self.store = store
        self.delivery = deliver
        self.clock = clock
        self.heartbeats = heartbeats
        self.messages = messages
        self.grace = grace
        self.quotas = quotas
        self.refusals = refusals or Refusals()

    def tick(self, now: datetime | None = None) -> list[Fired]:
        """Handle every job due at ``now`` (default: the clock), oldest first."""
        now = self.clock() if now is None else now
        fired = []
        for job in self.store.due(now):
            result = self.handle(job, now)
            if result is not None:
                fired.append(result)
        return fired

    def handle(self, job: Job, now: datetime) -> Fired | None:
        """Claim ``job``'s run due at ``now`` and run it (or skip it, per the
        missed-run policy); None when someone else moved the job on first."""
        assert job.next_run_at is not None
        decision = plan(job, now, self.grace)
        status = decision.reason if not decision.run else "running"
        if not self.store.claim(job, decision.next_run_at, now, status, decision.run):
            return None  # removed, disabled or moved on since we read it
        if decision.run:
            status = self._run(job, decision.reason)
            self.store.record(job.id, status)
        return Fired(
            job.id, job.claw, job.kind, job.next_run_at, decision.run, status, decision.next_run_at
        )

    def _run(self, job: Job, reason: str) -> str:
        if job.kind is JobKind.HEARTBEAT:
            try:
                text = None if self.heartbeats is None else self.heartbeats.read(job.claw)
            except ClawdenError as exc:
                # Stopped or unreachable: nothing was delivered, and the next
                # heartbeat will look again. Not a "failure" of the job.
                return f"skipped: {exc.what}"
            if text is None or not heartbeat_is_actionable(text):
                return "skipped: nothing actionable"
        try:
            result = self.delivery.deliver(job, reason)
        except ClawdenError as exc:
            return f"failed: {exc.what}"
        except Exception as exc:  # noqa: BLE001 — one broken job must not starve the others
            log.exception("delivering job %s to %s failed", job.id, job.claw)
            return f"failed: internal error ({type(exc).__name__})"
        if not result.ok:
            return f"failed: {result.detail or 'the claw did not accept it'}"
        return self._store_reply(job, result)

    def _store_reply(self, job: Job, result: DeliveryResult) -> str:
        suffix = f" ({result.detail})" if result.detail else ""
        reply = result.reply
        if reply is None or not reply.strip():
            return f"ok: no reply{suffix}"
        if job.kind is JobKind.HEARTBEAT and is_heartbeat_ok(reply):
            return f"ok: HEARTBEAT_OK, not forwarded{suffix}"
        if self.messages is not None:
            kind = "heartbeat" if job.kind is JobKind.HEARTBEAT else "schedule"
            now = self.clock()
            try:
                self.messages.add_from_claw(
                    job.claw, "schedule", reply, kind=kind, quotas=self.quotas, now=now
                )
            except OverQuota as exc:
                # Not stored, and the job's last_status (one row, updated in
                # place) says why; the log hears of it at most once a minute.
                line = self.refusals.count(job.claw, exc.quota, now.timestamp())
                if line is not None:
                    log.warning("%s", line)
                return f"refused: reply not stored: {exc.what}"
        return f"ok: reply stored for the owner{suffix}"


class SchedulerThread:
    """Fires due jobs every ``interval_s`` until ``stop()``.

    Each claw's jobs run on a worker thread of their own, one at a time per
    claw: a delivery may take many minutes (the agent thinks, asks for an
    approval), and one busy claw must not hold up another claw's heartbeat.
    A job due for a claw that is still busy stays due and is picked up by a
    later pass (the missed-run policy decides if it got too late).
    """

    def __init__(self, runner: SchedulerRunner, interval_s: float = 10.0) -> None:
        self.runner = runner
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Thread] = {}

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the scheduler thread is already started")
        self._thread = threading.Thread(target=self._loop, name="clawden-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait for it and the deliveries in progress
        (up to ``timeout`` s each; a delivery cut short was already claimed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            workers = list(self._busy.values())
        for worker in workers:
            worker.join(timeout)

    def busy_claws(self) -> set[str]:
        with self._lock:
            return set(self._busy)

    def pass_once(self) -> int:
        """Start a worker for each due job whose claw is idle; returns how many."""
        now = self.runner.clock()
        started = 0
        for job in self.runner.store.due(now):
            with self._lock:
                if job.claw in self._busy or self._stop.is_set():
                    continue
                worker = threading.Thread(
                    target=self._work,
                    args=(job, now),
                    name=f"clawden-scheduler-{job.claw}",
                    daemon=True,
                )
                self._busy[job.claw] = worker
            worker.start()
            started += 1
        return started

    def _work(self, job: Job, now: datetime) -> None:
        try:
            self.runner.handle(job, now)
        except Exception:  # noqa: BLE001 — a broken job must not kill its claw's scheduling
            log.exception("scheduled job %s for %s failed", job.id, job.claw)
        finally:
            with self._lock:
                self._busy.pop(job.claw, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pass_once()
            except Exception:  # noqa: BLE001 — the controller's scheduler must outlive a bad pass
                log.exception("scheduler pass failed")
            self._stop.wait(self.interval_s)
