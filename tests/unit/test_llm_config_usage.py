"""Host LLM configuration, the pure policy rules, and the usage store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.cli.llm import llm_usage_lines
from appliance.core.llm_policy import (
    ClawPolicy,
    RateLimiter,
    Totals,
    check_budget,
    check_model,
    next_period_start,
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
