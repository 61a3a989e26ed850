"""Quotas on what a claw can make the host store — pure rules.

A claw is assumed compromised, and almost everything it can do through its
host API leaves a row in the host's database: a message to its owner, an
approval request (with its audit entry), a scheduled job, an LLM call. Each
has a limit, so a looping or hostile claw cannot grow the database, or bury
its owner, faster than a small known rate. docs/security.md has the table
(limit, value, threat it answers).

Nothing here does I/O. The store counts in the same transaction as the insert
(so parallel requests cannot slip past a limit together) and calls these
checks, which raise ``OverQuota``; the host API turns that into a 429 with
``Retry-After`` and the message below, which the claw's model reads.

The message *rate* is a token bucket in memory, like the LLM gateway's
``llm_policy.RateLimiter``: it protects the next minutes, and a restarted
controller forgetting it is harmless (a claw cannot restart the controller).
The daily, hourly and backlog limits are counted in the database and survive
restarts.

A refusal is never stored row by row (no message, no audit entry): a flood of
refused requests must not grow the database. ``Refusals`` counts them in
memory and says when a log line is due, at most one per claw a minute.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.core.approvals import MAX_PENDING_PER_CLAW
from appliance.core.errors import OverQuota
from appliance.core.llm_policy import next_period_start, period_start

# ---- defaults, and the threat each answers ---------------------------------------
# A claw sent 300 messages in 4 s: its own messages are for one person to read,
# so a person's pace is the limit (sustained: at most 14,400 rows a day) …
MESSAGES_PER_MINUTE = 10
# … with room for a short burst after a quiet spell (a digest in a few parts).
MESSAGE_BURST = 20
# 64 KiB messages at 33 a second grew the database by ~2 MB/s; even at the rate
# above that would be 900 MiB a day. Counted per UTC day over every message the
# claw wrote (its own, and its replies to jobs and to you).
MESSAGE_BYTES_PER_DAY = 1024 * 1024
# Messages nobody has had delivered yet: past this many the claw writes into a
# void and rows pile up until a channel (or `claw messages --purge-before`)
# clears them.
MESSAGE_BACKLOG = 200
BACKLOG_RETRY_S = 300  # delivery is up to the channels; look again in a while
# Asking again as requests expire (5 pending at a time) made ~43,000 rows a day,
# each with an audit entry; a person answers a few an hour at most.
APPROVALS_PER_HOUR = 20
APPROVAL_WINDOW = timedelta(hours=1)
# Every job is a model call waiting to happen; the operator has no such limit.
MAX_CLAW_JOBS = 32
# Every request a claw sends its host services (all of them together) is paced
# to this rate after a burst: a claw answered at once with a refusal could
# otherwise ask again as fast as its CPU allows, and every request — refused
# or not — takes the controller's time and its one database lock from the
# other claws (one claw's flood made another's requests 2-10x slower).
# An agent makes a request per model call or tool call: a few a second at most.
REQUESTS_PER_SECOND = 10.0
REQUEST_BURST = 40
# Connections (SSH channel opens) a claw's transport takes per second, after a
# burst of as many as it may hold open (channel/guard.py): an agent opens one
# per request; a claw opening and closing them in a loop slowed others 2-4x.
CHANNEL_OPENS_PER_SECOND = 20.0


@dataclass(frozen=True)
class Quotas:
    """The limits for one claw; every claw has ``DEFAULT_QUOTAS`` today (this
    is the one place a per-claw setting would come in)."""

    messages_per_minute: float = MESSAGES_PER_MINUTE
    message_burst: int = MESSAGE_BURST
    message_bytes_per_day: int = MESSAGE_BYTES_PER_DAY
    message_backlog: int = MESSAGE_BACKLOG
    approvals_per_hour: int = APPROVALS_PER_HOUR
    approvals_pending: int = MAX_PENDING_PER_CLAW

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"quota {name} must be positive, not {value!r}")


DEFAULT_QUOTAS = Quotas()


@dataclass(frozen=True)
class MessageUsage:
    """What a claw wrote today (UTC) and how much of it waits undelivered."""

    sent_today: int
    bytes_today: int
    backlog: int


def day_start(now: datetime) -> datetime:
    """00:00 UTC of ``now``'s day: where "today" begins for the daily limits."""
    return period_start(now, "day")


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def check_message(quotas: Quotas, usage: MessageUsage, size: int, now: datetime) -> None:
    """May the claw store one more message of ``size`` bytes? ``OverQuota`` if not."""
    if usage.backlog >= quotas.message_backlog:
        raise OverQuota(
            f"{usage.backlog} of your messages are still waiting to be delivered to your "
            f"owner; the limit is {quotas.message_backlog}",
            f"send nothing more until they have been delivered; try again in {BACKLOG_RETRY_S} s",
            quota="messages.backlog",
            retry_after_s=BACKLOG_RETRY_S,
        )
    limit = quotas.message_bytes_per_day
    left = limit - usage.bytes_today
    if size > left:
        wait = _seconds_until(next_period_start(now, "day"), now)
        if left <= 0:
            what = (
                f"you sent {usage.bytes_today} bytes of messages today; the limit is {limit} a day"
            )
            fix = f"wait {wait} s (until 00:00 UTC) before sending another"
        else:
            what = f"this message is {size} bytes and {left} of your {limit} bytes a day are left"
            fix = f"send at most {left} bytes, or wait {wait} s (until 00:00 UTC)"
        raise OverQuota(what, fix, quota="messages.bytes_per_day", retry_after_s=wait)


