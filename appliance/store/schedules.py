"""ScheduleRepository: scheduled jobs in the ``schedules`` table.

The jobs live on the host, not in the VM, so a wipe or rebuild of a claw
loses none of them, and a controller restart finds them where it left them.
"""

from __future__ import annotations

import builtins
import sqlite3
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import Conflict, NotFound
from appliance.core.quotas import MAX_CLAW_JOBS
from appliance.core.schedule import CreatedBy, Job, JobKind, first_run
from appliance.store.tx import from_iso, locked, to_iso, transaction

# A runaway claw must not be able to fill the table (MAX_CLAW_JOBS, with the
# other quotas in appliance/core/quotas.py); the operator has no such limit.
__all__ = ["MAX_CLAW_JOBS", "ScheduleRepository"]


def _from_iso(text: str | None) -> datetime | None:
    return None if text is None else from_iso(text)


def _to_job(row: dict[str, Any]) -> Job:
    created = _from_iso(row["created_at"])
    assert created is not None
    return Job(
        id=int(row["id"]),
        claw=row["claw"],
        kind=JobKind(row["kind"]),
        spec=row["spec"],
        tz=row["tz"],
        text=row["text"],
        created_by=CreatedBy(row["created_by"]),
        enabled=bool(row["enabled"]),
        created_at=created,
        next_run_at=_from_iso(row["next_run_at"]),
        last_run_at=_from_iso(row["last_run_at"]),
        last_status=row["last_status"],
    )


def _not_found(job_id: int) -> NotFound:
    return NotFound(f"no scheduled job {job_id}", "see `clawden schedule list`")


class ScheduleRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        claw: str,
        kind: JobKind,
        spec: str,
        tz: str,
        text: str,
        created_by: CreatedBy,
        now: datetime,
        enabled: bool = True,
    ) -> Job:
        """Record a job (``spec`` already canonical) with its first run after ``now``."""
        draft = Job(0, claw, kind, spec, tz, text, created_by, enabled, now, None)
        first = first_run(draft)
        try:
            with transaction(self.db):
                if created_by is CreatedBy.CLAW:
                    self._check_claw_quota(claw)
                cursor = self.db.execute(
                    "INSERT INTO schedules (claw, kind, spec, tz, text, created_by, enabled,"
                    " next_run_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        claw,
                        kind.value,
                        spec,
                        tz,
                        text,
                        created_by.value,
                        int(enabled),
                        None if first is None else to_iso(first),
                        to_iso(now),
                    ],
                )
                job_id = int(cursor.lastrowid or 0)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" not in str(exc):
                raise
            raise Conflict(
                f"claw {claw!r} already has a heartbeat",
                "`clawden schedule add NAME heartbeat SPEC` replaces its settings",
            ) from None
        return self.require(job_id)

    def set_heartbeat(
        self, claw: str, spec: str, tz: str, text: str, enabled: bool, now: datetime
    ) -> Job:
        """Create the claw's heartbeat or replace its settings (one per claw)."""
        with transaction(self.db):
            current = self.heartbeat(claw)
            if current is None:
                return self.add(
                    claw, JobKind.HEARTBEAT, spec, tz, text, CreatedBy.OPERATOR, now, enabled
                )
            draft = Job(
                0, claw, JobKind.HEARTBEAT, spec, tz, text, CreatedBy.OPERATOR, True, now, None
            )
            first = first_run(draft)
            self.db.execute(
                "UPDATE schedules SET spec = ?, tz = ?, text = ?, enabled = ?, next_run_at = ?"
                " WHERE id = ?",
                [
                    spec,
                    tz,
                    text,
                    int(enabled),
                    None if first is None else to_iso(first),
                    current.id,
                ],
            )
            return self.require(current.id)

    def heartbeat(self, claw: str) -> Job | None:
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM schedules WHERE claw = ? AND kind = 'heartbeat'", [claw]
                )
            )
        return _to_job(rows[0]) if rows else None

    def heartbeats(self) -> dict[str, Job]:
        """Every claw's heartbeat job, in one query."""
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM schedules WHERE kind = 'heartbeat'"))
        return {str(row["claw"]): _to_job(row) for row in rows}

    def get(self, job_id: int) -> Job | None:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM schedules WHERE id = ?", [job_id]))
        return _to_job(rows[0]) if rows else None

    def require(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    def list(self, claw: str | None = None) -> list[Job]:
        with locked(self.db):
            if claw is None:
                rows = list(self.db.query("SELECT * FROM schedules ORDER BY claw, id"))
            else:
                rows = list(
                    self.db.query("SELECT * FROM schedules WHERE claw = ? ORDER BY id", [claw])
                )
        return [_to_job(row) for row in rows]

    def due(self, now: datetime) -> builtins.list[Job]:
        """Enabled jobs whose next run is at or before ``now``, oldest first."""
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM schedules WHERE enabled = 1 AND next_run_at IS NOT NULL"
                    " AND next_run_at <= ? ORDER BY next_run_at, id",
                    [to_iso(now)],
                )
            )
        return [_to_job(row) for row in rows]

    def claim(
        self, job: Job, next_run_at: datetime | None, now: datetime, status: str, ran: bool
    ) -> bool:
        """Move ``job`` on to its next run, if nobody else has since it was read.

        Done *before* the delivery, so a controller that dies mid-delivery does
        not deliver the same run again on restart (at most once: a missed
        message beats a duplicate model call and a repeated notification).
        """
        with transaction(self.db):
            cursor = self.db.execute(
                "UPDATE schedules SET next_run_at = ?, last_status = ?,"
                " last_run_at = CASE WHEN ? THEN ? ELSE last_run_at END"
                " WHERE id = ? AND enabled = 1 AND next_run_at IS ?",
                [
                    None if next_run_at is None else to_iso(next_run_at),
                    status,
                    int(ran),
                    to_iso(now),
                    job.id,
                    None if job.next_run_at is None else to_iso(job.next_run_at),
                ],
            )
            return cursor.rowcount == 1

    def record(self, job_id: int, status: str) -> None:
        """Note how a run ended (a job removed meanwhile is left removed)."""
        with transaction(self.db):
            self.db.execute("UPDATE schedules SET last_status = ? WHERE id = ?", [status, job_id])

    def set_enabled(self, job_id: int, enabled: bool) -> None:
        with transaction(self.db):
            cursor = self.db.execute(
                "UPDATE schedules SET enabled = ? WHERE id = ?", [int(enabled), job_id]
            )
            if cursor.rowcount == 0:
                raise _not_found(job_id)

    def delete(self, job_id: int) -> None:
        with transaction(self.db):
            cursor = self.db.execute("DELETE FROM schedules WHERE id = ?", [job_id])
            if cursor.rowcount == 0:
                raise _not_found(job_id)

    def delete_claw(self, claw: str) -> int:
        """Forget every job of a destroyed claw (idempotent, for resumed destroys)."""
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM schedules WHERE claw = ?", [claw]).rowcount)

    def claw_made(self, claw: str) -> int:
        """How many of ``claw``'s jobs it made itself (they count against its quota)."""
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT count(*) AS n FROM schedules WHERE claw = ? AND created_by = 'claw'",
                    [claw],
                )
            )
        return int(rows[0]["n"])

    def _check_claw_quota(self, claw: str) -> None:
        if self.claw_made(claw) >= MAX_CLAW_JOBS:
            raise Conflict(
                f"claw {claw!r} already has {MAX_CLAW_JOBS} jobs of its own",
                "remove some of them before adding more",
            )
