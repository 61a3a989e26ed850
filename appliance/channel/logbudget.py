"""A per-claw budget for the controller's log.

Much of what the controller logs is caused by a claw (a malformed request, a
refused connection, a handler failing on odd input), and the claw is assumed
compromised: it must not be able to fill the host's disk or bury the lines
that matter. Every line emitted while serving a claw's forwarded connection
is attributed to that claw (``serving_claw`` sets it for the serving thread;
``extra={"claw": name}`` names it explicitly elsewhere), and
``ClawLogBudget`` lets at most ``lines`` of them through per claw per
``window_s``, with at most ``tracebacks`` full tracebacks among them (the rest
keep their one line and lose the traceback). What was dropped is summed up in
one line, "claw x: N log lines suppressed", when the window has passed.

Lines not attributed to a claw (the controller's own) are never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

LINES_PER_WINDOW = 30
WINDOW_S = 60.0
TRACEBACKS_PER_WINDOW = 1

# Which claw the current thread is serving (each forwarded connection has its
# own thread, and a new thread starts with this unset).
current_claw: ContextVar[str | None] = ContextVar("clawden_current_claw", default=None)

_VERDICT = "_clawden_log_budget"  # set on a record once decided, for the next handler
_SUMMARY = "_clawden_log_summary"

log = logging.getLogger(__name__)


@contextmanager
def serving_claw(name: str) -> Iterator[None]:
    """Attribute what this thread logs to claw ``name`` until the block ends."""
    token = current_claw.set(name)
    try:
        yield
    finally:
        current_claw.reset(token)


def claw_of(record: logging.LogRecord) -> str | None:
    named = record.__dict__.get("claw")
    return named if isinstance(named, str) else current_claw.get()


@dataclass
class _Window:
    start: float
    lines: int = 0
    tracebacks: int = 0
    suppressed: int = 0


class ClawLogBudget(logging.Filter):
    """A filter for the controller's log handlers (one instance shared by all
    of them: a record is decided once and every handler gets the same answer)."""

    def __init__(
        self,
        lines: int = LINES_PER_WINDOW,
        window_s: float = WINDOW_S,
        tracebacks: int = TRACEBACKS_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.lines = lines
        self.window_s = window_s
        self.tracebacks = tracebacks
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = record.__dict__.get(_VERDICT)
        if isinstance(decided, bool):
            return decided
        if record.__dict__.get(_SUMMARY):
            return True
        claw = claw_of(record)
        with self._lock:
            due = self._roll(self._clock())
            verdict = claw is None or self._admit(claw, record)
        record.__dict__[_VERDICT] = verdict
        for name, count in due:
            self._summarise(name, count)
        return verdict

    def flush(self) -> None:
        """Write the summaries of windows that ended (e.g. before shutting down)."""
        with self._lock:
            due = self._roll(float("inf"))
        for name, count in due:
            self._summarise(name, count)

    def _admit(self, claw: str, record: logging.LogRecord) -> bool:
        window = self._windows.setdefault(claw, _Window(self._clock()))
        if window.lines >= self.lines:
            window.suppressed += 1
            return False
        window.lines += 1
        if record.exc_info or record.exc_text:
            if window.tracebacks >= self.tracebacks:
                _strip_traceback(record)
            else:
                window.tracebacks += 1
        return True

    def _roll(self, now: float) -> list[tuple[str, int]]:
        due = []
        for name, window in list(self._windows.items()):
            if now - window.start >= self.window_s:
                if window.suppressed:
                    due.append((name, window.suppressed))
                del self._windows[name]
        return due

    def _summarise(self, claw: str, count: int) -> None:
        log.warning(
            "claw %s: %d log lines suppressed (at most %d per claw per %g s)",
            claw,
            count,
            self.lines,
            self.window_s,
            extra={_SUMMARY: True, "claw": claw},
        )


def _strip_traceback(record: logging.LogRecord) -> None:
    kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else "error"
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    record.msg = f"{message} ({kind}; traceback suppressed: this claw already had one logged)"
    record.args = None
    record.exc_info = None
    record.exc_text = None
    record.stack_info = None
