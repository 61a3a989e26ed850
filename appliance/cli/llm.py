"""``clawden llm usage``: what each claw spent on models."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from datetime import datetime

from appliance.app import build_context
from appliance.cli.output import Subparsers
from appliance.core.model import validate_claw_name
from appliance.core.textsafe import printable
from appliance.store.usage import UsageRepository


def register(sub: Subparsers) -> None:
    llm = sub.add_parser("llm", help="the LLM gateway").add_subparsers(
        dest="llm_command", metavar="ACTION", required=True
    )
    usage = llm.add_parser("usage", help="LLM calls, tokens and cost per claw: today, this month")
    usage.add_argument("name", nargs="?", metavar="NAME", help="one claw (default: all)")
    usage.set_defaults(handler=llm_usage)


def llm_usage(args: argparse.Namespace) -> int:
    name = None if args.name is None else validate_claw_name(args.name)
    for line in llm_usage_lines(build_context().store.usage, name):
        print(line)
    return 0


def llm_usage_lines(
    usage: UsageRepository, name: str | None, now: datetime | None = None
) -> Iterator[str]:
    """The lines ``clawden llm usage [NAME]`` prints: today and this month."""
    now = now or usage.clock()
    rows = usage.report(name, "day", now) + usage.report(name, "month", now)
    if not rows:
        who = f"claw {printable(name)!r}" if name else "any claw"
        yield f"no LLM calls recorded for {who} this month"
        return
    yield (
        f"{'CLAW':<16} {'PERIOD':<10} {'CALLS':>6} {'PROMPT':>10} {'COMPLETION':>10}"
        f" {'COST USD':>10}"
    )
    for row in sorted(rows, key=lambda r: (r.claw, len(r.period) == 7)):
        t = row.totals
        line = (
            f"{printable(row.claw):<16} {row.period:<10} {t.requests:>6} "
            f"{t.prompt_tokens:>10} {t.completion_tokens:>10} {t.cost_usd:>10.4f}"
        )
        if row.unpriced_calls:
            line += f"  ({row.unpriced_calls} calls to unpriced models counted at $0)"
        yield line
