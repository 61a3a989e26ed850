"""Delivering events to a claw's agent over a real sshd (socat-bridged, no VM).

The "guest" is this machine, so the agent is a small script (``FAKE_AGENT``)
that answers the way docs/agent.md says ``clawden-agent deliver`` does, in a
mode chosen by its argument.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest

from appliance.channel.forwarding import ServiceRegistry
from appliance.channel.transport import ChannelTarget, open_transport, run_command
from appliance.config import Settings
from appliance.controller import rpc
from appliance.controller.context import Context
from appliance.controller.daemon import Controller
from appliance.controller.delivery import (
    CRASHED_TEXT,
    MAX_REPLY_BYTES,
    MAX_STREAM_BYTES,
    AgentError,
    ChannelDelivery,
    converse,
    deliver_event,
    fit_message,
    schedule_event,
)
from appliance.controller.heartbeat_source import MAX_HEARTBEAT_BYTES, ChannelHeartbeatSource
from appliance.core.domain import Accelerator
from appliance.core.errors import ClawdenError, InvalidInput, NotFound, Unavailable
from appliance.core.messages import MAX_TEXT_BYTES
from appliance.core.model import Claw, ClawState, domain_name, legacy_domain_name
from appliance.core.ports import AcceleratorChoice, DomainState
from appliance.core.schedule import CreatedBy, Job, JobKind
from appliance.guest.warm import ServeLimits
from appliance.hypervisor.fake import FakeHypervisor
from appliance.store import Store, open_db
from appliance.store.messages import MessageRepository
from tests.support.local_sshd import LocalSshd, local_sshd, sshd_available
from tests.unit.test_guest_warm import _pieces, serving

COUNTERS = ("model_calls", "tool_calls", "prompt_tokens", "completion_tokens", "trimmed")

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")

FAKE_AGENT = r"""
import json, sys, time
mode = sys.argv[1]
event = json.loads(sys.stdin.read())
def out(payload, code=0):
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.exit(code)
if mode == "echo":
    out({"text": "you said: " + event.get("text", "") + " via " + event.get("channel", "")
         + " from " + event.get("sender", ""), "status": "reply", "model_calls": 1,
         "tool_calls": 0, "prompt_tokens": 10, "completion_tokens": 3, "trimmed": 0,
         "extra": "dropped"})
if mode == "event":
    out({"text": json.dumps(event), "status": "reply"})
if mode == "heartbeat_ok":
    out({"text": "HEARTBEAT_OK", "status": "heartbeat_ok", "model_calls": 1})
if mode == "escape":
    out({"text": "\x1b[2Jgotcha\nline two", "status": "budget", "model_calls": -4})
if mode == "busy":
    out({"error": {"type": "busy", "message": "another delivery held the lock for 900 s"}}, 3)
if mode == "bad_event":
    out({"error": {"type": "bad_event", "message": "a message event needs text"}}, 2)
if mode == "internal":
    sys.stderr.write("Traceback: boom\n")
    out({"error": {"type": "internal", "message": "ZeroDivisionError"}}, 1)
if mode == "garbage":
    print("this is not json")
if mode == "two_lines":
    print("{}")
    out({"text": "a", "status": "reply"})
if mode == "unknown_status":
    out({"text": "a", "status": "approved"})
if mode == "huge":
    sys.stdout.write("x" * (2 * 1024 * 1024))
if mode == "long_reply":
    out({"text": "é" * 40000, "status": "reply"})
if mode == "slow":
    time.sleep(30)
