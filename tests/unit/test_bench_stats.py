"""The benchmarks' pure helpers: percentiles, latency summaries, token estimates."""

from __future__ import annotations

from functools import partial

import pytest

from bench._stats import latency_ms, percentile, ratios
from bench.gateway_overhead import run_interleaved
from bench.idle_tokens import call_parts, chars_per_call, tokens_from_chars


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile([10.0], 99) == 10.0
    assert percentile(list(range(101)), 99) == 99


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds_and_ratios_follow() -> None:
    base = latency_ms([0.001, 0.002, 0.003])
    assert base == {"n": 3, "min": 1.0, "p50": 2.0, "p90": 2.8, "p99": 2.98, "max": 3.0}
    slower = latency_ms([0.002, 0.004, 0.006])
    assert ratios(slower, base) == {"p50": 2.0, "p90": 2.0, "p99": 2.0}


def test_interleaving_rotates_the_order_and_drops_the_warmup() -> None:
    seen: list[str] = []
    calls = {name: partial(seen.append, name) for name in ("a", "b", "c")}
    samples = run_interleaved(calls, rounds=3, warmup=1)
    assert seen == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_request_characters_count_messages_and_tool_schemas() -> None:
    body = {
        "messages": [{"role": "system", "content": "abc"}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "x"}}],
    }
    sizes = chars_per_call(body)
    assert sizes["messages"] == len(
        '[{"role": "system", "content": "abc"}, {"role": "user", "content": "hi"}]'
    )
    assert sizes["tools"] == len('[{"type": "function", "function": {"name": "x"}}]')
    parts = call_parts(body)
    assert parts["system"] == len('{"role": "system", "content": "abc"}')
    assert parts["system"] + parts["conversation"] == sizes["messages"]
    assert (parts["tools"], parts["tool_count"], parts["messages"]) == (sizes["tools"], 1, 2)
    assert chars_per_call({"messages": []}) == {"messages": 2, "tools": 2}
    assert tokens_from_chars(4000) == 1000
