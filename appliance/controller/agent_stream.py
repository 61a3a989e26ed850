"""Reading the warm agent's answer as it streams (appliance/guest/warm.py).

The agent writes JSON lines: a hello, then ``{"delta": TEXT}`` pieces while
its model streams, then one final reply or error object. This reader is fed
the bytes as they arrive from the channel and only sorts lines: what a
final object means is the delivery's business (delivery.py). Everything is
untrusted — a compromised guest wrote it — so the total is capped, every
line must be JSON, a piece must be exactly ``{"delta": str}``, and nothing
may follow the final line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from appliance.channel.exec import OutputFull

HELLO = "clawden-agent"


class StreamError(Exception):
    """The agent's lines broke the protocol; the message says how."""


class AgentStream:
    def __init__(self, on_text: Callable[[str], None] | None, max_bytes: int) -> None:
        self.on_text = on_text
        self.max_bytes = max_bytes
        self.hello = False
        self.final: Any = None
        self.has_final = False
        self._size = 0
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes from the channel (raises to abandon the command)."""
        self._size += len(chunk)
        if self._size > self.max_bytes:
            raise OutputFull
        self._buf += chunk
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._line(line)

    def finish(self) -> None:
        """The channel closed: a last line without its newline still counts."""
        rest, self._buf = bytes(self._buf), bytearray()
        self._line(rest)

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        if self.has_final:
            raise StreamError("a line after the final reply")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise StreamError("a line that is not UTF-8 JSON") from None
        if not self.hello:
            if not (isinstance(data, dict) and data.get("hello") == HELLO):
                raise StreamError("no hello first")
            self.hello = True
            return
        if isinstance(data, dict) and set(data) == {"delta"}:
            if not isinstance(data["delta"], str):
                raise StreamError("a piece whose text is not a string")
            if self.on_text is not None:
                self.on_text(data["delta"])
            return
        self.final, self.has_final = data, True
