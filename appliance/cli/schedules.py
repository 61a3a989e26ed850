"""``clawden schedule add|list|rm``: heartbeats and scheduled jobs."""

from __future__ import annotations

import argparse

from appliance.app import build_context
from appliance.cli.output import Subparsers
from appliance.core.model import validate_claw_name
from appliance.core.textsafe import printable
from appliance.schedule.jobs import schedule_add as add
from appliance.schedule.jobs import schedule_list_lines
from appliance.schedule.jobs import schedule_rm as rm


def register(sub: Subparsers) -> None:
    sched = sub.add_parser("schedule", help="heartbeats and scheduled jobs").add_subparsers(
        dest="schedule_command", metavar="ACTION", required=True
    )
    sadd = sched.add_parser(
        "add",
        help="add a job (cron, every, at) or set a claw's heartbeat",
        description=(
            "KIND is cron ('30 7 * * 1-5'), every ('2h', '90m'), at ('2026-12-24T18:00') "
            "or heartbeat ('every=30m active=08:00-22:00 model=NAME', '' for the defaults)."
        ),
    )
    sadd.add_argument("name", help="the claw")
    sadd.add_argument("kind", help="cron, every, at or heartbeat")
    sadd.add_argument("spec", help="when (see the description above); quote it")
    sadd.add_argument("text", nargs="?", default="", help="what the claw is asked to do")
    sadd.add_argument("--tz", default=None, help="IANA time zone (default: the host's)")
    sadd.set_defaults(handler=schedule_add)
    slist = sched.add_parser("list", help="list jobs with their next run and last status")
    slist.add_argument("name", nargs="?", help="one claw (default: all)")
    slist.set_defaults(handler=schedule_list)
    srm = sched.add_parser("rm", help="remove a job (a heartbeat is turned off, not deleted)")
    srm.add_argument("id", type=int, help="the job's ID from `clawden schedule list`")
    srm.set_defaults(handler=schedule_rm)


def schedule_add(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    ctx = build_context()
    job = add(ctx.store, name, args.kind, args.spec, args.tz, args.text)
    ctx.audit.append(ctx.actor, "schedule.add", name, {"job": job.id, "kind": job.kind.value})
    when = "-" if job.next_run_at is None else job.next_run_at.isoformat(timespec="minutes")
    print(f"job {job.id}: {job.kind.value} {printable(job.spec)} ({job.tz}) for {name}")
    print(f"next run: {when}")
    return 0


def schedule_list(args: argparse.Namespace) -> int:
    ctx = build_context()
    if args.name is not None:
        ctx.claws.require(validate_claw_name(args.name))
    for line in schedule_list_lines(ctx.store, args.name):
        print(line)
    return 0


def schedule_rm(args: argparse.Namespace) -> int:
    ctx = build_context()
    line = rm(ctx.store, args.id)
    ctx.audit.append(ctx.actor, "schedule.rm", str(args.id), {})
    print(line)
    return 0
