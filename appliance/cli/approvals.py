"""``clawden approval list|show|approve|deny``: the admin's side of approvals.

What a claw asked is untrusted text: every action and detail printed here goes
through ``printable``, and the full sha256 of (claw, action, details) is shown
so the operator approves exactly what they read. Each decision is audited in
the same transaction that records it, with actor ``root@cli``.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from appliance.app import build_context
from appliance.cli.output import Subparsers
from appliance.core.accounts import ROOT_CLI_ACTOR
from appliance.core.approvals import Approval, utc_clock
from appliance.core.model import validate_claw_name
from appliance.core.textsafe import printable

DETAILS_PREVIEW_CHARS = 48


def register(sub: Subparsers) -> None:
    appr = sub.add_parser("approval", help="what claws ask their admin to approve").add_subparsers(
        dest="approval_command", metavar="ACTION", required=True
    )
    alist = appr.add_parser("list", help="pending requests: claw, age, expiry, hash, action")
    alist.add_argument("name", nargs="?", help="one claw (default: all)")
    alist.add_argument("--all", action="store_true", help="decided and expired ones too")
    alist.set_defaults(handler=approval_list)
    ashow = appr.add_parser("show", help="one request in full, with its sha256")
    ashow.add_argument("id", help="the request's ID from `clawden approval list`")
    ashow.set_defaults(handler=approval_show)
    aok = appr.add_parser("approve", help="approve a pending request")
    aok.add_argument("id", help="the request's ID")
    aok.set_defaults(handler=approval_approve)
    ano = appr.add_parser("deny", help="deny a pending request")
    ano.add_argument("id", help="the request's ID")
    ano.add_argument("--reason", default=None, help="told to the claw")
    ano.set_defaults(handler=approval_deny)


def _span(seconds: float) -> str:
    """45s, 12m, 3h, 2d: short enough for a table column."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _preview(details: str) -> str:
    lines = details.strip().splitlines() or [""]
    first = printable(lines[0])
    if len(first) > DETAILS_PREVIEW_CHARS or len(lines) > 1:
        first = first[:DETAILS_PREVIEW_CHARS] + "…"
    return first


def _line(a: Approval, now: datetime) -> str:
    expires = _span((a.expires_at - now).total_seconds()) if a.pending else "-"
    age = _span((now - a.created_at).total_seconds())
    return (
        f"{a.id:<15} {printable(a.claw):<12} {a.status:<8} {age:>5} {expires:>7}  "
        f"{a.sha256[:12]}  {printable(a.action)} — {_preview(a.details)}"
    )


def approval_list(args: argparse.Namespace) -> int:
    ctx = build_context()
    name = None
    if args.name is not None:
        name = validate_claw_name(args.name)
        ctx.claws.require(name)
    approvals = ctx.store.approvals.list(name, pending_only=not args.all)
    if not approvals:
        which = "approval requests" if args.all else "pending approval requests"
        print(f"no {which}{f' from {name}' if name else ''}")
        return 0
    now = utc_clock()
    print(f"{'ID':<15} {'CLAW':<12} {'STATUS':<8} {'AGE':>5} {'EXPIRES':>7}  SHA256        ACTION")
    for approval in approvals:
        print(_line(approval, now))
    return 0


def approval_show(args: argparse.Namespace) -> int:
    ctx = build_context()
    a = ctx.store.approvals.require(args.id)
    now = utc_clock()
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    print(f"approval {a.id}: {a.status}")
    print(f"claw:     {printable(a.claw)}")
    print(f"action:   {printable(a.action)}")
    age, left = (now - a.created_at).total_seconds(), (a.expires_at - now).total_seconds()
    print(f"asked:    {a.created_at.strftime(stamp)} ({_span(age)} ago)")
    if a.pending:
        print(f"expires:  {a.expires_at.strftime(stamp)} (in {_span(left)})")
    elif a.decided_at is not None:
        by = f" by {printable(a.decided_by)}" if a.decided_by and a.status != "expired" else ""
        print(f"decided:  {a.decided_at.strftime(stamp)}{by}: {printable(a.reason)}")
    print(f"sha256:   {a.sha256}")
    print("details:")
    for line in a.details.splitlines() or ["(none)"]:
        print(f"    {printable(line)}")
    if a.pending:
        print(f"decide:   clawden approval approve {a.id}  |  clawden approval deny {a.id}")
    return 0


def _decide(args: argparse.Namespace, approved: bool, reason: str | None) -> int:
    ctx = build_context()
    repo = ctx.store.approvals
    # Root at the host's terminal owns the host: no TOTP, but the decision
    # still names who made it, as the panel's name their account.
    with ctx.store.transaction():
        a = repo.decide(args.id, approved, by=ROOT_CLI_ACTOR, reason=reason)
        ctx.audit.append(
            ROOT_CLI_ACTOR,
            "approval.approve" if approved else "approval.deny",
            a.id,
            {"claw": a.claw, "action": a.action, "sha256": a.sha256, "reason": a.reason},
        )
    print(f"{a.status} {a.id} ({printable(a.claw)}: {printable(a.action)})")
    print(f"sha256 {a.sha256}; the claw sees the decision within a second")
    return 0


def approval_approve(args: argparse.Namespace) -> int:
    return _decide(args, True, None)


def approval_deny(args: argparse.Namespace) -> int:
    return _decide(args, False, args.reason)
