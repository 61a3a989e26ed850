"""``clawden claw …``: create, start, stop, destroy, inspect and talk to claws."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from appliance.app import build_context, load_settings
from appliance.cli import skills
from appliance.cli.output import Subparsers, progress, terminal_writer
from appliance.config import Settings
from appliance.controller import rpc
from appliance.controller.console import console_tail
from appliance.controller.lifecycle import Lifecycle
from appliance.core.errors import ClawdenError, InvalidInput, Unavailable
from appliance.core.messages import parse_cutoff
from appliance.core.model import ClawSpec, validate_claw_name
from appliance.core.textsafe import printable


def register(sub: Subparsers) -> None:
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
    create.set_defaults(handler=claw_create)
    claw.add_parser("list", help="list claws").set_defaults(handler=claw_list)
    start = claw.add_parser("start", help="start a stopped claw")
    start.add_argument("name")
    start.add_argument("--no-wait", action="store_true", help="do not wait for the channel")
    start.add_argument("--timeout", type=float, default=300, help="seconds to wait")
    start.set_defaults(handler=claw_start)
    stop = claw.add_parser("stop", help="shut a claw down (its data disk is kept)")
    stop.add_argument("name")
    stop.set_defaults(handler=claw_stop)
    status = claw.add_parser("status", help="show a claw's state, channel and resources")
    status.add_argument("name")
    status.set_defaults(handler=claw_status)
    destroy = claw.add_parser("destroy", help="delete a claw, its disks and keys")
    destroy.add_argument("name")
    destroy.add_argument("--yes", action="store_true", help="confirm: this deletes its data")
    destroy.set_defaults(handler=claw_destroy)
    ex = claw.add_parser(
        "exec",
        help="run a command in a claw as its `claw` user (piped stdin is passed on)",
        usage="clawden claw exec [--timeout S] NAME [--timeout S] -- CMD [ARG ...]",
    )
    ex.add_argument("name")
    _add_exec_options(ex)
    # Everything after NAME: options up to `--`, then the command (see _exec_command).
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(handler=claw_exec)
    say = claw.add_parser("say", help="send a claw a chat message and print its reply")
    say.add_argument("name")
    say.add_argument("text", help="the message (quote it)")
    say.add_argument(
        "--timeout",
        type=float,
        default=1860,
        help="seconds to wait for the reply (default 1860: the agent may queue and ask approvals)",
    )
    say.set_defaults(handler=claw_say)
    skills.register_import(claw)
    console = claw.add_parser("console", help="print a claw's serial console log")
    console.add_argument("name")
    console.add_argument("--lines", type=int, default=0, help="only the last N lines")
    console.set_defaults(handler=claw_console)
    msgs = claw.add_parser("messages", help="show a claw's recent messages (both directions)")
    msgs.add_argument("name")
    msgs.add_argument("--limit", type=int, default=20, help="how many, newest last (default 20)")
    msgs.add_argument(
        "--purge-before",
        metavar="DATE",
        help="delete the claw's messages created before DATE (ISO date or date-time, UTC)",
    )
    msgs.add_argument("--yes", action="store_true", help="confirm --purge-before")
    msgs.set_defaults(handler=claw_messages)


def _add_exec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=None, help="seconds before giving up")


def _exec_command(args: argparse.Namespace) -> list[str]:
    """The command of ``claw exec``, after applying any options given between
    NAME and ``--`` to ``args`` (``exec alice --timeout 5 -- sleep 10`` means
    the same as ``exec --timeout 5 alice -- sleep 10``).

    Only ``--`` ends the options, and everything after it is the command, even
    what looks like an option (``-- ls --timeout``). Without options, a command
    may also follow NAME directly, as it always could (``exec alice ls -la``).
    """
    argv = list(args.argv)
    if argv and argv[0].startswith("-") and argv[0] != "--":
        if "--" not in argv:
            raise InvalidInput(
                f"options after the claw's name must be followed by `--`: {' '.join(argv)}",
                f"usage: clawden claw exec {args.name} [--timeout S] -- CMD [ARG ...]",
            )
        cut = argv.index("--")
        options = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
        _add_exec_options(options)
        usage = f"usage: clawden claw exec {args.name} [--timeout S] -- CMD [ARG ...]"
        try:
            _, unknown = options.parse_known_args(argv[:cut], namespace=args)
        except argparse.ArgumentError as exc:
            raise InvalidInput(str(exc), usage) from None
        if unknown:
            raise InvalidInput(f"unknown option(s) before `--`: {' '.join(unknown)}", usage)
        return argv[cut + 1 :]
    return argv[1:] if argv and argv[0] == "--" else argv


def _stdin_chunks() -> Iterator[bytes] | None:
    """The CLI's stdin, in chunks as it arrives, when it is piped or
    redirected; ``None`` for a terminal (nothing is forwarded from a TTY: the
    command's stdin is empty, so `cat` ends at once instead of waiting) or
    when there is no stdin at all."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None  # closed, or replaced by something without a descriptor
    if os.isatty(fd):
        return None

    def chunks() -> Iterator[bytes]:
        # os.read, not sys.stdin.buffer: the reading thread is a daemon that
        # may still be blocked here at exit, and must hold no buffer lock.
        while True:
            try:
                chunk = os.read(fd, rpc.INPUT_CHUNK)
            except OSError:
                return  # unreadable: end the input here
            if not chunk:
                return
            yield chunk

    return chunks()


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
    from appliance.controller.status import claw_status_lines

    for line in claw_status_lines(build_context(), validate_claw_name(args.name)):
        print(line)
    return 0


def claw_exec(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    argv = _exec_command(args)
    if not argv:
        raise InvalidInput("no command given", f"usage: clawden claw exec {name} -- CMD [ARG ...]")
    settings = load_settings()
    out = terminal_writer(sys.stdout.buffer)
    err = terminal_writer(sys.stderr.buffer)
    code = 0
    stdin = _stdin_chunks()
    request = {
        "op": "exec",
        "claw": name,
        "argv": argv,
        "timeout": args.timeout,
        "wait": 60,
        "stdin": stdin is not None,
    }
    for reply in rpc.stream(settings.controller_socket, request, send_input=stdin):
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
    # The reply's pieces are printed as the model writes them (a warm agent
    # streams); the stored reply is the final one, printed whole if the
    # pieces were not all of it (a step that called tools said something first).
    streamed: list[str] = []
    reply: dict[str, Any] = {}
    for line in rpc.stream(load_settings().controller_socket, request, timeout=args.timeout + 90):
        if set(line) == {"delta"}:
            piece = printable(str(line["delta"]))
            streamed.append(piece)
            print(piece, end="", flush=True)
        else:
            reply = line
    status = str(reply.get("status"))
    text = printable(str(reply.get("text", "")))
    if not streamed:
        print(text)
    elif "".join(streamed).endswith(text):
        print()
    else:
        print(f"\n{text}")
    if status not in ("reply", "heartbeat_ok"):
        # budget, unavailable, error, max_steps: the text explains, this names it.
        print(f"note: the claw answered with status {printable(status)}", file=sys.stderr)
    return 0


def claw_messages(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    if args.purge_before is not None:
        return _purge_messages(name, args.purge_before, args.yes)
    ctx = build_context()
    ctx.claws.require(name)
    messages = ctx.store.messages.list(name, limit=args.limit)
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


def _purge_messages(name: str, when: str, yes: bool) -> int:
    cutoff = parse_cutoff(when)  # a bad date is refused before anything is opened
    shown = cutoff.isoformat().replace("+00:00", "Z")
    ctx = build_context()
    ctx.claws.require(name)
    store = ctx.store
    if not yes:
        count = store.messages.count_before(name, cutoff)
        if count == 0:
            print(f"no messages of {name} created before {shown}: nothing to delete")
            return 0
        raise InvalidInput(
            f"this would delete {count} message(s) of {name} created before {shown}",
            f"confirm with `clawden claw messages {name} --purge-before {shown} --yes`",
        )
    with store.transaction():
        count = store.messages.delete_before(name, cutoff)
        ctx.audit.append(ctx.actor, "messages.purge", name, {"before": shown, "deleted": count})
    print(f"deleted {count} message(s) of {name} created before {shown}")
    return 0


def claw_console(args: argparse.Namespace) -> int:
    name = validate_claw_name(args.name)
    ctx = build_context()
    ctx.claws.require(name)
    lines = console_tail(ctx.settings, name, max(args.lines, 0))
    if lines is None:
        raise ClawdenError(
            f"claw {name!r} has no console log yet", f"start it: `clawden claw start {name}`"
        )
    for line in lines:
        print(printable(line))
    return 0
