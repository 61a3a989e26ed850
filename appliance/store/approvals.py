"""The ``approvals`` table: a claw's requests for approval and their
decisions (see ``appliance.core.approvals`` for the rules)."""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from appliance.core.approvals import (
    DEFAULT_TIMEOUT_S,
    MAX_REASON_CHARS,
    MAX_WAIT_S,
    POLL_S,
    Approval,
    Clock,
    check_action,
    check_details,
    clamp_timeout,
    not_found,
    request_hash,
    utc_clock,
)
from appliance.core.errors import Conflict, InvalidInput
from appliance.core.quotas import APPROVAL_WINDOW, DEFAULT_QUOTAS, Quotas, check_approval_rate
from appliance.store.tx import from_iso, locked, to_iso, transaction


def _to_approval(row: dict[str, Any]) -> Approval:
    return Approval(
        id=row["id"],
        claw=row["claw"],
        action=row["action"],
        details=row["details"],
        sha256=row["sha256"],
        status=row["status"],
        reason=row["reason"],
        created_at=from_iso(row["created_at"]),
        expires_at=from_iso(row["expires_at"]),
        decided_at=None if row["decided_at"] is None else from_iso(row["decided_at"]),
        decided_by=row["decided_by"],
        seen_at=None if row.get("seen_at") is None else from_iso(row["seen_at"]),
    )


