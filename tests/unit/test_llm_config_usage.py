"""Host LLM configuration, the pure policy rules, and the usage store."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from appliance.cli.llm import llm_usage_lines
from appliance.core.llm_policy import (
    ClawPolicy,
    Denial,
    Ledger,
    Price,
    RateLimiter,
    Totals,
    check_admission,
    check_budget,
    check_model,
    next_period_start,
    worst_case,
)
from appliance.core.llm_request import (
    NON_TEXT_PART_TOKENS,
    ChatRequest,
    model_name_problem,
    parse_chat_request,
    preview,
)
from appliance.llm.config import ConfigLoader, LlmConfigError, load_llm_config
from appliance.store import open_db
from appliance.store.usage import UsageRepository

KEY = "sk-config-secret-123456"
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)


def _write(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / "llm.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_environment_gives_the_upstream_and_repr_hides_the_key(tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1/", "OPENAI_API_KEY": KEY}
    config = load_llm_config(tmp_path, env)
    assert config.upstream is not None
    assert config.upstream.base_url == "http://127.0.0.1:11434/v1"
    assert config.upstream.api_key == KEY
    assert KEY not in repr(config) and KEY not in str(config.upstream)


def test_nothing_configured_means_no_upstream(tmp_path: Path) -> None:
    assert load_llm_config(tmp_path, {}).upstream is None


def test_file_with_named_provider_prices_and_policies(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
provider = "router"
[providers.router]
base_url = "https://user:pw@openrouter.example/api/v1"
api_key_env = "ROUTER_KEY"
[providers.local]
base_url = "http://127.0.0.1:8080/v1"
[prices."gpt-4o-mini"]
prompt_per_million = 0.15
completion_per_million = 0.6
[policy]
models = ["gpt-4o-mini"]
daily_tokens = 200000
[claws.alice]
models = ["gpt-4o*"]
monthly_cost_usd = 5
""",
        mode=0o644,  # no key in the file: readable is fine
    )
    config = load_llm_config(tmp_path, {"ROUTER_KEY": KEY})
    assert config.upstream is not None and config.upstream.api_key == KEY
    assert "pw" not in repr(config.upstream)
    assert config.prices["gpt-4o-mini"].completion_per_million == 0.6
    assert config.policy_for("bob") == ClawPolicy(models=("gpt-4o-mini",), daily_tokens=200000)
    alice = config.policy_for("alice")
    assert (alice.models, alice.daily_tokens, alice.monthly_cost_usd) == (("gpt-4o*",), 200000, 5)


def test_a_key_in_a_readable_file_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f'[providers.openai]\nbase_url = "https://api.openai.com/v1"\napi_key = "{KEY}"\n',
        mode=0o640,
    )
    with pytest.raises(LlmConfigError) as info:
        load_llm_config(tmp_path, {})
    assert f"chmod 600 {path}" in info.value.fix
    assert KEY not in str(info.value)
    os.chmod(path, 0o600)
    config = load_llm_config(tmp_path, {})
    assert config.upstream is not None and config.upstream.api_key == KEY


def test_typos_and_missing_keys_are_errors(tmp_path: Path) -> None:
    _write(tmp_path, "[policy]\ndaily_token = 5\n")
    with pytest.raises(LlmConfigError, match="unknown keys"):
        load_llm_config(tmp_path, {})
    _write(tmp_path, '[providers.x]\nbase_url = "https://h/v1"\napi_key_env = "NOPE"\n')
    with pytest.raises(LlmConfigError, match=r"\$NOPE, which is not set"):
        load_llm_config(tmp_path, {})


def test_the_loader_rereads_a_changed_file(tmp_path: Path) -> None:
    loader = ConfigLoader(tmp_path, {})
    assert loader().default_policy.daily_tokens is None
    _write(tmp_path, "[policy]\ndaily_tokens = 7\n")
    assert loader().default_policy.daily_tokens == 7


def test_model_patterns_and_refusal_message() -> None:
    policy = ClawPolicy(models=("gpt-4o*", "llama3"))
    assert check_model("a", policy, "gpt-4o-mini") is None
    denial = check_model("a", policy, "o1")
    assert denial is not None and denial.status == 403 and "gpt-4o*, llama3" in denial.message
    assert check_model("a", ClawPolicy(models=()), "x") is not None