def check_approval_rate(quotas: Quotas, asked: Sequence[datetime], now: datetime) -> None:
    """``asked``: when the claw's requests of the last hour were made."""
    recent = sorted(t for t in asked if t > now - APPROVAL_WINDOW)
    limit = quotas.approvals_per_hour
    if len(recent) < limit:
        return
    # Asking succeeds again once enough of these are an hour old.
    frees = recent[len(recent) - limit] + APPROVAL_WINDOW
    wait = _seconds_until(frees, now)
    raise OverQuota(
        f"you asked for {len(recent)} approvals in the last hour; the limit is {limit} an hour",
        f"wait {wait} s before asking again, and ask only for what you cannot do without",
        quota="approvals.per_hour",
        retry_after_s=wait,
    )


class MessageRate:
    """A token bucket per claw, in memory: ``burst`` messages at once, then
    ``per_minute`` a minute. Thread-safe; ``now_s`` is any monotonic-enough
    clock in seconds (the caller's, so tests inject it)."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: float, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # claw -> (tokens, at)
        self._sent: dict[str, deque[float]] = {}  # admitted in the last minute, for the message
        self._lock = threading.Lock()

    def admit(self, claw: str, now_s: float) -> None:
        with self._lock:
            tokens, at = self._buckets.get(claw, (float(self.burst), now_s))
            tokens = min(float(self.burst), tokens + max(0.0, now_s - at) * self.per_minute / 60)
            sent = self._sent.setdefault(claw, deque())
            while sent and sent[0] <= now_s - self.WINDOW_S:
                sent.popleft()
            if tokens >= 1.0:
                self._buckets[claw] = (tokens - 1.0, now_s)
                sent.append(now_s)
                return
            self._buckets[claw] = (tokens, now_s)
            # Float noise must not turn an exact 6 s into 7.
            wait = max(1, math.ceil((1.0 - tokens) * 60 / self.per_minute - 1e-9))
            count = len(sent)
        raise OverQuota(
            f"you sent {count} messages in the last minute; the limit is "
            f"{self.per_minute:g} a minute, with bursts of up to {self.burst}",
            f"wait {wait} s before sending another",
            quota="messages.rate",
            retry_after_s=wait,
        )


class Pacer:
    """Spaces each claw's requests to ``per_second`` on average once a burst
    of ``burst`` is spent (GCRA, the "virtual scheduling" form). Nothing is
    refused: ``delay`` books the request's turn and says how long to wait for
    it, so a flooding claw's requests queue behind each other — the wait is
    bounded by the claw's own cap on open connections — while costing the
    host no CPU. Thread-safe; ``now_s`` is a monotonic clock in seconds."""

    def __init__(self, per_second: float = REQUESTS_PER_SECOND, burst: int = REQUEST_BURST):
        if per_second <= 0 or burst < 1:
            raise ValueError("a pacer needs a positive rate and a burst of at least 1")
        self.per_second = per_second
        self.burst = burst
        self._interval = 1.0 / per_second
        self._tolerance = (burst - 1) * self._interval
        self._next: dict[str, float] = {}  # claw -> theoretical arrival time
        self._lock = threading.Lock()

    def delay(self, claw: str, now_s: float) -> float:
        """Seconds the claw's request arriving at ``now_s`` should wait."""
        with self._lock:
            due = max(self._next.get(claw, now_s), now_s)
            start = max(now_s, due - self._tolerance)
            self._next[claw] = due + self._interval
        return start - now_s


class Refusals:
    """Refused requests per claw and quota, counted in memory (never stored
    row by row), and when a log line about them is due: at most one per claw
    per ``LOG_EVERY_S``, summing up what was refused since the last one."""

    LOG_EVERY_S = 60.0
    # Recent refusals per claw kept for ``recent`` (the panel's "throttled"
    # line): bounded, so a flood costs a fixed amount of memory.
    RECENT_KEPT = 2000

    def __init__(self) -> None:
        self._totals: dict[str, Counter[str]] = {}
        self._recent: dict[str, deque[tuple[float, str]]] = {}
        self._unreported: dict[str, Counter[str]] = {}
        self._last_line: dict[str, float] = {}
        self._lock = threading.Lock()

    def count(self, claw: str, quota: str, now_s: float) -> str | None:
        """Count one refusal; the log line to write now, if one is due."""
        with self._lock:
            self._totals.setdefault(claw, Counter())[quota] += 1
            recent = self._recent.setdefault(claw, deque(maxlen=self.RECENT_KEPT))
            recent.append((now_s, quota))
            self._unreported.setdefault(claw, Counter())[quota] += 1
            last = self._last_line.get(claw)
            if last is not None and 0 <= now_s - last < self.LOG_EVERY_S:
                return None
            self._last_line[claw] = now_s
            due = self._unreported.pop(claw)
        total = sum(due.values())
        detail = ", ".join(f"{quota} {n}" for quota, n in sorted(due.items()))
        plural = "" if total == 1 else "s"
        return (
            f"claw {claw}: refused {total} request{plural} over quota ({detail}); "
            f"at most one such line a minute"
        )

    def recent(self, prefix: str, since_s: float) -> dict[str, int]:
        """Per claw, how many refusals of quotas named ``prefix…`` since
        ``since_s`` (at most ``RECENT_KEPT`` each: "2000 or more")."""
        with self._lock:
            counts = {
                claw: sum(1 for at, quota in kept if at >= since_s and quota.startswith(prefix))
                for claw, kept in self._recent.items()
            }
        return {claw: n for claw, n in counts.items() if n}

    def totals(self) -> dict[str, dict[str, int]]:
        """Every refusal since the controller started, per claw and quota."""
        with self._lock:
            return {claw: dict(counts) for claw, counts in self._totals.items()}
