"""``clawden policy set|list``: which approval requests of a claw are
allowed, denied or asked about (rules in ``appliance/core/policy.py``).

Root at the host's terminal needs no TOTP code (the panel's admins do);
every change is audited ``policy.set`` with the old and new rule, actor
``root@cli``. Capabilities a claw named are untrusted text: printed through
``printable``.
"""

from __future__ import annotations

import argparse

from appliance.accounts.policy import set_rule
from appliance.app import build_context
from appliance.cli.output import Subparsers
from appliance.core.accounts import ROOT_CLI_ACTOR
from appliance.core.approvals import utc_clock
from appliance.core.model import validate_claw_name
from appliance.core.policy import RULES, policy_table
from appliance.core.textsafe import printable


def register(sub: Subparsers) -> None:
    pol = sub.add_parser(
        "policy", help="per claw: approval requests allowed, denied, or asked about"
    ).add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    pset = pol.add_parser("set", help="set one capability's rule for a claw")
    pset.add_argument("name", help="the claw")
    pset.add_argument("capability", help="e.g. message.send, skill.install, or any action")
    pset.add_argument("rule", choices=RULES, help="allow, deny or ask (the default)")
    pset.set_defaults(handler=policy_set)
    plist = pol.add_parser("list", help="each capability's rule (ask unless set)")
    plist.add_argument("name", nargs="?", help="one claw (default: every claw)")
    plist.set_defaults(handler=policy_list)


def policy_set(args: argparse.Namespace) -> int:
    ctx = build_context()
    claw = validate_claw_name(args.name)
    old = set_rule(ctx.store, claw, args.capability, args.rule, ROOT_CLI_ACTOR, utc_clock())
    print(f"{claw}: {printable(args.capability)} {old} -> {args.rule}")
    return 0


def policy_list(args: argparse.Namespace) -> int:
    ctx = build_context()
    if args.name is not None:
        names = [ctx.claws.require(validate_claw_name(args.name)).name]
    else:
        names = [c.name for c in ctx.claws.list()]
    if not names:
        print("no claws")
        return 0
    print(f"{'CLAW':<12} {'RULE':<6} CAPABILITY")
    for name in names:
        for capability, rule in policy_table(ctx.store.policy.rules(name)):
            print(f"{name:<12} {rule:<6} {printable(capability)}")
    return 0