def test_budgets_per_period() -> None:
    policy = ClawPolicy(daily_tokens=100, monthly_cost_usd=1.0)
    assert check_budget("a", policy, Totals(1, 50, 49), Totals(), NOW) is None
    day = check_budget("a", policy, Totals(1, 50, 50), Totals(), NOW)
    assert day is not None and day.code == "insufficient_quota" and "daily" in day.message
    month = check_budget("a", policy, Totals(), Totals(cost_usd=1.0), NOW)
    assert month is not None and "resets on 2025-04-01 at 00:00 UTC" in month.message
    assert next_period_start(datetime(2025, 12, 31, 23, tzinfo=UTC), "month").year == 2026


def test_rate_limiter_slides() -> None:
    limiter = RateLimiter()
    assert limiter.admit("a", 2, 0.0) is None and limiter.admit("a", 2, 1.0) is None
    denial = limiter.admit("a", 2, 2.0)
    assert denial is not None and denial.headers["retry-after"] == "59"
    assert limiter.admit("b", 2, 2.0) is None  # per claw
    assert limiter.admit("a", 2, 60.5) is None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_db(tmp_path / "clawden.db")
    yield database
    database.conn.close()


def test_totals_and_report_by_utc_period(db: Database) -> None:
    usage = UsageRepository(db, clock=lambda: NOW)
    usage.record("alice", "m", prompt_tokens=10, completion_tokens=5, cost_usd=0.5)
    usage.record(
        "alice", "m", prompt_tokens=1, completion_tokens=1, ts=datetime(2025, 3, 1, tzinfo=UTC)
    )
    usage.record("alice", "m", prompt_tokens=99, ts=datetime(2025, 2, 28, 23, 59, tzinfo=UTC))
    usage.record("bob", "x", prompt_tokens=3, note="no price configured for model 'x'")
    day, month = usage.period_totals("alice", NOW)
    assert day == Totals(1, 10, 5, 0.5)
    assert month == Totals(2, 11, 6, 0.5)
    [bob] = usage.report("bob", "month")
    assert (bob.period, bob.totals.prompt_tokens, bob.unpriced_calls) == ("2025-03", 3, 1)


def test_usage_lines_escape_names_and_say_when_empty(db: Database) -> None:
    assert list(llm_usage_lines(UsageRepository(db), "carol", NOW)) == [
        "no LLM calls recorded for claw 'carol' this month"
    ]
    UsageRepository(db).record("ev\x1bil", "m", prompt_tokens=4, ts=NOW)
    lines = list(llm_usage_lines(UsageRepository(db), None, NOW))
    assert lines[0].split() == ["CLAW", "PERIOD", "CALLS", "PROMPT", "COMPLETION", "COST", "USD"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["ev\\x1bil", "2025-03-15", "1"],
        ["ev\\x1bil", "2025-03", "1"],
    ]


