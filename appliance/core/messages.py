"""Messages a claw receives and sends, stored on the host per claw.

They live on the host (table ``messages``) so a conversation survives a
controller restart and a wipe of the VM, and so the channels (web chat,
Telegram, …) can deliver outgoing ones later: ``delivered`` says whether a
channel has handed a message on.

The text is untrusted (from a member or from the model) and is stored exactly
as received; whoever shows it escapes it (``appliance.core.textsafe.printable`` on
a terminal, HTML escaping in the panel).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.core.errors import InvalidInput

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


def text_bytes(text: str) -> int:
    """The size the message takes in the store (UTF-8)."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_text(text: str) -> None:
    size = text_bytes(text)
    if size > MAX_TEXT_BYTES:
        raise InvalidInput(
            f"the message is {size} bytes, the limit is {MAX_TEXT_BYTES}",
            "send a shorter message, or split it into several",
        )


def check_fields(direction: str, channel: str, kind: str, sender: str) -> None:
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


def parse_cutoff(text: str) -> datetime:
    """``--purge-before``: an ISO date (``2026-01-31``, midnight UTC) or
    date-time (``2026-01-31T18:00``; UTC unless it carries an offset)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"invalid date {text!r}",
            "give an ISO date such as 2026-01-31 or a UTC date-time such as 2026-01-31T18:00",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