"""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    with local_sshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    return script


def _cmd(agent: Path, mode: str) -> list[str]:
    return [sys.executable, str(agent), mode]


def _target(server: LocalSshd, claw: str) -> ChannelTarget:
    return ChannelTarget(
        claw=claw,
        socket_path=server.socket_path,
        pinned_host_key=server.host_public,
        client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private)),
        user=server.user,
    )


@pytest.fixture
def transport(sshd: LocalSshd) -> Iterator[paramiko.Transport]:
    t = open_transport(_target(sshd, "alice"), timeout=10)
    yield t
    t.close()


@pytest.fixture
def messages(tmp_path: Path) -> Iterator[MessageRepository]:
    db = open_db(tmp_path / "store.db")
    yield MessageRepository(db)
    db.close()


# ---- run_command's stdin -------------------------------------------------------
def test_stdin_reaches_the_command_and_ends_with_eof(transport: paramiko.Transport) -> None:
    out: list[bytes] = []
    data = bytes(range(256)) * 4096 + b"end"  # 1 MiB: more than one SSH window
    code = run_command(transport, "cat; echo done >&2", out.append, lambda b: None, stdin=data)
    assert code == 0
    assert b"".join(out) == data


def test_empty_stdin_is_just_eof(transport: paramiko.Transport) -> None:
    out: list[bytes] = []
    assert run_command(transport, "wc -c", out.append, lambda b: None, stdin=b"") == 0
    assert b"".join(out).strip() == b"0"


def test_a_command_that_ignores_stdin_still_finishes(transport: paramiko.Transport) -> None:
    out: list[bytes] = []
    code = run_command(transport, "echo hi", out.append, lambda b: None, stdin=b"x" * 5_000_000)
    assert code == 0 and b"".join(out) == b"hi\n"


# ---- deliver_event ---------------------------------------------------------------
def test_a_reply_is_parsed_and_reduced_to_known_fields(
    transport: paramiko.Transport, agent: Path
) -> None:
    event = {"type": "message", "text": "hi", "channel": "cli", "sender": "operator"}
    reply = deliver_event(transport, event, 30, command=_cmd(agent, "echo"), claw="alice")
    assert reply == {
        "text": "you said: hi via cli from operator",
        "status": "reply",
        "model_calls": 1,
        "tool_calls": 0,
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "trimmed": 0,
    }


def test_untrusted_reply_text_is_kept_as_data_and_bad_counters_zeroed(
    transport: paramiko.Transport, agent: Path
) -> None:
    event = {"type": "heartbeat"}
    reply = deliver_event(transport, event, 30, command=_cmd(agent, "escape"), claw="alice")
    assert reply["text"] == "\x1b[2Jgotcha\nline two"  # escaping is the display's job
    assert reply["status"] == "budget" and reply["model_calls"] == 0


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("busy", Unavailable, "busy with another delivery"),
        ("bad_event", InvalidInput, "refused the event: a message event needs text"),
        ("internal", AgentError, "exit code 1 (internal: ZeroDivisionError)"),
        ("garbage", AgentError, "malformed reply (not JSON)"),
        ("two_lines", AgentError, "malformed reply (2 lines instead of one)"),
        ("unknown_status", AgentError, "without a known status"),
        ("huge", AgentError, f"more than {MAX_REPLY_BYTES} bytes"),
    ],
)
def test_agent_failures_are_clear_errors(
    transport: paramiko.Transport, agent: Path, mode: str, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        deliver_event(transport, {"type": "heartbeat"}, 30, command=_cmd(agent, mode), claw="alice")
    assert words in str(info.value)
    assert "alice" in str(info.value)


def test_a_missing_agent_says_to_rebuild_the_image(transport: paramiko.Transport) -> None:
    with pytest.raises(Unavailable, match="no agent.*clawden image build"):
        deliver_event(transport, {"type": "heartbeat"}, 30, command=["no-such-agent-xyz"])


def test_a_slow_agent_times_out_clearly(transport: paramiko.Transport, agent: Path) -> None:
    with pytest.raises(Unavailable, match="did not reply within 1 s"):
        deliver_event(transport, {"type": "heartbeat"}, 1, command=_cmd(agent, "slow"))


def test_bad_events_are_refused_before_anything_runs(transport: paramiko.Transport) -> None:
    with pytest.raises(InvalidInput, match="needs a type"):
        deliver_event(transport, {"type": "wat"}, 5, command=["false"])
    with pytest.raises(InvalidInput, match="at most"):
        deliver_event(transport, {"type": "message", "text": "x" * 2_000_000}, 5)


# ---- converse (the say op's core) and the scheduler's Delivery -----------------
def test_converse_stores_both_sides(
    transport: paramiko.Transport, agent: Path, messages: MessageRepository
) -> None:
    talk = converse(messages, transport, "alice", "hello", command=_cmd(agent, "echo"))
    stored = messages.list("alice")
    assert [(m.direction, m.channel, m.sender, m.kind, m.text, m.delivered) for m in stored] == [
        ("in", "cli", "operator", "chat", "hello", True),
        ("out", "cli", "alice", "chat", "you said: hello via cli from operator", True),
    ]
    assert talk.outbound is not None and talk.outbound.id == stored[1].id


def test_converse_does_not_store_heartbeat_ok(
    transport: paramiko.Transport, agent: Path, messages: MessageRepository
) -> None:
    talk = converse(messages, transport, "alice", "ping", command=_cmd(agent, "heartbeat_ok"))
    assert talk.outbound is None and talk.reply["status"] == "heartbeat_ok"
    assert [m.direction for m in messages.list("alice")] == ["in"]


def test_a_failed_delivery_leaves_the_message_undelivered(
    transport: paramiko.Transport, agent: Path, messages: MessageRepository
) -> None:
    with pytest.raises(Unavailable):
        converse(messages, transport, "alice", "hello", command=_cmd(agent, "busy"))
    [inbound] = messages.list("alice")
    assert inbound.direction == "in" and not inbound.delivered


# ---- the warm agent ---------------------------------------------------------------
# The "guest" is this machine: the real WarmAgent (or a process that dies the
# way it could) listens on a socket here, and socat reaches it over the real
# sshd exactly as the host's login reaches the guest's.
DIES_MID_DELIVERY = r"""
import json, os, socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
conn.sendall(json.dumps({"hello": "clawden-agent", "pid": os.getpid()}).encode() + b"\n")
conn.recv(65536)
conn.sendall(b'{"delta": "Let me "}\n')
os._exit(1)  # as a crash or the OOM killer would: no final line
"""


def _warm(path: Path) -> tuple[str, ...]:
    return ("socat", "-t", "60", "-", f"UNIX-CONNECT:{path}")


def _one_shot_forbidden() -> list[str]:
    # A fallback would run this and fail loudly: proof the warm path answered.
    return ["sh", "-c", "echo one-shot ran >&2; exit 9"]


def _warm_only(transport: paramiko.Transport, path: Path, **kwargs: Any) -> dict[str, Any]:
    """A heartbeat delivered to the warm agent at ``path`` (no fallback)."""
    return deliver_event(
        transport,
        {"type": "heartbeat"},
        30,
        command=_one_shot_forbidden(),
        warm=_warm(path),
        claw="alice",
        **kwargs,
    )


def test_the_warm_agent_streams_its_reply_in_pieces(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    path = tmp_path / "warm.sock"
    got: list[str] = []
    event = {"type": "message", "text": "hi", "channel": "cli"}
    with serving(path, _pieces):
        reply = deliver_event(
            transport,
            event,
            30,
            command=_one_shot_forbidden(),
            warm=_warm(path),
            on_text=got.append,
            claw="alice",
        )
    assert got == ["you ", "said ", "hi"]
    assert reply == {"text": "you said hi", "status": "reply", **dict.fromkeys(COUNTERS, 0)}


def test_without_a_warm_agent_the_event_is_delivered_one_shot(
    transport: paramiko.Transport, agent: Path, tmp_path: Path
) -> None:
    event = {"type": "message", "text": "hi", "channel": "cli", "sender": "operator"}
    got: list[str] = []
    reply = deliver_event(
        transport,
        event,
        30,
        command=_cmd(agent, "echo"),
        warm=_warm(tmp_path / "none.sock"),
        on_text=got.append,
        claw="alice",
    )
    assert reply["text"] == "you said: hi via cli from operator"
    assert got == []  # the one-shot agent does not stream


def test_a_warm_agent_that_dies_mid_delivery_gives_the_owner_an_error_reply(
    transport: paramiko.Transport, tmp_path: Path, messages: MessageRepository
) -> None:
    path = tmp_path / "dies.sock"
    script = tmp_path / "dies.py"
    script.write_text(DIES_MID_DELIVERY)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
        got: list[str] = []
        talk = converse(
            messages,
            transport,
            "alice",
            "hello",
            command=_one_shot_forbidden(),
            warm=_warm(path),
            on_text=got.append,
        )
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert got == ["Let me "]
    assert talk.reply["status"] == "error" and talk.reply["text"] == CRASHED_TEXT
    inbound, outbound = messages.list("alice")
    assert (inbound.text, inbound.delivered) == ("hello", True)
    assert (outbound.direction, outbound.text) == ("out", CRASHED_TEXT)


def test_a_busy_warm_agent_is_unavailable_not_bypassed(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    path = tmp_path / "busy.sock"
    with serving(path, _pieces, ServeLimits(max_connections=0)):
        with pytest.raises(Unavailable, match="busy with another delivery"):
            _warm_only(transport, path)


def test_a_warm_agent_flooding_pieces_is_cut_off(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    def flood(raw: bytes, on_text: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
        for _ in range(MAX_STREAM_BYTES // 1000 + 10):
            on_text("x" * 1000)
        return 0, {"text": "done", "status": "reply"}

    got: list[str] = []
    with serving(tmp_path / "flood.sock", flood):
        with pytest.raises(AgentError, match=f"more than {MAX_STREAM_BYTES} bytes"):
            _warm_only(transport, tmp_path / "flood.sock", on_text=got.append)
    assert 0 < len(got) * 1000 <= MAX_STREAM_BYTES


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (b'{"hello": "clawden-agent"}\nnot json\n', "not UTF-8 JSON"),
        (b'{"hello": "clawden-agent"}\n{"delta": 5}\n', "not a string"),
        (b'{"hello": "clawden-agent"}\n{"text": "a", "status": "reply"}\n{}\n', "after the"),
        (b'{"text": "a", "status": "reply"}\n', "no hello first"),
    ],
)
def test_a_warm_agent_breaking_the_protocol_is_refused(
    transport: paramiko.Transport, tmp_path: Path, lines: bytes, why: str
) -> None:
    path = tmp_path / "bad.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(lines)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(AgentError, match=why):
            _warm_only(transport, path)
    finally:
        thread.join(10)
        listener.close()


def test_a_reply_too_long_for_a_message_is_cut_and_marked(
    transport: paramiko.Transport, agent: Path, messages: MessageRepository
) -> None:
    talk = converse(messages, transport, "alice", "talk", command=_cmd(agent, "long_reply"))
    assert talk.outbound is not None
    assert len(talk.outbound.text.encode()) <= MAX_TEXT_BYTES
    assert talk.outbound.text.endswith("[… cut: the reply was 80000 bytes]")
    assert fit_message("short") == "short"


def _job(kind: JobKind, spec: str = "", text: str = "Plan the week.") -> Job:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Job(7, "alice", kind, spec, "UTC", text, CreatedBy.OPERATOR, True, now, now)


def test_schedule_events_follow_the_agent_contract() -> None:
    assert schedule_event(_job(JobKind.HEARTBEAT, "every=30m model=mini"), "scheduled") == {
        "type": "heartbeat",
        "model": "mini",
    }
    assert schedule_event(_job(JobKind.CRON, "0 9 * * *"), "scheduled") == {
        "type": "schedule",
        "text": "Plan the week.",
        "channel": "schedule",
    }
    assert "delivered late" in schedule_event(_job(JobKind.CRON, "0 9 * * *"), "missed")["text"]


def test_channel_delivery_implements_the_scheduler_port(
    transport: paramiko.Transport, agent: Path
) -> None:
    asked: list[str] = []

    def transport_for(claw: str) -> paramiko.Transport:
        asked.append(claw)
        return transport

    ok = ChannelDelivery(transport_for, 30, _cmd(agent, "heartbeat_ok"))
    result = ok.deliver(_job(JobKind.HEARTBEAT), "scheduled")
    assert (result.ok, result.reply) == (True, "HEARTBEAT_OK")
    echo = ChannelDelivery(transport_for, 30, _cmd(agent, "event"))
    result = echo.deliver(_job(JobKind.AT, "2026-01-02T09:00"), "scheduled")
    assert result.reply is not None and '"type": "schedule"' in result.reply
    assert "reply, 0 model calls" == result.detail
    assert asked == ["alice", "alice"]


# ---- the controller's say op, end to end ---------------------------------------
class _RunningHypervisor(FakeHypervisor):
    """Every claw's domain runs (the claws' "guest" is the local sshd)."""

    def state(self, name: str) -> DomainState | None:
        return DomainState.RUNNING


class _HarnessController(Controller):
    sshd: LocalSshd

    def _target_for(self, claw: str) -> ChannelTarget:
        return _target(self.sshd, claw)


@pytest.fixture
def controller(tmp_path: Path, sshd: LocalSshd, agent: Path) -> Iterator[_HarnessController]:
    settings = Settings(home=tmp_path / "home", libvirt_uri="fake:///")
    settings.ensure_dirs()
    db = open_db(settings.db_path)
    ctx = Context(
        settings=settings,
        store=Store(db),
        hypervisor=_RunningHypervisor(),
        pick_accelerator=lambda: AcceleratorChoice(Accelerator.TCG, "test"),
        actor="controller",
    )
    ctx.claws.add(Claw("alice", "Alice", ClawState.RUNNING, "img", 1, 512, "2026-01-01"))
    _HarnessController.sshd = sshd
    ctl = _HarnessController(
        lambda: ctx,
        ServiceRegistry(),
        say=lambda line: None,
        agent_command=_cmd(agent, "echo"),
        as_agent=(),  # this machine is the "guest": no as-claw helper here
    )
    thread = threading.Thread(target=ctl.run, daemon=True)
    thread.start()
    for _ in range(200):
        if settings.controller_socket.exists():
            break
        threading.Event().wait(0.05)
    yield ctl
    ctl.stop()
    thread.join(10)
    db.close()


def test_say_op_delivers_and_stores_both_ways(
    controller: _HarnessController, tmp_path: Path
) -> None:
    sock = tmp_path / "home" / "run" / "controller.sock"
    request = {"op": "say", "claw": "alice", "text": "hi there", "timeout": 30, "wait": 30}
    reply = rpc.call(sock, request, timeout=60)
    assert reply["text"] == "you said: hi there via cli from operator"
    assert reply["status"] == "reply" and reply["done"] is True
    stored = MessageRepository(controller._ctx.store.db).list("alice")
    assert [(m.id, m.direction, m.text) for m in stored] == [
        (reply["in_id"], "in", "hi there"),
        (reply["out_id"], "out", reply["text"]),
    ]


def test_say_cli_prints_the_escaped_reply(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    agent: Path,
) -> None:
    from appliance.cli import main

    monkeypatch.setenv("CLAWDEN_HOME", str(tmp_path / "home"))
    controller._agent_command = tuple(_cmd(agent, "escape"))
    assert main(["claw", "say", "alice", "hello", "--timeout", "30"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\\x1b[2Jgotcha\nline two\n"
    assert "status budget" in captured.err


def test_say_cli_prints_the_pieces_as_they_stream_escaped(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from appliance.cli import main

    def hostile(raw: bytes, on_text: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
        for piece in ("\x1b[2J", "got", "cha"):
            on_text(piece)
        return 0, {"text": "\x1b[2Jgotcha", "status": "reply"}

    monkeypatch.setenv("CLAWDEN_HOME", str(tmp_path / "home"))
    with serving(tmp_path / "warm.sock", hostile):
        controller._warm_command = _warm(tmp_path / "warm.sock")
        assert main(["claw", "say", "alice", "hello", "--timeout", "30"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "\\x1b[2Jgotcha\n"  # the pieces, escaped; not the reply again
    [_, out] = MessageRepository(controller._ctx.store.db).list("alice")
    assert out.text == "\x1b[2Jgotcha"  # stored as data, escaped where shown


def test_say_refuses_unknown_claws_and_empty_text(
    controller: _HarnessController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "home" / "run" / "controller.sock"
    with pytest.raises(InvalidInput, match="empty"):
        rpc.call(sock, {"op": "say", "claw": "alice", "text": "  "})
    with pytest.raises(Exception, match="no claw named 'bob'"):
        rpc.call(sock, {"op": "say", "claw": "bob", "text": "hi"})
    assert MessageRepository(controller._ctx.store.db).list("alice") == []


def test_the_panels_say_delivers_as_the_web_chats_sender(
    controller: _HarnessController, tmp_path: Path
) -> None:
    """``ControllerClawOps.say`` (the web chat's ``Messenger``) over a real
    sshd and the scripted agent: the channel and the session's account reach
    the agent and the store."""
    from web.controller_ops import ControllerClawOps

    ops = ControllerClawOps(controller, controller._ctx)
    pieces: list[str] = []
    reply = ops.say("alice", "hi there", "web", pieces.append, sender="ana")
    assert reply.text == "you said: hi there via web from ana"
    stored = MessageRepository(controller._ctx.store.db).list("alice")
    assert [(m.id, m.direction, m.channel, m.sender) for m in stored] == [
        (reply.in_id, "in", "web", "ana"),
        (reply.out_id, "out", "web", "alice"),
    ]


# ---- the heartbeat source reads HEARTBEAT.md over the channel ---------------------
def test_heartbeat_source_reads_the_checklist_over_the_channel(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    path = tmp_path / "HEARTBEAT.md"
    source = ChannelHeartbeatSource(lambda claw: transport, path=str(path), runner=())
    assert source.read("alice") is None  # no file: no checklist, not an error
    path.write_text("# Checks\n- [ ] water the plants\n")
    assert source.read("alice") == "# Checks\n- [ ] water the plants\n"
    path.write_text("- [ ] " + "x" * (2 * MAX_HEARTBEAT_BYTES))
    text = source.read("alice")
    assert text is not None and len(text) == MAX_HEARTBEAT_BYTES and text.startswith("- [ ] x")


def test_heartbeat_source_reports_an_unreadable_checklist(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    source = ChannelHeartbeatSource(
        lambda claw: transport, path=str(tmp_path), runner=()
    )  # a directory
    with pytest.raises(Unavailable, match="reading claw 'alice'.s HEARTBEAT.md failed"):
        source.read("alice")


def test_heartbeat_source_passes_on_an_unreachable_claw() -> None:
    def nowhere(claw: str) -> paramiko.Transport:
        raise Unavailable(f"claw {claw!r} is stopped", "start it")

    with pytest.raises(Unavailable, match="stopped"):
        ChannelHeartbeatSource(nowhere).read("alice")


# ---- the controller's exec op: stdin and options, through the real RPC ----------
def _run_exec(
    sock: Path, argv: list[str], chunks: Iterable[bytes] | None = None, **extra: object
) -> tuple[int, bytes]:
    request = {"op": "exec", "claw": "alice", "argv": argv, "timeout": 30, "wait": 30}
    request.update(extra)
    if chunks is not None:
        request["stdin"] = True
    out = bytearray()
    code = None
    for reply in rpc.stream(sock, request, send_input=chunks):
        if "stdout" in reply:
            out += rpc.decode_chunk(reply["stdout"])
        code = reply.get("exit", code)
    assert isinstance(code, int)
    return code, bytes(out)


def test_exec_op_streams_stdin_to_the_command(
    controller: _HarnessController, tmp_path: Path
) -> None:
    sock = tmp_path / "home" / "run" / "controller.sock"
    data = hashlib.sha256(b"seed").digest() * (3 * 2**20 // 32)  # 3 MiB: many chunks and windows
    chunks = (data[i : i + 50_000] for i in range(0, len(data), 50_000))
    code, out = _run_exec(sock, ["cat"], chunks)
    assert code == 0 and out == data
    code, out = _run_exec(sock, ["sh", "-c", "cat; echo end"], iter([b"one ", b"two\n"]))
    assert (code, out) == (0, b"one two\nend\n")


def test_exec_op_without_stdin_gives_the_command_an_empty_input(
    controller: _HarnessController, tmp_path: Path
) -> None:
    sock = tmp_path / "home" / "run" / "controller.sock"
    assert _run_exec(sock, ["cat"]) == (0, b"")  # EOF at once: `cat` does not wait
    assert _run_exec(sock, ["wc", "-c"], stdin=False) == (0, b"0\n")


def test_exec_op_stops_taking_input_the_command_no_longer_reads(
    controller: _HarnessController, tmp_path: Path
) -> None:
    sock = tmp_path / "home" / "run" / "controller.sock"
    started = time.monotonic()
    code, out = _run_exec(sock, ["head", "-c", "5"], itertools.repeat(b"x" * 65536))
    assert (code, out) == (0, b"xxxxx")
    assert time.monotonic() - started < 20


def _cli_exec(
    home: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: object | None = None
) -> int:
    from appliance.cli import main

    monkeypatch.setenv("CLAWDEN_HOME", str(home))
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", stdin)
    return main(["claw", "exec", *argv])


def test_exec_cli_forwards_piped_stdin(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # echo hi | clawden claw exec alice -- cat
    read_end, write_end = os.pipe()
    os.write(write_end, b"hi\n")
    os.close(write_end)
    with os.fdopen(read_end, "rb") as piped:
        assert _cli_exec(tmp_path / "home", monkeypatch, ["alice", "--", "cat"], piped) == 0
    assert capsys.readouterr().out == "hi\n"


def test_exec_cli_forwards_nothing_from_a_terminal(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    primary, secondary = os.openpty()
    os.write(primary, b"typed ahead\n")  # never forwarded: the command's stdin is empty
    try:
        with os.fdopen(secondary, "rb") as tty:
            assert os.isatty(tty.fileno())
            code = _cli_exec(tmp_path / "home", monkeypatch, ["alice", "--", "wc", "-c"], tty)
        assert code == 0
        assert capsys.readouterr().out == "0\n"
    finally:
        os.close(primary)


@pytest.mark.parametrize(
    "argv",
    [
        ["alice", "--timeout", "1", "--", "sleep", "10"],
        ["--timeout", "1", "alice", "--", "sleep", "10"],
        ["alice", "--timeout=1", "--", "sleep", "10"],
    ],
)
def test_exec_cli_takes_timeout_before_or_after_the_name(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    started = time.monotonic()
    assert _cli_exec(tmp_path / "home", monkeypatch, argv) != 0
    assert time.monotonic() - started < 8
    err = capsys.readouterr().err
    assert "did not finish within 1 s" in err and err.startswith("error: ")


def test_exec_cli_passes_option_like_arguments_after_the_separator_to_the_command(
    controller: _HarnessController,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    argv = ["alice", "--timeout", "20", "--", "echo", "--timeout", "5", "--"]
    assert _cli_exec(home, monkeypatch, argv) == 0
    assert capsys.readouterr().out == "--timeout 5 --\n"
    assert _cli_exec(home, monkeypatch, ["alice", "--", "echo", "--timeout"]) == 0
    assert capsys.readouterr().out == "--timeout\n"
    assert _cli_exec(home, monkeypatch, ["alice", "echo", "-n", "plain"]) == 0  # no `--`, as ever
    assert capsys.readouterr().out == "plain"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["alice", "--timeout", "5", "sleep", "1"], "must be followed by `--`"),
        (["alice", "--bogus", "--", "true"], "unknown option(s) before `--`: --bogus"),
        (["alice", "--timeout", "soon", "--", "true"], "invalid float value: 'soon'"),
        (["alice", "--timeout", "5", "--"], "no command given"),
    ],
)
def test_exec_cli_option_mistakes_are_one_line_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    words: str,
) -> None:
    assert _cli_exec(tmp_path / "home", monkeypatch, argv) == InvalidInput.exit_code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


# ---- the controller's connection lookup ------------------------------------------
class _CountingHypervisor(FakeHypervisor):
    """Every claw's domain runs except dave's; every state query is recorded."""

    def state(self, name: str) -> DomainState | None:
        self._check("state", name)
        return None if name.endswith("-dave") else DomainState.RUNNING


def test_a_connection_lookup_asks_about_that_one_claw_only(tmp_path: Path, sshd: LocalSshd) -> None:
    settings = Settings(home=tmp_path / "home", libvirt_uri="fake:///")
    settings.ensure_dirs()
    db = open_db(settings.db_path)
    hv = _CountingHypervisor()
    ctx = Context(
        settings=settings,
        store=Store(db),
        hypervisor=hv,
        pick_accelerator=lambda: AcceleratorChoice(Accelerator.TCG, "test"),
        actor="controller",
    )
    for name in ("alice", "bob", "carol", "dave"):
        ctx.claws.add(Claw(name, name.title(), ClawState.RUNNING, "img", 1, 512, "2026-01-01"))
    ctx.claws.add(Claw("erin", "Erin", ClawState.STOPPED, "img", 1, 512, "2026-01-01"))
    _HarnessController.sshd = sshd
    # Not run(): no main loop syncing every claw in the background.
    ctl = _HarnessController(lambda: ctx, ServiceRegistry(), say=lambda line: None)
    try:
        conn, ready = ctl._ready_connection("alice", 30)
        assert ready and conn is ctl.channels.get("alice")
        assert ctl.transport_for("alice").is_active()
        alice = domain_name(settings.installation_tag, "alice")
        # Its state, and (the boot burst) its live CPU cap lifted when the
        # connection was made and put back once ready: nothing of any other claw.
        # (The hook runs on the channel's thread just after it reports ready.)
        deadline = time.monotonic() + 10
        while hv.calls.count(("set_live_cpu_cap", alice)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hv.calls.count(("set_live_cpu_cap", alice)) == 2
        assert set(hv.calls) == {("state", alice), ("set_live_cpu_cap", alice)}
        assert ctl.channels.claws() == ["alice"]

        # The same answers as before for everything that is not a ready claw.
        hv.calls.clear()
        with pytest.raises(NotFound, match="no claw named 'zed'"):
            ctl._connection("zed")
        with pytest.raises(ClawdenError, match="claw 'erin' is stopped"):
            ctl._connection("erin")
        with pytest.raises(NotFound, match="claw 'dave' is not running in libvirt"):
            ctl._connection("dave")
        started = time.monotonic()
        assert ctl._ready_connection("dave", 0.5) == (None, False)
        assert time.monotonic() - started >= 0.5  # it waited, polling gently
        assert {name for _, name in hv.calls} == {
            domain_name(settings.installation_tag, "dave"),
            legacy_domain_name("dave"),  # a claw from before tags would be found there
        }
        assert ctl.channels.claws() == ["alice"]
    finally:
        ctl.channels.close()
        ctl._rpc._server.server_close()
        db.close()
