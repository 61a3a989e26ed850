"""Run every benchmark one after the other and write one JSON results file.

    .venv/bin/python -m bench.run_all [--runs 3] [--cold 2] [--cached 3] [--idle 240]
                                      [--rounds 200] [--says 5] [--flood-rounds 3]
                                      [--only boot,probe,memory,build,gateway,tokens,say,flood,rss]

Writes ``bench/results/<UTC time>.json`` (gitignored) and prints its path.
Each part waits for the machine to be quiet (no pytest) before it starts,
except ``tokens`` (counts, not timings: it records the load instead), and a
part that fails is recorded with its error so the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    accel_probe,
    boot_ready,
    controller_rss,
    flood_latency,
    gateway_overhead,
    idle_tokens,
    image_build,
    memory,
    say_roundtrip,
)
from bench._common import machine, say, unwind_on_sigterm

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="boot_ready rounds (default 3)")
    p.add_argument("--cold", type=int, default=2, help="cold image builds (default 2)")
    p.add_argument("--cached", type=int, default=3, help="cached image builds (default 3)")
    p.add_argument(
        "--idle", type=float, default=240.0, help="memory: claws' idle seconds (default 240)"
    )
    p.add_argument("--rounds", type=int, default=200, help="gateway: measured rounds (default 200)")
    p.add_argument("--says", type=int, default=5, help="say: measured says (default 5)")
    p.add_argument("--flood-rounds", type=int, default=3, help="flood: rounds (default 3)")
    p.add_argument(
        "--only",
        default="boot,probe,memory,build,gateway,tokens,say,flood,rss",
        help="comma-separated parts to run",
    )
    p.add_argument(
        "--into", type=Path, help="update this results file (e.g. to redo one part) instead"
    )
    args = p.parse_args(argv)
    unwind_on_sigterm()

    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "boot": lambda: boot_ready.measure(args.runs),
        "probe": lambda: accel_probe.measure(args.runs),
        "memory": lambda: memory.measure(args.idle),
        # No VM: the gateway's latency and an idle claw's tokens.
        "gateway": lambda: gateway_overhead.measure(args.rounds),
        "tokens": idle_tokens.measure,
        "say": lambda: say_roundtrip.measure(args.says),
        # No VM: one claw floods the host services, another is measured.
        "flood": lambda: flood_latency.measure(args.flood_rounds),
        "rss": controller_rss.measure,
        # Last: a cold build saturates both cores and the network.
        "build": lambda: image_build.measure(args.cold, args.cached),
    }
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(wanted) - set(parts)
    if unknown:
        p.error(f"unknown parts: {', '.join(sorted(unknown))}")

    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results: dict[str, Any] = {"started_utc": started, "machine": machine()}
    out = RESULTS / f"{started}.json"
    if args.into is not None:
        out = args.into
        results = json.loads(out.read_text())
    failed = False
    for name in (n for n in parts if n in wanted):
        say(f"== {name}")
        t0 = time.monotonic()
        try:
            results[name] = parts[name]()
        except Exception as exc:  # noqa: BLE001 — keep the other parts' figures
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}  # fmt: skip
        results[name]["wall_s"] = round(time.monotonic() - t0, 1)
        # Written after every part so an interrupted run keeps what it measured.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
