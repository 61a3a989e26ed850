"""Approvals: a claw asks its admin before a named action and waits for the answer.

A claw's ``request_approval`` tool reaches the host API (``POST
/v1/approvals``), which records a *pending* request here; the admin — for now
root at the host's CLI (``clawden approval approve|deny``); the panel with a
TOTP code comes later — decides it, and the claw's long poll (``POST
/v1/approvals/wait``) sees the decision within a poll interval. A request
nobody decides expires at ``expires_at`` (the claw's timeout, clamped to
10..900 s); expiry happens on read, so no timer thread is needed.

The action and details come from the claw and are untrusted: they are stored
exactly as received (after validation) and escaped wherever they are shown.
``sha256`` pins what the claw asked (its name, the action and the details), so
the operator approves exactly the text that was shown. A row never changes
after its decision.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlite_utils import Database

from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.store.tx import from_iso, locked, to_iso, transaction

MAX_ACTION_CHARS = 100
MAX_DETAILS_CHARS = 4000
MAX_REASON_CHARS = 500
MIN_TIMEOUT_S, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S = 10, 900, 300
# A claw asking faster than its admin can read is refused: the queue is for a
# human, and a runaway loop must not bury the one request that matters.
MAX_PENDING_PER_CLAW = 5
MAX_WAIT_S = 25.0  # one long poll; the guest's HTTP timeout is this plus slack
POLL_S = 0.25
STATUSES = ("pending", "approved", "denied", "expired")
# Text that could rewrite a terminal or read differently from what it is.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp", "Cs"}

Clock = Callable[[], datetime]


def utc_clock() -> datetime:
    return datetime.now(UTC)


def request_hash(claw: str, action: str, details: str) -> str:
    """sha256 of exactly what was asked (a JSON array, so fields cannot blur)."""
    canonical = json.dumps([claw, action, details], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Approval:
    id: str
    claw: str
    action: str
    details: str
    sha256: str
    status: str
    reason: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


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
    )


def check_action(action: str) -> str:
    """A short name for what the claw wants to do: one printable line."""
    if not action.strip():
        raise InvalidInput("the approval has no action", "name the action, e.g. 'email.send'")
    if len(action) > MAX_ACTION_CHARS:
        raise InvalidInput(
            f"the action is {len(action)} characters; the limit is {MAX_ACTION_CHARS}",
            "give a short action name and put the rest in the details",
        )
    if any(unicodedata.category(ch) in _UNPRINTABLE for ch in action):
        raise InvalidInput(
            "the action contains a newline or other control character",
            "use one plain line for the action and put the rest in the details",
        )
    return action


def check_details(details: str) -> str:
    if len(details) > MAX_DETAILS_CHARS:
        raise InvalidInput(
            f"the details are {len(details)} characters; the limit is {MAX_DETAILS_CHARS}",
            "say exactly what will be done, more briefly",
        )
    if any(unicodedata.category(ch) == "Cs" for ch in details):
        raise InvalidInput("the details contain invalid Unicode", "send plain UTF-8 text")
    return details


def clamp_timeout(timeout_s: float) -> int:
    return int(min(max(timeout_s, MIN_TIMEOUT_S), MAX_TIMEOUT_S))


def _not_found(approval_id: str, claw: str | None) -> NotFound:
    shown = approval_id[:40]
    if claw is not None:
        # A claw learns nothing about another claw's requests, not even that they exist.
        return NotFound(f"you have no approval request {shown!r}", "use the id you were given")
    return NotFound(f"no approval request {shown!r}", "see `clawden approval list --all`")


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
    ) -> Approval:
        """Record a pending request; Conflict if the claw already has too many."""
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
            if waiting >= MAX_PENDING_PER_CLAW:
                raise Conflict(
                    f"you already have {waiting} approval requests waiting for your admin",
                    "wait for a decision on those (or for them to expire) before asking again",
                )
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
            raise _not_found(approval_id, claw)
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
        self, approval_id: str, approved: bool, by: str, reason: str | None = None
    ) -> Approval:
        """Approve or deny a pending, unexpired request; anything else is refused."""
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
