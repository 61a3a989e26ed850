"""Percentile summaries for latency benchmarks (pure; unit-tested).

``_common.summary`` gives min/median/max for a handful of slow runs; the
latency benchmarks take hundreds of samples and report tail percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile by linear interpolation between closest ranks
    (numpy's default): ``percentile([1, 2, 3, 4], 50) == 2.5``."""
    if not values:
        raise ValueError("no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_ms(seconds: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Samples in seconds → count, min, p50/p90/p99 and max in milliseconds."""
    ms = [s * 1000 for s in seconds]
    out: dict[str, Any] = {"n": len(ms), "min": round(min(ms), digits)}
    for p in PERCENTILES:
        out[f"p{p}"] = round(percentile(ms, p), digits)
    out["max"] = round(max(ms), digits)
    return out


def ratios(subject: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """subject / baseline at each percentile of two ``latency_ms`` summaries."""
    return {
        f"p{p}": round(subject[f"p{p}"] / baseline[f"p{p}"], 2)
        for p in PERCENTILES
        if baseline[f"p{p}"] > 0
    }
