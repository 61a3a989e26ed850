"""What a claw may spend on models: allowlist, budgets, rate — pure rules.

Nothing here does I/O. The gateway asks these functions before forwarding a
call and gets back either nothing (go ahead) or a ``Denial`` it turns into an
OpenAI-shaped error, so the claw's own ``openai`` client raises the usual
exception (``PermissionDeniedError``, ``RateLimitError``) with our message.

Periods are UTC calendar days and months: "daily budget" means "since 00:00
UTC today", which is what an operator can check against a provider invoice.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "month"]


@dataclass(frozen=True)
class ClawPolicy:
    """Limits for one claw. ``None`` means "no limit" for that dimension.

    ``models`` holds exact names or shell-style patterns (``gpt-4o*``); an
    empty tuple allows nothing, ``("*",)`` allows whatever the upstream has.
    """

    models: tuple[str, ...] = ("*",)
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost_usd: float | None = None
    monthly_cost_usd: float | None = None
    requests_per_minute: int | None = 60


@dataclass(frozen=True)
class Price:
    """USD per million tokens, as providers publish them."""

    prompt_per_million: float
    completion_per_million: float


@dataclass(frozen=True)
class Totals:
    """What a claw used in one period."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Denial:
    """Why a call is refused, in the terms of the OpenAI error body."""

    status: int
    code: str
    type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


def model_allowed(policy: ClawPolicy, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in policy.models)


def exact_models(policy: ClawPolicy) -> list[str]:
    """The allowlist entries that name one model (no pattern characters)."""
    return [m for m in policy.models if not any(ch in m for ch in "*?[")]


def has_patterns(policy: ClawPolicy) -> bool:
    return len(exact_models(policy)) != len(policy.models)


def check_model(claw: str, policy: ClawPolicy, model: str) -> Denial | None:
    if model_allowed(policy, model):
        return None
    allowed = ", ".join(policy.models) if policy.models else "none"
    return Denial(
        403,
        "model_not_allowed",
        "invalid_request_error",
        f"claw {claw!r} may not use model {model!r}; allowed models: {allowed}",
    )


def period_start(now: datetime, period: Period) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def next_period_start(now: datetime, period: Period) -> datetime:
    start = period_start(now, period)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def _resets(now: datetime, period: Period) -> str:
    if period == "day":
        return "resets at 00:00 UTC"
    return f"resets on {next_period_start(now, 'month'):%Y-%m-%d} at 00:00 UTC"


def check_budget(
    claw: str, policy: ClawPolicy, day: Totals, month: Totals, now: datetime
) -> Denial | None:
    """Refuse once a period's usage has reached its budget.

    The check is made before a call, so the call that crosses the line is
    allowed to finish: a budget can be overshot by at most one call per
    concurrent request, never by a stream of calls.
    """
    checks: list[tuple[Period, Totals, str, float | None, float]] = [
        ("day", day, "tokens", policy.daily_tokens, day.tokens),
        ("day", day, "USD", policy.daily_cost_usd, day.cost_usd),
        ("month", month, "tokens", policy.monthly_tokens, month.tokens),
        ("month", month, "USD", policy.monthly_cost_usd, month.cost_usd),
    ]
    for period, _totals, unit, limit, used in checks:
        if limit is None or used < limit:
            continue
        word = "daily" if period == "day" else "monthly"
        amount = f"{limit:g} tokens" if unit == "tokens" else f"${limit:.2f}"
        return Denial(
            429,
            "insufficient_quota",
            "insufficient_quota",
            f"claw {claw!r} used its {word} budget of {amount}; {_resets(now, period)}",
            # Waiting seconds will not help: tell the openai client not to retry.
            {"x-should-retry": "false"},
        )
    return None


def cost_usd(
    prices: Mapping[str, Price], model: str, prompt_tokens: int, completion_tokens: int
) -> tuple[float, str | None]:
    """The call's cost, and a note when the model has no price (cost 0 then).

    An unpriced model costs nothing against cost budgets, so the note makes
    the gap visible in the usage table instead of silently under-counting.
    """
    price = prices.get(model)
    if price is None:
        return 0.0, f"no price configured for model {model!r}"
    cost = (
        prompt_tokens * price.prompt_per_million + completion_tokens * price.completion_per_million
    ) / 1_000_000
    return cost, None


class RateLimiter:
    """Sliding one-minute window of admitted calls per claw, in memory.

    In memory on purpose: a rate limit protects the next few seconds, and a
    restarted controller forgetting it is harmless (budgets, which must
    survive restarts, come from the database).
    """

    WINDOW_S = 60.0

    def __init__(self) -> None:
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, claw: str, limit: int | None, now_s: float) -> Denial | None:
        if limit is None:
            return None
        with self._lock:
            calls = self._calls.setdefault(claw, deque())
            while calls and calls[0] <= now_s - self.WINDOW_S:
                calls.popleft()
            if len(calls) < limit:
                calls.append(now_s)
                return None
            retry_after = max(1, int(calls[0] + self.WINDOW_S - now_s) + 1)
        return Denial(
            429,
            "rate_limit_exceeded",
            "requests",
            f"claw {claw!r} exceeded its rate limit of {limit} requests per minute; "
            f"retry in {retry_after} s",
            {"retry-after": str(retry_after)},
        )
