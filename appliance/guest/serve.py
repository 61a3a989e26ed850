"""The host's ways in: ``python3 -m guest.serve deliver`` — one JSON event in,
one JSON reply out — and ``serve``, the warm agent that takes the same events
on a unix socket and streams (warm.py).

The host tries the warm agent first (no Python start, no ``openai`` import
per delivery) and falls back to ``deliver`` over SSH exec as ``claw`` when the
service is down, so a broken service never costs a reply. A one-shot
delivery is a fresh process, so a crash costs one delivery, not the agent. A
file lock on the state directory makes two deliveries to the same claw run
one after the other, whichever way they came, so their history writes never
interleave.

stdout carries exactly one JSON object; diagnostics go to stderr. Exit codes:
0 a reply (also "budget used up" and "model unavailable", which are replies),
2 a malformed event or usage error, 3 the lock was not obtained in time,
1 an unexpected failure (the JSON says which exception type).

Test hook: ``CLAWDEN_AGENT_TEST_SCRIPT=<file.json>`` replaces the model with a
``FakeChatModel`` scripted from that file (see ``model.script_from_json``).
It exists for the package's own tests; the host's SSH exec passes no
environment (sshd accepts none), so it cannot be set by the host or a peer.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from .agent import Agent, Event, EventError, Limits
from .hostapi import HOST_API_URL, PROXY_URL, HttpHostApi
from .model import (
    DUMMY_KEY,
    GATEWAY_URL,
    ChatModel,
    OpenAIChatModel,
    TextSink,
    script_from_json,
)
from .templates import DEFAULT_MEMBER, DEFAULT_NAME, seed_workspace
from .tools import ToolContext, default_toolbox, verified_skills
from .warm import MAX_EVENT_BYTES, ServeLimits, WarmAgent, listening_socket

TEST_SCRIPT_ENV = "CLAWDEN_AGENT_TEST_SCRIPT"


class LockTimeout(Exception):
    pass


@contextmanager
def delivery_lock(state_dir: Path, timeout_s: float) -> Iterator[None]:
    """An exclusive flock on ``state_dir/agent.lock``; released when the process dies too."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another delivery held the lock for {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", type=Path, default=Path("/data/workspace"))
    parser.add_argument("--state-dir", type=Path, default=Path("/data/home/.clawden/agent"))
    parser.add_argument("--gateway", default=GATEWAY_URL, help="OpenAI-compatible base URL")
    parser.add_argument("--host-api", default=HOST_API_URL)
    parser.add_argument("--proxy", default=PROXY_URL)
    parser.add_argument("--model", default=None, help="default: the gateway's first model")
    parser.add_argument("--heartbeat-model", default=None)
    parser.add_argument("--max-steps", type=int, default=Limits.max_steps)
    parser.add_argument("--context-chars", type=int, default=Limits.context_chars)
    parser.add_argument("--lock-timeout", type=float, default=900.0)
    parser.add_argument("--identity", type=Path, default=Path("/run/clawden/claw.json"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m guest.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    deliver = sub.add_parser("deliver", help="read one JSON event on stdin, write one reply")
    _common(deliver)
    serve = sub.add_parser("serve", help="the warm agent: take deliveries on a unix socket")
    _common(serve)
    serve.add_argument(
        "--socket", type=Path, default=None, help="bind this path (default: systemd's socket)"
    )
    serve.add_argument("--max-deliveries", type=int, default=ServeLimits.max_deliveries)
    serve.add_argument("--max-rss-mib", type=int, default=ServeLimits.max_rss_mib)
    serve.add_argument("--max-connections", type=int, default=ServeLimits.max_connections)
    return parser


def _model(args: argparse.Namespace) -> tuple[ChatModel, OpenAIChatModel | None]:
    script = os.environ.get(TEST_SCRIPT_ENV)
    if script:
        return script_from_json(json.loads(Path(script).read_text(encoding="utf-8"))), None
    real = OpenAIChatModel(args.gateway, DUMMY_KEY, default_model=args.model)
    return real, real


def _identity(path: Path) -> tuple[str, str]:
    """(claw name, member) from the seed disk's claw.json; defaults if unreadable,
    because a missing name must not cost the owner their reply."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return DEFAULT_NAME, DEFAULT_MEMBER
    if not isinstance(data, dict):
        return DEFAULT_NAME, DEFAULT_MEMBER
    name, member = data.get("name"), data.get("member")
    return (
        name if isinstance(name, str) and name else DEFAULT_NAME,
        member if isinstance(member, str) and member else DEFAULT_MEMBER,
    )


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def parse_event(raw: bytes) -> Event:
    """The event in ``raw`` (one JSON object); EventError says what is wrong."""
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError(f"the event is larger than {MAX_EVENT_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise EventError("the event is not JSON") from None
    return Event.from_json(data)


def run_event(
    args: argparse.Namespace, raw: bytes, model: ChatModel, on_text: TextSink | None = None
) -> tuple[int, dict[str, Any]]:
    """One delivery, whichever way it came: (exit code, the final JSON line)."""
    try:
        event = parse_event(raw)
    except EventError as exc:
        return 2, {"error": {"type": "bad_event", "message": str(exc)}}

    def clock() -> datetime:
        return datetime.now().astimezone()  # local time: daily notes follow the owner's day

    limits = Limits(
        max_steps=args.max_steps,
        context_chars=args.context_chars,
        model=args.model,
        heartbeat_model=args.heartbeat_model,
    )
    try:
        with delivery_lock(args.state_dir, args.lock_timeout):
            name, member = _identity(args.identity)
            seed_workspace(args.workspace, name, member, clock(), state_dir=args.state_dir)
            host = HttpHostApi(args.host_api, args.proxy)
            context = ToolContext(args.workspace, host, clock)
            agent = Agent(
                args.workspace,
                args.state_dir,
                model,
                default_toolbox(context),
                clock,
                limits,
                skills=lambda: verified_skills(context),
            )
            reply = agent.handle(event, on_text)
    except LockTimeout as exc:
        return 3, {"error": {"type": "busy", "message": str(exc)}}
    return 0, reply.to_json()


def deliver(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1)
    model, closable = _model(args)
    try:
        code, payload = run_event(args, raw, model)
    finally:
        if closable is not None:
            closable.close()
    _emit(payload)
    return code


def serve(args: argparse.Namespace) -> int:
    """The warm agent (warm.py): one model client for every delivery."""
    listener = listening_socket(args.socket)
    # Imported and connected once, before the first delivery arrives.
    _, closable = _model(args)

    def handle(raw: bytes, on_text: TextSink) -> tuple[int, dict[str, Any]]:
        # Every delivery starts as a one-shot one would: the model chosen
        # afresh (the test hook's scripted model from its first step).
        fresh = closable.for_delivery() if closable is not None else _model(args)[0]
        try:
            return run_event(args, raw, fresh, on_text)
        except Exception as exc:  # noqa: BLE001 - the host must always get one JSON line
            logging.getLogger(__name__).exception("delivery failed")
            return 1, {"error": {"type": "internal", "message": type(exc).__name__}}

    limits = ServeLimits(args.max_deliveries, args.max_rss_mib, args.max_connections)
    try:
        why = WarmAgent(listener, handle, limits).serve_forever()
    finally:
        if closable is not None:
            closable.close()
    logging.getLogger(__name__).warning("warm agent restarting: %s", why)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    try:
        return deliver(args)
    except Exception as exc:  # noqa: BLE001 - the host must always get one JSON line
        logging.getLogger(__name__).exception("delivery failed")
        _emit({"error": {"type": "internal", "message": type(exc).__name__}})
        return 1


if __name__ == "__main__":
    sys.exit(main())