class ApprovalRepository:
    """The ``approvals`` table. ``clock`` and ``sleep`` are injectable for tests."""

    def __init__(
        self,
        db: Database,
        clock: Clock = utc_clock,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.db = db
        self.clock = clock
        self.sleep = sleep

    def request(
        self,
        claw: str,
        action: str,
        details: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        now: datetime | None = None,
        quotas: Quotas = DEFAULT_QUOTAS,
    ) -> Approval:
        """Record a pending request; Conflict if the claw already has too many
        waiting, OverQuota if it asked too often in the last hour (checked in
        the same transaction as the insert)."""
        check_action(action)
        check_details(details)
        now = now or self.clock()
        expires = now + timedelta(seconds=clamp_timeout(timeout_s))
        approval_id = f"ap-{secrets.token_hex(6)}"
        with transaction(self.db):
            self._expire_due(now)
            waiting = self.db.execute(
                "SELECT count(*) FROM approvals WHERE claw = ? AND status = 'pending'", [claw]
            ).fetchone()[0]
            if waiting >= quotas.approvals_pending:
                raise Conflict(
                    f"you already have {waiting} approval requests waiting for your admin",
                    "wait for a decision on those (or for them to expire) before asking again",
                )
            check_approval_rate(quotas, self.asked_since(claw, now - APPROVAL_WINDOW), now)
            self.db.execute(
                "INSERT INTO approvals (id, claw, action, details, sha256, status, reason,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', '', ?, ?)",
                [
                    approval_id,
                    claw,
                    action,
                    details,
                    request_hash(claw, action, details),
                    to_iso(now),
                    to_iso(expires),
                ],
            )
            return self.require(approval_id)

    def asked_since(self, claw: str, since: datetime) -> builtins.list[datetime]:
        """When ``claw`` made each request after ``since``, oldest first."""
        with locked(self.db):
            rows = self.db.execute(
                "SELECT created_at FROM approvals WHERE claw = ? AND created_at > ?"
                " ORDER BY created_at",
                [claw, to_iso(since)],
            ).fetchall()
        return [from_iso(row[0]) for row in rows]

    def pending_count(self, claw: str) -> int:
        self._expire_due(self.clock())
        with locked(self.db):
            row = self.db.execute(
                "SELECT count(*) FROM approvals WHERE claw = ? AND status = 'pending'", [claw]
            ).fetchone()
        return int(row[0])

    def pending_by_claw(self) -> dict[str, int]:
        """How many requests wait, per claw, in one query (after expiring
        the due ones, like every read)."""
        self._expire_due(self.clock())
        with locked(self.db):
            rows = self.db.execute(
                "SELECT claw, COUNT(*) FROM approvals WHERE status = 'pending' GROUP BY claw"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def get(self, approval_id: str, claw: str | None = None) -> Approval | None:
        """The request (expired first if it is past due); with ``claw``, only
        if it is that claw's."""
        self._expire_due(self.clock())
        sql, params = "SELECT * FROM approvals WHERE id = ?", [approval_id]
        if claw is not None:
            sql, params = sql + " AND claw = ?", [approval_id, claw]
        with locked(self.db):
            rows = list(self.db.query(sql, params))
        return _to_approval(rows[0]) if rows else None

    def require(self, approval_id: str, claw: str | None = None) -> Approval:
        approval = self.get(approval_id, claw)
        if approval is None:
            raise not_found(approval_id, claw)
        return approval

    def wait(self, approval_id: str, claw: str, wait_s: float) -> Approval:
        """The claw's long poll: as soon as it is decided (or expires), or
        after ``wait_s`` (at most 25 s) with it still pending."""
        deadline = self.clock() + timedelta(seconds=min(max(wait_s, 0.0), MAX_WAIT_S))
        while True:
            approval = self.require(approval_id, claw)
            left = (deadline - self.clock()).total_seconds()
            if not approval.pending or left <= 0:
                return approval
            self.sleep(min(POLL_S, left))

    def decide(
        self,
        approval_id: str,
        approved: bool,
        by: str,
        reason: str | None = None,
        expected_sha256: str | None = None,
    ) -> Approval:
        """Approve or deny a pending, unexpired request; anything else is refused.

        With ``expected_sha256`` (the hash the decider was shown), the request
        is checked once more inside the write transaction, just before the
        decision is written: its stored hash and the hash of its stored text
        must both be that one, so nothing edited since it was shown is decided.
        """
        reason = (reason or "").strip()
        if len(reason) > MAX_REASON_CHARS:
            raise InvalidInput(
                f"the reason is {len(reason)} characters; the limit is {MAX_REASON_CHARS}",
                "say it more briefly",
            )
        status = "approved" if approved else "denied"
        with transaction(self.db):
            now = self.clock()
            current = self.require(approval_id)
            if not current.pending:
                raise Conflict(
                    f"approval {approval_id} is already {current.status}",
                    f"nothing to decide; see `clawden approval show {approval_id}`",
                )
            if expected_sha256 is not None and not (
                current.sha256 == expected_sha256
                and request_hash(current.claw, current.action, current.details) == expected_sha256
            ):
                raise Conflict(
                    f"approval {approval_id} is not the request that was shown",
                    "reload the request, read it again and decide with a new code",
                )
            self.db.execute(
                "UPDATE approvals SET status = ?, reason = ?, decided_at = ?, decided_by = ?"
                " WHERE id = ? AND status = 'pending'",
                [status, reason or f"{status} by your admin", to_iso(now), by, approval_id],
            )
            return self.require(approval_id)

    def list(self, claw: str | None = None, pending_only: bool = True) -> builtins.list[Approval]:
        """Oldest first: the one waiting longest is the first to read."""
        self._expire_due(self.clock())
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM approvals WHERE (? IS NULL OR claw = ?)"
                    " AND (? = 0 OR status = 'pending') ORDER BY created_at, rowid",
                    [claw, claw, int(pending_only)],
                )
            )
        return [_to_approval(row) for row in rows]

    def recent(self, limit: int = 20) -> builtins.list[Approval]:
        """Decided and expired requests, the newest decision first."""
        self._expire_due(self.clock())
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM approvals WHERE status != 'pending'"
                    " ORDER BY decided_at DESC, rowid DESC LIMIT ?",
                    [limit],
                )
            )
        return [_to_approval(row) for row in rows]

    def mark_seen(self, approval_ids: builtins.list[str], now: datetime) -> None:
        """The inbox showed these: a pending one marked here that later
        expires was expired *seen*, not "expired unseen"."""
        if not approval_ids:
            return
        marks = ", ".join("?" for _ in approval_ids)
        with transaction(self.db):
            self.db.execute(
                f"UPDATE approvals SET seen_at = ? WHERE seen_at IS NULL"  # noqa: S608
                f" AND status = 'pending' AND id IN ({marks})",
                [to_iso(now), *approval_ids],
            )

    def delete_claw(self, claw: str) -> int:
        """Forget a destroyed claw's requests; returns how many there were."""
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM approvals WHERE claw = ?", [claw]).rowcount)

    def _expire_due(self, now: datetime) -> None:
        """Mark pending requests past ``expires_at`` expired. The check is a
        read (the claw's poll runs it 4 times a second); only an actual
        expiry takes the write lock."""
        cutoff = to_iso(now)
        with locked(self.db):
            due = self.db.execute(
                "SELECT 1 FROM approvals WHERE status = 'pending' AND expires_at <= ? LIMIT 1",
                [cutoff],
            ).fetchone()
            if due:
                with transaction(self.db):
                    self.db.execute(
                        "UPDATE approvals SET status = 'expired', decided_at = expires_at,"
                        " reason = 'no decision before it expired'"
                        " WHERE status = 'pending' AND expires_at <= ?",
                        [cutoff],
                    )
