"""The controller's recent warnings, in memory, for the admin's dashboard.

A ``logging.Handler`` that keeps the last ``capacity`` WARNING-or-worse
lines, formatted, tracebacks left out (the rotating log file has them). It
sits behind the per-claw log budget like every other handler
(``appliance/app.py: controller_logging``), and on top of that keeps at most
``per_claw`` lines attributed to any one claw, so a claw that makes the host
complain cannot push the controller's own warnings out of view. The lines
are hostile text (a claw's input can end up in a message): the panel shows
them escaped.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from datetime import UTC, datetime

from appliance.channel.logbudget import claw_of

CAPACITY = 50
PER_CLAW = 10
MAX_LINE_CHARS = 500


class WarningRing(logging.Handler):
    def __init__(self, capacity: int = CAPACITY, per_claw: int = PER_CLAW) -> None:
        super().__init__(logging.WARNING)
        self._lines: deque[tuple[str | None, str]] = deque()
        self._capacity = capacity
        self._per_claw = per_claw
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
            text = f"{when} {record.levelname} {record.name}: {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            self.handleError(record)
            return
        if len(text) > MAX_LINE_CHARS:
            text = text[: MAX_LINE_CHARS - 1] + "…"
        claw = claw_of(record)
        with self._guard:
            if claw is not None:
                mine = [i for i, (c, _) in enumerate(self._lines) if c == claw]
                if len(mine) >= self._per_claw:
                    del self._lines[mine[0]]
            self._lines.append((claw, text))
            while len(self._lines) > self._capacity:
                self._lines.popleft()

    def recent(self) -> list[str]:
        """The kept lines, newest first."""
        with self._guard:
            return [text for _, text in reversed(self._lines)]
