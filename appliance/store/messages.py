"""The ``messages`` table: a claw's conversation, stored on the host (see
``appliance.core.messages`` for the rules)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import InvalidInput
from appliance.core.messages import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Message,
    check_fields,
    check_text,
    text_bytes,
)
from appliance.core.quotas import DEFAULT_QUOTAS, MessageUsage, Quotas, check_message, day_start
from appliance.store.tx import locked, to_iso, transaction

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _to_message(row: dict[str, Any]) -> Message:
    return Message(
        id=int(row["id"]),
        claw=row["claw"],
        direction=row["direction"],
        channel=row["channel"],
        sender=row["sender"],
        kind=row["kind"],
        text=row["text"],
        created_at=row["created_at"],
        delivered=bool(row["delivered"]),
    )


class MessageRepository:
    """The ``messages`` table. ``clock`` is injectable for tests."""

    def __init__(self, db: Database, clock: Clock = _utc_now) -> None:
        self.db = db
        self.clock = clock

    def add(
        self,
        claw: str,
        direction: str,
        channel: str,
        sender: str,
        text: str,
        kind: str = "chat",
        delivered: bool = False,
        created_at: str | None = None,
    ) -> Message:
        """Store one message as-is and return it with its id."""
        check_fields(direction, channel, kind, sender)
        check_text(text)
        created_at = to_iso(self.clock()) if created_at is None else created_at
        with transaction(self.db):
            cursor = self.db.execute(
                "INSERT INTO messages"
                " (claw, direction, channel, sender, kind, text, created_at, delivered)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [claw, direction, channel, sender, kind, text, created_at, int(delivered)],
            )
            message_id = int(cursor.lastrowid or 0)
        return Message(
            message_id, claw, direction, channel, sender, kind, text, created_at, delivered
        )

    def add_from_claw(
        self,
        claw: str,
        channel: str,
        text: str,
        kind: str = "chat",
        quotas: Quotas = DEFAULT_QUOTAS,
        now: datetime | None = None,
    ) -> Message:
        """Store a message the claw wrote to its owner, if its quotas allow
        (``OverQuota`` otherwise: nothing is stored). Counting and inserting
        share one write transaction, so parallel requests cannot overshoot."""
        check_fields("out", channel, kind, claw)
        check_text(text)
        now = now or self.clock()
        with transaction(self.db):
            check_message(quotas, self.usage(claw, now), text_bytes(text), now)
            return self.add(claw, "out", channel, claw, text, kind=kind, created_at=to_iso(now))

    def usage(self, claw: str, now: datetime | None = None) -> MessageUsage:
        """What ``claw`` wrote since 00:00 UTC (count and bytes) and how many
        of its messages are still undelivered."""
        now = now or self.clock()
        with locked(self.db):
            sent, size = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(text AS BLOB))), 0) FROM messages"
                " WHERE claw = ? AND created_at >= ? AND direction = 'out'",
                [claw, to_iso(day_start(now))],
            ).fetchone()
            (backlog,) = self.db.execute(
                "SELECT COUNT(*) FROM messages"
                " WHERE claw = ? AND delivered = 0 AND direction = 'out'",
                [claw],
            ).fetchone()
        return MessageUsage(int(sent), int(size), int(backlog))

    def last_activity_by_claw(self) -> dict[str, str]:
        """Each claw's newest message time (ISO), in one query. A subquery
        per claw: SQLite answers each MAX from the end of the (claw,
        created_at) index, where a GROUP BY would read every message."""
        with locked(self.db):
            rows = self.db.execute(
                "SELECT name, (SELECT MAX(created_at) FROM messages WHERE claw = claws.name)"
                " FROM claws"
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows if r[1] is not None}

    def count_before(self, claw: str, before: datetime) -> int:
        """How many of ``claw``'s messages were created before ``before``."""
        with locked(self.db):
            row = self.db.execute(
                "SELECT COUNT(*) FROM messages WHERE claw = ? AND created_at < ?",
                [claw, to_iso(before)],
            ).fetchone()
        return int(row[0])

    def delete_before(self, claw: str, before: datetime) -> int:
        """Delete ``claw``'s messages created before ``before`` (both
        directions, delivered or not); returns how many went."""
        with transaction(self.db):
            cursor = self.db.execute(
                "DELETE FROM messages WHERE claw = ? AND created_at < ?", [claw, to_iso(before)]
            )
            return int(cursor.rowcount)

    def list(
        self, claw: str, limit: int = DEFAULT_LIMIT, since_id: int | None = None
    ) -> list[Message]:
        """Oldest first: the ``limit`` messages after ``since_id`` (a client
        catching up), or the newest ``limit`` (a fresh view of the history)."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"invalid limit {limit}", f"choose between 1 and {MAX_LIMIT}")
        with locked(self.db):
            if since_id is not None:
                rows = self.db.query(
                    "SELECT * FROM messages WHERE claw = ? AND id > ? ORDER BY id LIMIT ?",
                    [claw, since_id, limit],
                )
            else:
                rows = self.db.query(
                    "SELECT * FROM (SELECT * FROM messages WHERE claw = ?"
                    " ORDER BY id DESC LIMIT ?) ORDER BY id",
                    [claw, limit],
                )
            return [_to_message(row) for row in rows]

    def get(self, claw: str, message_id: int) -> Message | None:
        """One of ``claw``'s messages by id; None if ``claw`` has none by
        that id (another claw's message is not found either)."""
        with locked(self.db):
            rows = builtins.list(
                self.db.query(
                    "SELECT * FROM messages WHERE claw = ? AND id = ?", [claw, message_id]
                )
            )
        return _to_message(rows[0]) if rows else None

    def undelivered(self, claw: str, direction: str = "out") -> builtins.list[Message]:
        """Messages a channel still has to hand on, oldest first."""
        with locked(self.db):
            rows = self.db.query(
                "SELECT * FROM messages WHERE claw = ? AND direction = ? AND delivered = 0"
                " ORDER BY id LIMIT ?",
                [claw, direction, MAX_LIMIT],
            )
            return [_to_message(row) for row in rows]

    def mark_delivered(self, message_id: int) -> bool:
        """Mark one message delivered; False if there is no such message."""
        with transaction(self.db):
            cursor = self.db.execute("UPDATE messages SET delivered = 1 WHERE id = ?", [message_id])
            return cursor.rowcount == 1

    def delete_claw(self, claw: str) -> int:
        """Forget a destroyed claw's conversation (idempotent)."""
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM messages WHERE claw = ?", [claw]).rowcount)
