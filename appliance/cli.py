"""``clawden`` — the operator's command line.

Every failure a user can cause or meet prints exactly one line, ``error: what —
fix``, and exits non-zero; nothing stored is touched by a command that fails
validation. Long operations print progress as they go.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from appliance import __version__, commands
from appliance.errors import ClawdenError
from appliance.textsafe import printable


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clawden",
        description="Run one hardened VM per family member's claw.",
    )
    p.add_argument("--version", action="version", version=f"clawden {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub.add_parser("doctor", help="check this host can run claws, with the fix for each problem")
    sub.add_parser("serve", help="run the controller in the foreground (owns the claws' channels)")
    sub.add_parser("reconcile", help="finish or undo interrupted operations; fix drift and orphans")

    host = sub.add_parser("host", help="prepare this machine").add_subparsers(
        dest="host_command", metavar="ACTION", required=True
    )
    prov = host.add_parser("provision", help="install and start libvirt, QEMU and tools (Ansible)")
    prov.add_argument("--check", action="store_true", help="only report what would change")

    image = sub.add_parser("image", help="golden images").add_subparsers(
        dest="image_command", metavar="ACTION", required=True
    )
    build = image.add_parser("build", help="build the golden image from images/ (cached)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    image.add_parser("list", help="list built images")
    image.add_parser("verify", help="check the newest image against its manifest")

    claw = sub.add_parser("claw", help="manage claws").add_subparsers(
        dest="claw_command", metavar="ACTION", required=True
    )
    create = claw.add_parser("create", help="create and boot a claw")
    create.add_argument("name")
    create.add_argument("--member", required=True, help="the family member it belongs to")
    create.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    create.add_argument("--memory", type=int, default=512, help="memory in MiB (default 512)")
    create.add_argument("--no-wait", action="store_true", help="do not wait for the channel")
    create.add_argument("--timeout", type=float, default=300, help="seconds to wait for ready")
    claw.add_parser("list", help="list claws")
    for action, text in (
        ("start", "start a stopped claw"),
        ("stop", "shut a claw down (its data disk is kept)"),
        ("status", "show a claw's state, channel and resources"),
    ):
        cmd = claw.add_parser(action, help=text)
        cmd.add_argument("name")
        if action == "start":
            cmd.add_argument("--no-wait", action="store_true", help="do not wait for the channel")
            cmd.add_argument("--timeout", type=float, default=300, help="seconds to wait")
    destroy = claw.add_parser("destroy", help="delete a claw, its disks and keys")
    destroy.add_argument("name")
    destroy.add_argument("--yes", action="store_true", help="confirm: this deletes its data")
    ex = claw.add_parser("exec", help="run a command in a claw as its `claw` user")
    ex.add_argument("name")
    ex.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    say = claw.add_parser("say", help="send a claw a chat message and print its reply")
    say.add_argument("name")
    say.add_argument("text", help="the message (quote it)")
    say.add_argument(
        "--timeout",
        type=float,
        default=1860,
        help="seconds to wait for the reply (default 1860: the agent may queue and ask approvals)",
    )
    imp = claw.add_parser("import", help="copy an OpenClaw workspace into a running claw")
    imp.add_argument("name")
    imp.add_argument("path", help="the workspace folder (e.g. ~/.openclaw/workspace)")
    console = claw.add_parser("console", help="print a claw's serial console log")
    console.add_argument("name")
    console.add_argument("--lines", type=int, default=0, help="only the last N lines")

    msgs = claw.add_parser("messages", help="show a claw's recent messages (both directions)")
    msgs.add_argument("name")
    msgs.add_argument("--limit", type=int, default=20, help="how many, newest last (default 20)")

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
    slist = sched.add_parser("list", help="list jobs with their next run and last status")
    slist.add_argument("name", nargs="?", help="one claw (default: all)")
    srm = sched.add_parser("rm", help="remove a job (a heartbeat is turned off, not deleted)")
    srm.add_argument("id", type=int, help="the job's ID from `clawden schedule list`")

    skill = sub.add_parser("skill", help="skills installed on claws").add_subparsers(
        dest="skill_command", metavar="ACTION", required=True
    )
    kadd = skill.add_parser("add", help="install a skill (folder, .tar.gz, .zip) on a running claw")
    kadd.add_argument("name", help="the claw")
    kadd.add_argument("source", metavar="PATH_OR_ARCHIVE", help="the skill's folder or archive")
    klist = skill.add_parser("list", help="list installed skills with their sha256")
    klist.add_argument("name", nargs="?", help="one claw (default: all)")
    krm = skill.add_parser("rm", help="uninstall a skill from a claw")
    krm.add_argument("name", help="the claw")
    krm.add_argument("skill", help="the skill's name")

    appr = sub.add_parser("approval", help="what claws ask their admin to approve").add_subparsers(
        dest="approval_command", metavar="ACTION", required=True
    )
    alist = appr.add_parser("list", help="pending requests: claw, age, expiry, hash, action")
    alist.add_argument("name", nargs="?", help="one claw (default: all)")
    alist.add_argument("--all", action="store_true", help="decided and expired ones too")
    ashow = appr.add_parser("show", help="one request in full, with its sha256")
    ashow.add_argument("id", help="the request's ID from `clawden approval list`")
    aok = appr.add_parser("approve", help="approve a pending request")
    aok.add_argument("id", help="the request's ID")
    ano = appr.add_parser("deny", help="deny a pending request")
    ano.add_argument("id", help="the request's ID")
    ano.add_argument("--reason", default=None, help="told to the claw")

    llm = sub.add_parser("llm", help="the LLM gateway").add_subparsers(
        dest="llm_command", metavar="ACTION", required=True
    )
    usage = llm.add_parser("usage", help="LLM calls, tokens and cost per claw: today, this month")
    usage.add_argument("name", nargs="?", metavar="NAME", help="one claw (default: all)")

    audit = sub.add_parser("audit", help="the hash-chained audit log").add_subparsers(
        dest="audit_command", metavar="ACTION", required=True
    )
    audit.add_parser("verify", help="check the chain: any edited, deleted or reordered row")
    reseal = audit.add_parser(
        "reseal", help="accept the log as it is now, after investigating a failed verify"
    )
    reseal.add_argument("--reason", required=True, help="why (recorded in the log)")
    show = audit.add_parser("list", help="show recent entries")
    show.add_argument("--limit", type=int, default=50)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A closed pipe (`clawden ... | head`) is not an error worth a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    try:
        return commands.dispatch(args)
    except ClawdenError as exc:
        # Messages may quote guest-controlled bytes (an SSH banner, a name).
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "error: interrupted — run `clawden reconcile` to finish or undo what was started",
            file=sys.stderr,
        )
        return 130
