"""What a claw may spend on models: allowlist, budgets, rate — pure rules.

Nothing here does I/O. The gateway asks these functions before forwarding a
call and gets back either nothing (go ahead) or a ``Denial`` it turns into an
OpenAI-shaped error, so the claw's own ``openai`` client raises the usual
exception (``PermissionDeniedError``, ``RateLimitError``) with our message.

Budgets are enforced by *reservation*: before a call is forwarded, its worst
case (``worst_case``: a bound on the prompt plus the completion cap) is
reserved in the store, in the same transaction that reads what the claw has
used and reserved so far and asks ``check_admission``; afterwards the
reservation is replaced by the real usage. So concurrent calls see each
other, and a budget is overshot by at most one call.

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


DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONCURRENT_REQUESTS = 2


@dataclass(frozen=True)
class ClawPolicy:
    """Limits for one claw. ``None`` budgets mean "no limit" for that dimension.

    ``models`` holds exact names or shell-style patterns (``gpt-4o*``); an
    empty tuple allows nothing, ``("*",)`` allows whatever the upstream has.
    ``None`` (the default) means "the provider's ``default_model``", which
    ``LlmConfig.policy_for`` resolves — to nothing when none is configured.

    ``max_tokens`` caps every call's completion (``max_tokens`` and
    ``max_completion_tokens`` are lowered to it, and set to it when the claw
    sends neither); ``concurrent_requests`` is how many calls may be in
    flight at once. Neither can be unlimited.
    """

    models: tuple[str, ...] | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost_usd: float | None = None
    monthly_cost_usd: float | None = None
    requests_per_minute: int | None = 60
    max_tokens: int = DEFAULT_MAX_TOKENS
    concurrent_requests: int = DEFAULT_CONCURRENT_REQUESTS

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.models or ()


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
    param: str | None = None  # the request field at fault, as OpenAI names it


def model_allowed(policy: ClawPolicy, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in policy.allowed)


def exact_models(policy: ClawPolicy) -> list[str]:
    """The allowlist entries that name one model (no pattern characters)."""
    return [m for m in policy.allowed if not any(ch in m for ch in "*?[")]


def has_patterns(policy: ClawPolicy) -> bool:
    return len(exact_models(policy)) != len(policy.allowed)


def check_model(
    claw: str, policy: ClawPolicy, model: str, provider: str | None = None
) -> Denial | None:
    """Refuse a model outside the allowlist; with an empty allowlist, say
    which ``llm.toml`` setting the operator has to add (``provider`` names
    the ``[providers.*]`` table, if the upstream came from the file)."""
    if model_allowed(policy, model):
        return None
    if not policy.allowed:
        where = f'default_model = "<model>" under [providers.{provider}], or ' if provider else ""
        return Denial(
            403,
            "model_not_allowed",
            "invalid_request_error",
            f"claw {claw!r} may not use any model: the host configures none. The operator "
            f'must add {where}models = ["<model>"] under [policy] or [claws.{claw}] '
            "in llm.toml",
            param="model",
        )
    allowed = ", ".join(policy.allowed)
    return Denial(
        403,
        "model_not_allowed",
        "invalid_request_error",
        f"claw {claw!r} may not use model {model!r}; allowed models: {allowed}",
        param="model",
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


def _limits(
    policy: ClawPolicy, day: Totals, month: Totals, pending: Totals
) -> list[tuple[Period, str, float | None, float, float]]:
    """(period, unit, limit, used, reserved) for each budget dimension."""
    return [
        ("day", "tokens", policy.daily_tokens, day.tokens, pending.tokens),
        ("day", "USD", policy.daily_cost_usd, day.cost_usd, pending.cost_usd),
        ("month", "tokens", policy.monthly_tokens, month.tokens, pending.tokens),
        ("month", "USD", policy.monthly_cost_usd, month.cost_usd, pending.cost_usd),
    ]


def _amount(unit: str, limit: float) -> str:
    return f"{limit:g} tokens" if unit == "tokens" else f"${limit:.2f}"


def check_budget(
    claw: str, policy: ClawPolicy, day: Totals, month: Totals, now: datetime
) -> Denial | None:
    """Refuse once a period's recorded usage has reached its budget.

    This alone lets the call that crosses the line finish; it is the calls
    *in flight* (see ``check_admission``) that keep concurrent calls from
    crossing it together.
    """
    for period, unit, limit, used, _reserved in _limits(policy, day, month, Totals()):
        if limit is None or used < limit:
            continue
        word = "daily" if period == "day" else "monthly"
        amount = _amount(unit, limit)
        return Denial(
            429,
            "insufficient_quota",
            "insufficient_quota",
            f"claw {claw!r} used its {word} budget of {amount}; {_resets(now, period)}",
            # Waiting seconds will not help: tell the openai client not to retry.
            {"x-should-retry": "false"},
        )
    return None


@dataclass(frozen=True)
class Ledger:
    """What the store knows about a claw when a call asks to go ahead:
    recorded usage today and this month, and the worst cases reserved by its
    calls still in flight (``pending.requests`` is how many there are)."""

    day: Totals
    month: Totals
    pending: Totals


# A call waiting for another to finish is worth retrying soon; the openai
# client honours Retry-After by itself.
RETRY_AFTER_S = 1


def check_admission(claw: str, policy: ClawPolicy, ledger: Ledger, now: datetime) -> Denial | None:
    """May one more call go ahead, given what is used and reserved?

    * a budget already used up: 429 ``insufficient_quota`` (wait for the period);
    * ``concurrent_requests`` calls already in flight: 429, retry shortly;
    * a budget not used up, but reserved by the calls in flight: 429, retry
      shortly (the calls may finish using less than they reserved).

    A call is admitted while used + reserved is below every budget, and then
    reserves its own worst case. Whatever order calls finish in, the total
    recorded can exceed a budget by at most the last admitted call's usage,
    which its reservation bounds.
    """
    denial = check_budget(claw, policy, ledger.day, ledger.month, now)
    if denial is not None:
        return denial
    if ledger.pending.requests >= policy.concurrent_requests:
        return Denial(
            429,
            "too_many_concurrent_requests",
            "requests",
            f"claw {claw!r} already has {ledger.pending.requests} model calls in flight "
            f"(at most {policy.concurrent_requests}); retry when one finishes",
            {"retry-after": str(RETRY_AFTER_S)},
        )
    for period, unit, limit, used, reserved in _limits(
        policy, ledger.day, ledger.month, ledger.pending
    ):
        if limit is None or used + reserved < limit:
            continue
        word = "daily" if period == "day" else "monthly"
        return Denial(
            429,
            "budget_reserved",
            "requests",
            f"claw {claw!r} has calls in flight that may use the rest of its {word} budget "
            f"of {_amount(unit, limit)}; retry when they finish",
            {"retry-after": str(RETRY_AFTER_S)},
        )
    return None


def worst_case(
    prices: Mapping[str, Price], model: str, prompt_bound: int, completion_cap: int
) -> tuple[int, float]:
    """The tokens and cost one call can use at most: what is reserved for it.
    An unpriced model reserves no cost (as it records none)."""
    cost, _note = cost_usd(prices, model, prompt_bound, completion_cap)
    return prompt_bound + completion_cap, cost


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
