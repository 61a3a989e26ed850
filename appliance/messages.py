"""Messages a claw receives and sends, stored on the host per claw.

They live on the host (table ``messages``) so a conversation survives a
controller restart and a wipe of the VM, and so the channels (web chat,
Telegram, …) can deliver outgoing ones later: ``delivered`` says whether a
channel has handed a message on.

The text is untrusted (from a member or from the model) and is stored exactly
as received; whoever shows it escapes it (``appliance.textsafe.printable`` on
a terminal, HTML escaping in the panel).
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from appliance.errors import InvalidInput
from appliance.store.tx import locked, transaction, utc_now

DIRECTIONS = ("in", "out")  # in: to the claw; out: from the claw
KINDS = ("chat", "heartbeat", "schedule", "notice")
# A chat message this long is a paste or a runaway model; refusing it keeps one
# row from bloating every page of history and every channel's payload limit.
MAX_TEXT_BYTES = 64 * 1024
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
_CHANNEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Message:
    id: int
    claw: str
    direction: str
    channel: str
    sender: str
    kind: str
    text: str
    created_at: str
    delivered: bool


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


def check_text(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(
            f"the message is {size} bytes, the limit is {MAX_TEXT_BYTES}",
            "send a shorter message, or split it into several",
        )


def _check(direction: str, channel: str, kind: str, sender: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidInput(f"invalid message direction {direction!r}", "use 'in' or 'out'")
    if kind not in KINDS:
        raise InvalidInput(f"invalid message kind {kind!r}", "use one of " + ", ".join(KINDS))
    if not _CHANNEL.match(channel):
        raise InvalidInput(
            f"invalid channel name {channel!r}",
            "use 1-32 lowercase letters, digits, '-' or '_', e.g. 'cli' or 'telegram'",
        )
    if not sender or len(sender) > 200:
        raise InvalidInput("a message needs a sender of at most 200 characters", "name who sent it")


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
        _check(direction, channel, kind, sender)
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