# ---- closed by default ---------------------------------------------------------------
def test_the_default_policy_allows_the_providers_default_model_only(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
[providers.local]
base_url = "http://127.0.0.1:8080/v1"
default_model = "llama3.1:8b"
[claws.alice]
models = ["gpt-4o*", "llama3.1:8b"]
[claws.bob]
daily_tokens = 5
""",
    )
    config = load_llm_config(tmp_path, {})
    assert config.upstream is not None and config.upstream.default_models == ("llama3.1:8b",)
    assert config.policy_for("carol").models == ("llama3.1:8b",)
    assert config.policy_for("bob").models == ("llama3.1:8b",)  # overrides keep the default
    alice = config.policy_for("alice")
    assert alice.models == ("gpt-4o*", "llama3.1:8b")  # explicit lists and patterns still work
    assert check_model("alice", alice, "gpt-4o-mini") is None
    assert check_model("carol", config.policy_for("carol"), "gpt-4o-mini") is not None
    assert config.provider_table == "local"


def test_a_list_of_default_models(tmp_path: Path) -> None:
    _write(tmp_path, '[providers.x]\nbase_url = "https://h/v1"\ndefault_model = ["a", "b/c"]\n')
    assert load_llm_config(tmp_path, {}).policy_for("z").models == ("a", "b/c")


def test_without_a_default_model_nothing_is_allowed(tmp_path: Path) -> None:
    _write(tmp_path, '[providers.x]\nbase_url = "https://h/v1"\n')
    config = load_llm_config(tmp_path, {})
    policy = config.policy_for("alice")
    assert policy.models == ()
    denial = check_model("alice", policy, "gpt-4o-mini", config.provider_table)
    assert denial is not None and denial.status == 403
    assert 'default_model = "<model>" under [providers.x]' in denial.message
    assert 'models = ["<model>"] under [policy] or [claws.alice]' in denial.message
    # From the environment there is no [providers.*] table to name.
    env = load_llm_config(tmp_path / "nowhere", {"OPENAI_API_KEY": KEY})
    assert env.policy_for("alice").models == () and env.provider_table is None
    denial = check_model("alice", env.policy_for("alice"), "m", env.provider_table)
    assert denial is not None and "providers" not in denial.message


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('default_model = "gpt-*"', "character '\\*'"),
        ('default_model = ""', "must not be empty"),
        ("default_model = 4", "a model name or a list"),
        (f'default_model = "{"m" * 201}"', "at most 200"),
    ],
)
def test_bad_default_models_are_errors(tmp_path: Path, text: str, error: str) -> None:
    _write(tmp_path, f'[providers.x]\nbase_url = "https://h/v1"\n{text}\n')
    with pytest.raises(LlmConfigError, match=error):
        load_llm_config(tmp_path, {})


def test_caps_are_configurable_and_never_zero(tmp_path: Path) -> None:
    assert ClawPolicy().max_tokens == 4096 and ClawPolicy().concurrent_requests == 2
    _write(tmp_path, "[policy]\nmax_tokens = 512\n[claws.a]\nconcurrent_requests = 1\n")
    config = load_llm_config(tmp_path, {})
    assert (config.policy_for("a").max_tokens, config.policy_for("a").concurrent_requests) == (
        512,
        1,
    )
    for key in ("max_tokens", "concurrent_requests"):
        _write(tmp_path, f"[policy]\n{key} = 0\n")
        with pytest.raises(LlmConfigError, match=f"{key} must be ≥ 1"):
            load_llm_config(tmp_path, {})


# ---- request rules (pure) -----------------------------------------------------------
MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("gpt-4o-mini", True),
        ("meta-llama/llama-3.1-8b-instruct:free", True),
        ("org@model.v2_b", True),
        ("m" * 200, True),
        ("m" * 201, False),
        ("", False),
        ("gpt 4", False),
        ("gpt-4o*", False),
        ("m\x00", False),
        ("mödel", False),
        (42, False),
    ],
)
def test_model_names_are_bounded_and_plain(name: object, ok: bool) -> None:
    assert (model_name_problem(name) is None) is ok


def test_model_name_problems_quote_only_an_escaped_prefix() -> None:
    problem = model_name_problem("\x1b[31m" + "x" * 150)
    assert problem is not None and "\x1b" not in problem and "\\x1b" in problem
    assert len(problem) < 160
    assert preview("y" * 1000) == "'" + "y" * 40 + "'… (1000 characters)"


def test_a_parsed_request_is_rebuilt_from_the_allowlist_with_caps() -> None:
    req = parse_chat_request(
        {
            "model": "m",
            "messages": MSGS,
            "stream": True,
            "max_completion_tokens": 1e9,
            "user": "u",
            "n": 1,
            "logprobs": True,
            "temperature": None,
        },
        100,
    )
    assert isinstance(req, ChatRequest)
    assert req.body == {
        "model": "m",
        "messages": MSGS,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 100,
    }
    assert (req.stream, req.wants_usage, req.completion_cap, req.dropped) == (
        True,
        False,
        100,
        ("logprobs",),
    )
    assert req.prompt_bound >= len(json.dumps(MSGS)) > req.prompt_guess


def test_a_huge_whole_number_of_tokens_is_capped() -> None:
    req = parse_chat_request({"model": "m", "messages": MSGS, "max_tokens": 10**400}, 7)
    assert isinstance(req, ChatRequest) and req.body["max_tokens"] == 7


def test_stream_options_go_only_with_a_stream() -> None:
    req = parse_chat_request(
        {"model": "m", "messages": MSGS, "stream_options": {"include_usage": True}}, 10
    )
    assert isinstance(req, ChatRequest) and "stream_options" not in req.body
    assert req.body["max_tokens"] == 10


def test_images_count_towards_the_prompt_bound() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
    req = parse_chat_request({"model": "m", "messages": msgs}, 10)
    assert isinstance(req, ChatRequest) and req.prompt_bound >= NON_TEXT_PART_TOKENS


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"model": "m"},
        {"messages": MSGS},
        {"model": "m", "messages": None},
        {"model": "m", "messages": MSGS, "n": 2},
        {"model": "m", "messages": MSGS, "max_tokens": float("inf")},
        {"model": "m", "messages": MSGS, "temperature": float("nan")},
        {"model": "m", "messages": MSGS, "temperature": 10**400},  # no OverflowError
        {"model": "m", "messages": MSGS, "seed": 2**64},
    ],
)
def test_bad_requests_are_400s(body: object) -> None:
    denial = parse_chat_request(body, 10)
    assert isinstance(denial, Denial) and denial.status == 400


# ---- admission (pure) -------------------------------------------------------------
def test_admission_order_used_then_in_flight_then_reserved() -> None:
    policy = ClawPolicy(daily_tokens=100, concurrent_requests=2)
    used_up = Ledger(Totals(1, 100), Totals(1, 100), Totals(2, 500))
    denial = check_admission("a", policy, used_up, NOW)
    assert denial is not None and denial.code == "insufficient_quota"
    busy = Ledger(Totals(1, 10), Totals(1, 10), Totals(2, 0))
    denial = check_admission("a", policy, busy, NOW)
    assert denial is not None and denial.code == "too_many_concurrent_requests"
    assert denial.headers["retry-after"] == "1"
    reserved = Ledger(Totals(1, 10), Totals(1, 10), Totals(1, 90))
    denial = check_admission("a", policy, reserved, NOW)
    assert denial is not None and denial.code == "budget_reserved" and "daily" in denial.message
    room = Ledger(Totals(1, 10), Totals(1, 10), Totals(1, 89))
    assert check_admission("a", policy, room, NOW) is None
    cost = ClawPolicy(monthly_cost_usd=1.0)
    priced = Ledger(Totals(), Totals(cost_usd=0.5), Totals(1, 0, 0, 0.5))
    denial = check_admission("a", cost, priced, NOW)
    assert denial is not None and "monthly budget of $1.00" in denial.message


def test_worst_case_is_prompt_bound_plus_cap_priced() -> None:
    prices = {"m": Price(1_000_000.0, 2_000_000.0)}  # $1 / $2 per token
    assert worst_case(prices, "m", 10, 5) == (15, 20.0)
    assert worst_case(prices, "unpriced", 10, 5) == (15, 0.0)


# ---- reservations in the store --------------------------------------------------------
def _reserve(usage: UsageRepository, claw: str = "alice", **kw: Any) -> int | Denial:
    args: dict[str, Any] = {
        "tokens": 60,
        "cost_usd": 0.0,
        "owner": os.getpid(),
        "now": NOW,
        "expires_at": NOW + timedelta(minutes=10),
        "admit": lambda ledger: check_admission(
            claw, ClawPolicy(daily_tokens=100, concurrent_requests=3), ledger, NOW
        ),
    }
    return usage.reserve(claw, "m", **{**args, **kw})


def test_reservations_count_until_settled_then_the_real_usage_counts(db: Database) -> None:
    usage = UsageRepository(db, clock=lambda: NOW)
    first = _reserve(usage)
    assert isinstance(first, int)
    assert usage.pending("alice", NOW) == Totals(1, 60, 0, 0.0)
    second = _reserve(usage)  # 0 used + 60 reserved < 100: admitted
    assert isinstance(second, int)
    third = _reserve(usage)  # 120 reserved: refused, nothing inserted
    assert isinstance(third, Denial) and third.code == "budget_reserved"
    assert usage.pending("alice", NOW).requests == 2
    usage.settle(first, "alice", "m", prompt_tokens=10, completion_tokens=5, ts=NOW)
    assert usage.pending("alice", NOW) == Totals(1, 60, 0, 0.0)
    assert usage.period_totals("alice", NOW)[0] == Totals(1, 10, 5)
    assert isinstance(_reserve(usage, "bob"), int)  # per claw


def test_expired_reservations_stop_counting(db: Database) -> None:
    usage = UsageRepository(db)
    stale = _reserve(usage, tokens=1000, expires_at=NOW + timedelta(minutes=1))
    assert isinstance(stale, int)
    assert isinstance(_reserve(usage), Denial)
    later = NOW + timedelta(minutes=1)
    assert usage.pending("alice", later) == Totals()
    assert isinstance(_reserve(usage, now=later, expires_at=later + timedelta(minutes=1)), int)
    ids = [r[0] for r in db.execute("SELECT id FROM llm_reservations")]
    assert stale not in ids  # deleted, not just ignored


def test_orphans_are_released_by_owner(db: Database) -> None:
    usage = UsageRepository(db)
    _reserve(usage, owner=1111)
    _reserve(usage, owner=2222)
    assert usage.release_orphans(lambda pid: pid == 2222) == 1
    assert [r[0] for r in db.execute("SELECT owner FROM llm_reservations")] == [2222]


def test_reserve_is_atomic_across_threads(db: Database) -> None:
    usage = UsageRepository(db)
    results: list[int | Denial] = []
    barrier = threading.Barrier(16)

    def go() -> None:
        barrier.wait()
        results.append(_reserve(usage, tokens=10))

    threads = [threading.Thread(target=go) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, int) for r in results) == 3  # concurrent_requests
    assert usage.pending("alice", NOW).requests == 3
