"""The ``messages`` table: a claw's conversation, stored on the host (see
``appliance.core.messages`` for the rules)."""

from __future__ import annotations

import builtins
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import InvalidInput
from appliance.core.messages import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Message,
    check_fields,
    check_text,
)
from appliance.store.tx import locked, transaction, utc_now


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
    def __init__(self, db: Database) -> None:
        self.db = db

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
        created_at = utc_now() if created_at is None else created_at
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
