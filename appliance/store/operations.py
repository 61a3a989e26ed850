"""Multi-step operations (create, destroy, start, stop, wipe, ...) as recorded
state machines.

Each step is written down *before* it is done, so a controller killed half-way
finds the operation still ``running`` on restart and can resume or roll it
back. ``owner_pid`` says which process is driving it; ``claim`` lets reconcile
take over only operations whose owner has died, so the CLI and the controller
never run the same operation at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import Conflict, InvalidInput, NotFound
from appliance.store.tx import locked, transaction, utc_now

RUNNING = "running"
DONE = "done"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
FINAL_STATUSES = frozenset({DONE, FAILED, ROLLED_BACK})


@dataclass(frozen=True)
class Operation:
    id: int
    kind: str
    claw: str
    step: str
    status: str
    params: dict[str, Any]
    owner_pid: int | None
    error: str | None
    started_at: str
    updated_at: str


def _to_operation(row: dict[str, Any]) -> Operation:
    return Operation(
        id=int(row["id"]),
        kind=row["kind"],
        claw=row["claw"],
        step=row["step"],
        status=row["status"],
        params=json.loads(row["params"]),
        owner_pid=row["owner_pid"],
        error=row["error"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists. PermissionError means it exists
    but belongs to another user: still alive, still not ours to replace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OperationLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, kind: str, claw: str, params: dict[str, Any], first_step: str) -> Operation:
        """Record a new running operation owned by this process.

        One operation per claw at a time: the check and the insert share one
        write transaction, so the CLI and the controller cannot both start
        work on the same claw.
        """
        encoded = json.dumps(params, sort_keys=True)
        with transaction(self.db):
            busy = self._running_for(claw)
            if busy is not None:
                raise Conflict(
                    f"claw {claw!r} is busy: operation {busy.id} ({busy.kind}, "
                    f"step {busy.step!r}) is still running",
                    "wait for it to finish; if its process died, the controller "
                    "resumes or rolls it back when it starts",
                )
            now = utc_now()
            cursor = self.db.execute(
                "INSERT INTO operations"
                " (kind, claw, step, status, params, owner_pid, error, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (kind, claw, first_step, RUNNING, encoded, os.getpid(), now, now),
            )
            op_id = cursor.lastrowid
            assert op_id is not None
            return self._require(op_id)

    def advance(
        self, op_id: int, step: str, params_update: dict[str, Any] | None = None
    ) -> Operation:
        """Move a running operation to ``step``, merging ``params_update`` into
        its params (so later steps and a resumed run see what earlier ones made)."""
        with transaction(self.db):
            op = self._require_running(op_id)
            params = {**op.params, **(params_update or {})}
            self.db.execute(
                "UPDATE operations SET step = ?, params = ?, updated_at = ? WHERE id = ?",
                (step, json.dumps(params, sort_keys=True), utc_now(), op_id),
            )
            return self._require(op_id)

    def finish(self, op_id: int, status: str, error: str | None = None) -> None:
        """End a running operation with a final status."""
        if status not in FINAL_STATUSES:
            raise InvalidInput(
                f"cannot finish operation {op_id} with status {status!r}",
                f"use one of {', '.join(sorted(FINAL_STATUSES))}",
            )
        with transaction(self.db):
            self._require_running(op_id)
            self.db.execute(
                "UPDATE operations SET status = ?, error = ?, updated_at = ? WHERE id = ?",
                (status, error, utc_now(), op_id),
            )

    def note_error(self, op_id: int, error: str) -> None:
        """Record why the last attempt failed, leaving the operation running so
        reconcile can try again (destroys, and creates whose rollback failed)."""
        with transaction(self.db):
            self._require_running(op_id)
            self.db.execute(
                "UPDATE operations SET error = ?, updated_at = ? WHERE id = ?",
                (error, utc_now(), op_id),
            )

    def get(self, op_id: int) -> Operation | None:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM operations WHERE id = ?", [op_id]))
        return _to_operation(rows[0]) if rows else None

    def unfinished(self) -> list[Operation]:
        """Running operations, oldest first: the order reconcile resumes them in."""
        with locked(self.db):
            rows = list(
                self.db.query("SELECT * FROM operations WHERE status = ? ORDER BY id", [RUNNING])
            )
        return [_to_operation(row) for row in rows]

    def running_for(self, claw: str) -> Operation | None:
        with locked(self.db):
            return self._running_for(claw)

    def claim(self, op_id: int, pid: int) -> bool:
        """Make ``pid`` the owner of a running operation, but only if nobody
        alive owns it. True if ``pid`` owns it afterwards.

        A recycled pid can make a dead owner look alive; that errs on the safe
        side (the operation waits) rather than letting two processes run it.
        """
        with transaction(self.db):
            op = self._require(op_id)
            if op.status != RUNNING:
                return False
            if op.owner_pid == pid:
                return True
            if op.owner_pid is not None and pid_alive(op.owner_pid):
                return False
            self.db.execute(
                "UPDATE operations SET owner_pid = ?, updated_at = ? WHERE id = ?",
                (pid, utc_now(), op_id),
            )
            return True

    def history(self, claw: str | None = None, limit: int = 50) -> list[Operation]:
        """Most recent operations first, optionally for one claw."""
        with locked(self.db):
            if claw is None:
                rows = self.db.query("SELECT * FROM operations ORDER BY id DESC LIMIT ?", [limit])
            else:
                rows = self.db.query(
                    "SELECT * FROM operations WHERE claw = ? ORDER BY id DESC LIMIT ?",
                    [claw, limit],
                )
            return [_to_operation(row) for row in rows]

    def _running_for(self, claw: str) -> Operation | None:
        rows = list(
            self.db.query(
                "SELECT * FROM operations WHERE claw = ? AND status = ? ORDER BY id DESC LIMIT 1",
                [claw, RUNNING],
            )
        )
        return _to_operation(rows[0]) if rows else None

    def _require(self, op_id: int) -> Operation:
        op = self.get(op_id)
        if op is None:
            raise NotFound(f"no operation {op_id}", "check the operation id")
        return op

    def _require_running(self, op_id: int) -> Operation:
        op = self._require(op_id)
        if op.status != RUNNING:
            raise Conflict(
                f"operation {op_id} ({op.kind} {op.claw}) already ended as {op.status}",
                "start a new operation instead of reusing a finished one",
            )
        return op
