"""What each ``clawden`` subcommand does. Parsing lives in ``cli.py``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from appliance import approval_commands, skill_commands
from appliance.app import build_context, service_registry
from appliance.config import Settings
from appliance.controller import rpc
from appliance.controller.guestfiles import ClawFiles
from appliance.controller.lifecycle import Lifecycle
from appliance.controller.reconcile import reconcile
from appliance.core.model import ClawSpec, validate_claw_name
from appliance.errors import ClawdenError, InvalidInput, Unavailable
from appliance.textsafe import printable

RECIPE_DIR = Path(__file__).resolve().parent.parent / "images"


def progress(line: str) -> None:
    print(f"· {line}", file=sys.stderr, flush=True)


def dispatch(args: argparse.Namespace) -> int:
    name = args.command
    sub = {
        "host": getattr(args, "host_command", None),
        "image": getattr(args, "image_command", None),
        "claw": getattr(args, "claw_command", None),
        "audit": getattr(args, "audit_command", None),
        "llm": getattr(args, "llm_command", None),
        "schedule": getattr(args, "schedule_command", None),
        "skill": getattr(args, "skill_command", None),
        "approval": getattr(args, "approval_command", None),
    }.get(name)
    handler = HANDLERS[(name, sub)]
    return handler(args)


# ---- host, image, doctor ---------------------------------------------------
def host_provision(args: argparse.Namespace) -> int:
    from appliance.host_provision import provision_host

    result = provision_host(progress, check=args.check)
    print(
        f"host provisioned: {result.changed} changed, {result.failed} failed "
        f"in {result.duration_s:.0f} s"
    )
    return 0 if result.ok else 1


def image_build(args: argparse.Namespace) -> int:
    from appliance.image.builder import build_image

    ctx = build_context()
    image = build_image(ctx.settings.images_dir, RECIPE_DIR, progress, force=args.force)
    ctx.audit.append(ctx.actor, "image.build", image.version, {"force": bool(args.force)})
    print(f"golden image {image.version} ready at {image.dir}")
    return 0


def image_list(args: argparse.Namespace) -> int:
    from appliance.image import list_images

    images = list_images(Settings.from_env().images_dir)
    if not images:
        print("no images yet — build one with `clawden image build`")
        return 0
    print(f"{'VERSION':<24} {'CREATED':<26} {'SIZE':>9}  SHA256 (golden)")
    for img in images:
        size = img.golden.stat().st_size if img.golden.exists() else 0
        sha = str(img.manifest.get("artefacts", {}).get("golden.qcow2", {}).get("sha256", "?"))
        print(f"{img.version:<24} {img.created_at:<26} {size / 2**20:>7.0f}Mi  {sha[:16]}…")
    return 0


def image_verify(args: argparse.Namespace) -> int:
    ctx = build_context()
    image = Lifecycle(ctx).verified_image(progress)
    print(f"golden image {image.version}: every sha256 matches its manifest")
    return 0


def doctor(args: argparse.Namespace) -> int:
    from appliance.doctor import run_doctor

    return run_doctor(Settings.from_env(), print)


# ---- the controller ----------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    from appliance.controller.daemon import Controller

    # One context for the controller and its services: the host API serves
    # claws from the same store connection the controller uses.
    ctx = build_context(actor="controller")
    controller = Controller(lambda: ctx, service_registry(ctx.settings, ctx.db))

    def _stop(signum: int, frame: FrameType | None) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    controller.run()
    return 0


def do_reconcile(args: argparse.Namespace) -> int:
    report = reconcile(build_context(), progress)
    for line in report.errors:
        print(f"could not fix: {line}", file=sys.stderr)
    if not report.changed and not report.errors:
        print("nothing to do: libvirt and the store agree")
    else:
        print(
            f"resumed {len(report.resumed)}, restarted {len(report.restarted)}, "
            f"stopped {len(report.stopped)}, orphans removed {len(report.orphans_removed)}, "
            f"errors {len(report.errors)}"
        )
    return 1 if report.errors else 0


# ---- claws -------------------------------------------------------------------
def _wait_ready(settings: Settings, name: str, timeout: float) -> None:
    started = time.monotonic()
    progress(f"waiting for {name}'s channel (up to {timeout:.0f} s)")
    try:
        reply = rpc.call(
            settings.controller_socket,
            {"op": "wait_ready", "claw": name, "timeout": timeout},
            timeout=timeout + 30,
        )
    except Unavailable as exc:
        print(f"note: {exc}", file=sys.stderr)
        return
    if not reply.get("ready"):
        raise Unavailable(
            f"claw {name!r} did not become ready in {timeout:.0f} s "
            f"(channel {reply.get('state')}: {reply.get('last_error') or 'no answer'})",
            f"read `clawden claw console {name}`; it keeps retrying in the background",
        )
    print(f"{name} ready in {time.monotonic() - started:.1f} s")


def claw_create(args: argparse.Namespace) -> int:
    spec = ClawSpec(args.name, args.member, vcpus=args.cpus, memory_mib=args.memory)
    ctx = build_context()
    claw = Lifecycle(ctx).create(spec, progress)
    print(f"created claw {claw.name} for {claw.member} ({claw.vcpus} vCPU, {claw.memory_mib} MiB)")
    if not args.no_wait:
        _wait_ready(ctx.settings, claw.name, args.timeout)
    return 0


def claw_list(args: argparse.Namespace) -> int:
    claws = build_context().claws.list()
    if not claws:
        print("no claws yet — create one with `clawden claw create NAME --member MEMBER`")
        return 0
    print(f"{'NAME':<24} {'MEMBER':<16} {'STATE':<10} {'CPUS':>4} {'MEM':>6}  IMAGE")
    for c in claws:
        print(
            f"{c.name:<24} {printable(c.member):<16} {c.state.value:<10} {c.vcpus:>4} "
            f"{c.memory_mib:>5}M  {c.image_version}"
        )
    return 0


def claw_start(args: argparse.Namespace) -> int:
    ctx = build_context()
    Lifecycle(ctx).start(validate_claw_name(args.name), progress)
    print(f"{args.name} started")
    if not args.no_wait:
        _wait_ready(ctx.settings, args.name, args.timeout)
    return 0


def claw_stop(args: argparse.Namespace) -> int:
    Lifecycle(build_context()).stop(validate_claw_name(args.name), progress)
    print(f"{args.name} stopped (its data disk is kept)")
    return 0


def claw_destroy(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    ctx = build_context()
    ctx.claws.require(name)
    if not args.yes:
        raise InvalidInput(
            f"destroying {name!r} deletes its data disk, keys and VM",
            f"confirm with `clawden claw destroy {name} --yes`",
        )
    Lifecycle(ctx).destroy(name, progress)
    print(f"{name} destroyed: no domain, disk, key or socket left")
    return 0


def claw_status(args: argparse.Namespace) -> int:
    from appliance.status import claw_status_lines

    for line in claw_status_lines(build_context(), validate_claw_name(args.name)):
        print(line)
    return 0


def claw_exec(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InvalidInput("no command given", f"usage: clawden claw exec {name} -- CMD [ARG ...]")
    settings = Settings.from_env()
    out = _writer(sys.stdout.buffer)
    err = _writer(sys.stderr.buffer)
    code = 0
    request = {"op": "exec", "claw": name, "argv": argv, "timeout": args.timeout, "wait": 60}
    for reply in rpc.stream(settings.controller_socket, request):
        if "stdout" in reply:
            out(rpc.decode_chunk(reply["stdout"]))
        elif "stderr" in reply:
            err(rpc.decode_chunk(reply["stderr"]))
        elif "exit" in reply:
            code = int(reply["exit"])
    return code if 0 <= code < 256 else 255


def claw_say(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    if not args.text.strip():
        raise InvalidInput("the message is empty", f'usage: clawden claw say {name} "TEXT"')
    if args.timeout <= 0:
        raise InvalidInput(f"invalid --timeout {args.timeout}", "give a positive number of seconds")
    request = {"op": "say", "claw": name, "text": args.text, "timeout": args.timeout, "wait": 60}
    # The socket waits for the channel (60 s) and the reply, plus some slack.
    reply = rpc.call(Settings.from_env().controller_socket, request, timeout=args.timeout + 90)
    status = str(reply.get("status"))
    print(printable(str(reply.get("text", ""))))
    if status not in ("reply", "heartbeat_ok"):
        # budget, unavailable, error, max_steps: the text explains, this names it.
        print(f"note: the claw answered with status {printable(status)}", file=sys.stderr)
    return 0


def claw_messages(args: argparse.Namespace) -> int:
    from appliance.messages import MessageRepository

    name = validate_claw_name(args.name)
    ctx = build_context()
    ctx.claws.require(name)
    messages = MessageRepository(ctx.db).list(name, limit=args.limit)
    if not messages:
        print(f'no messages for {name} yet — try `clawden claw say {name} "hello"`')
    for m in messages:
        arrow = "→" if m.direction == "in" else "←"
        state = "" if m.delivered else " (not delivered yet)"
        # Message text is untrusted (the owner's or the model's): escaped.
        text = printable(m.text).replace("\n", "\n    ")
        print(f"{m.created_at} {arrow} {printable(m.sender)} [{m.kind}/{m.channel}]{state}")
        print(f"    {text}")
    return 0


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    """Guest output is untrusted: raw bytes to a pipe, escaped on a terminal
    (so a claw cannot drive the operator's terminal with escape sequences)."""
    is_tty = stream.isatty()

    def write(data: bytes) -> None:
        if is_tty:
            data = printable(data.decode("utf-8", "replace")).encode()
        stream.write(data)
        stream.flush()

    return write


def claw_console(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    ctx = build_context()
    ctx.claws.require(name)
    log = ClawFiles.for_claw(ctx.settings, name).console_log
    if not log.exists():
        raise ClawdenError(
            f"claw {name!r} has no console log yet", f"start it: `clawden claw start {name}`"
        )
    lines = log.read_bytes().decode("utf-8", "replace").splitlines()
    if args.lines > 0:
        lines = lines[-args.lines :]
    for line in lines:
        print(printable(line))
    return 0


# ---- audit -------------------------------------------------------------------
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


def llm_usage(args: argparse.Namespace) -> int:
    from appliance.llm.usage import llm_usage_lines

    name = None if args.name is None else validate_claw_name(args.name)
    for line in llm_usage_lines(build_context().db, name):
        print(line)
    return 0


# ---- schedule ----------------------------------------------------------------
def schedule_add(args: argparse.Namespace) -> int:
    from appliance.schedule import schedule_add as add

    name = validate_claw_name(args.name)
    ctx = build_context()
    job = add(ctx.db, name, args.kind, args.spec, args.tz, args.text)
    ctx.audit.append(ctx.actor, "schedule.add", name, {"job": job.id, "kind": job.kind.value})
    when = "-" if job.next_run_at is None else job.next_run_at.isoformat(timespec="minutes")
    print(f"job {job.id}: {job.kind.value} {printable(job.spec)} ({job.tz}) for {name}")
    print(f"next run: {when}")
    return 0


def schedule_list(args: argparse.Namespace) -> int:
    from appliance.schedule import schedule_list_lines

    ctx = build_context()
    if args.name is not None:
        ctx.claws.require(validate_claw_name(args.name))
    for line in schedule_list_lines(ctx.db, args.name):
        print(line)
    return 0


def schedule_rm(args: argparse.Namespace) -> int:
    from appliance.schedule import schedule_rm as rm

    ctx = build_context()
    line = rm(ctx.db, args.id)
    ctx.audit.append(ctx.actor, "schedule.rm", str(args.id), {})
    print(line)
    return 0


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


HANDLERS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("doctor", None): doctor,
    ("serve", None): serve,
    ("reconcile", None): do_reconcile,
    ("host", "provision"): host_provision,
    ("image", "build"): image_build,
    ("image", "list"): image_list,
    ("image", "verify"): image_verify,
    ("claw", "create"): claw_create,
    ("claw", "list"): claw_list,
    ("claw", "start"): claw_start,
    ("claw", "stop"): claw_stop,
    ("claw", "status"): claw_status,
    ("claw", "destroy"): claw_destroy,
    ("claw", "exec"): claw_exec,
    ("claw", "say"): claw_say,
    ("claw", "console"): claw_console,
    ("claw", "messages"): claw_messages,
    ("schedule", "add"): schedule_add,
    ("schedule", "list"): schedule_list,
    ("schedule", "rm"): schedule_rm,
    ("audit", "verify"): audit_verify,
    ("audit", "list"): audit_list,
    ("audit", "reseal"): audit_reseal,
    ("llm", "usage"): llm_usage,
    ("skill", "add"): skill_commands.skill_add,
    ("skill", "list"): skill_commands.skill_list,
    ("skill", "rm"): skill_commands.skill_rm,
    ("claw", "import"): skill_commands.claw_import,
    ("approval", "list"): approval_commands.approval_list,
    ("approval", "show"): approval_commands.approval_show,
    ("approval", "approve"): approval_commands.approval_approve,
    ("approval", "deny"): approval_commands.approval_deny,
}
