"""The host's way in: ``python3 -m guest.serve deliver`` — one JSON event in, one JSON reply out.

The host runs this over SSH exec as ``claw`` for every message, job and
heartbeat. There is deliberately no listening socket inside the VM: each
delivery is a fresh process (so "restart the agent if it dies" is free), the
SSH channel is already authenticated, and a crash costs one delivery, not the
agent. A file lock on the state directory makes two deliveries to the same
claw run one after the other, so their history writes never interleave.

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
from .model import DUMMY_KEY, GATEWAY_URL, ChatModel, OpenAIChatModel, script_from_json
from .templates import DEFAULT_MEMBER, DEFAULT_NAME, seed_workspace
from .tools import ToolContext, default_toolbox, verified_skills

TEST_SCRIPT_ENV = "CLAWDEN_AGENT_TEST_SCRIPT"
MAX_EVENT_BYTES = 1024 * 1024


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m guest.serve")
    sub = parser.add_subparsers(dest="command", required=True)
    deliver = sub.add_parser("deliver", help="read one JSON event on stdin, write one reply")
    deliver.add_argument("--workspace", type=Path, default=Path("/data/workspace"))
    deliver.add_argument("--state-dir", type=Path, default=Path("/data/home/.clawden/agent"))
    deliver.add_argument("--gateway", default=GATEWAY_URL, help="OpenAI-compatible base URL")
    deliver.add_argument("--host-api", default=HOST_API_URL)
    deliver.add_argument("--proxy", default=PROXY_URL)
    deliver.add_argument("--model", default=None, help="default: the gateway's first model")
    deliver.add_argument("--heartbeat-model", default=None)
    deliver.add_argument("--max-steps", type=int, default=Limits.max_steps)
    deliver.add_argument("--context-chars", type=int, default=Limits.context_chars)
    deliver.add_argument("--lock-timeout", type=float, default=900.0)
    deliver.add_argument("--identity", type=Path, default=Path("/run/clawden/claw.json"))
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


def deliver(args: argparse.Namespace) -> int:
    raw = sys.stdin.buffer.read(MAX_EVENT_BYTES + 1)
    try:
        if len(raw) > MAX_EVENT_BYTES:
            raise EventError(f"the event is larger than {MAX_EVENT_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            raise EventError("the event is not JSON") from None
        event = Event.from_json(data)
    except EventError as exc:
        _emit({"error": {"type": "bad_event", "message": str(exc)}})
        return 2

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
            model, closable = _model(args)
            try:
                host = HttpHostApi(args.host_api, args.proxy)
                context = ToolContext(args.workspace, host, clock)
                tools = default_toolbox(context)
                agent = Agent(
                    args.workspace,
                    args.state_dir,
                    model,
                    tools,
                    clock,
                    limits,
                    skills=lambda: verified_skills(context),
                )
                reply = agent.handle(event)
            finally:
                if closable is not None:
                    closable.close()
    except LockTimeout as exc:
        _emit({"error": {"type": "busy", "message": str(exc)}})
        return 3
    _emit(reply.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    args = _parser().parse_args(argv)
    try:
        return deliver(args)
    except Exception as exc:  # noqa: BLE001 - the host must always get one JSON line
        logging.getLogger(__name__).exception("delivery failed")
        _emit({"error": {"type": "internal", "message": type(exc).__name__}})
        return 1


if __name__ == "__main__":
    sys.exit(main())
