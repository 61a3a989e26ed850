"""``clawden audit verify|list|reseal``: the hash-chained audit log."""

from __future__ import annotations

import argparse

from appliance.app import build_context
from appliance.cli.output import Subparsers
from appliance.core.textsafe import printable


def register(sub: Subparsers) -> None:
    audit = sub.add_parser("audit", help="the hash-chained audit log").add_subparsers(
        dest="audit_command", metavar="ACTION", required=True
    )
    verify = audit.add_parser(
        "verify", help="check the chain: any edited, deleted or reordered row"
    )
    verify.set_defaults(handler=audit_verify)
    reseal = audit.add_parser(
        "reseal", help="accept the log as it is now, after investigating a failed verify"
    )
    reseal.add_argument("--reason", required=True, help="why (recorded in the log)")
    reseal.set_defaults(handler=audit_reseal)
    show = audit.add_parser("list", help="show recent entries")
    show.add_argument("--limit", type=int, default=50)
    show.set_defaults(handler=audit_list)


def audit_verify(args: argparse.Namespace) -> int:
    result = build_context().audit.verify()
    if result.ok:
        print(f"audit log intact: {result.count} entries, chain verified")
        if result.head_hash:
            print(f"head hash: {result.head_hash} (note it elsewhere to detect a rewrite)")
        return 0
    for problem in result.problems:
        print(f"TAMPERED: {problem}")
    print(f"audit log verification FAILED ({len(result.problems)} problems in {result.count} rows)")
    return 5


def audit_reseal(args: argparse.Namespace) -> int:
    entry = build_context().audit.reseal("cli", args.reason)
    print(f"audit log resealed at entry {entry.seq}; `clawden audit verify` starts from here")
    return 0


def audit_list(args: argparse.Namespace) -> int:
    entries = build_context().audit.entries()
    for e in entries[-args.limit :]:
        print(
            f"{e.seq:>6} {e.ts} {e.actor:<10} {e.action:<28} {printable(e.target)} "
            f"{printable(str(e.details) if e.details else '')}"
        )
    return 0
