"""The warm agent (guest/warm.py) on a real unix socket: the protocol, its
bounds, and ``python3 -m guest.serve serve`` run as the image runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from appliance.guest.model import TextSink
from appliance.guest.serve import TEST_SCRIPT_ENV
from appliance.guest.warm import HELLO, ServeLimits, WarmAgent, listening_socket
from tests.unit.test_guest_serve import PYTHON, layout  # noqa: F401 - a fixture

Handler = Callable[[bytes, TextSink], tuple[int, dict[str, Any]]]


def _pieces(raw: bytes, on_text: TextSink) -> tuple[int, dict[str, Any]]:
    event = json.loads(raw)
    for word in ("you ", "said ", event["text"]):
        on_text(word)
    return 0, {"text": "you said " + event["text"], "status": "reply"}


@contextmanager
def serving(
    path: Path, handle: Handler, limits: ServeLimits | None = None, rss: float = 50.0
) -> Iterator[WarmAgent]:
    agent = WarmAgent(listening_socket(path), handle, limits or ServeLimits(), rss=lambda: rss)
    thread = threading.Thread(target=agent.serve_forever, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop("test over")
        thread.join(10)
        agent.listener.close()


def _talk(path: Path, event: bytes | None) -> list[dict[str, Any]]:
    """Connect, send ``event`` (None: nothing, then EOF), read every line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        if event is not None:
            sock.sendall(event)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_a_delivery_gets_a_hello_its_pieces_and_one_final_line(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    with serving(sock, _pieces) as agent:
        lines = _talk(sock, b'{"text": "hi"}\n')
        assert lines[0] == {"hello": HELLO, "pid": os.getpid()}
        assert lines[1:4] == [{"delta": "you "}, {"delta": "said "}, {"delta": "hi"}]
        assert lines[4:] == [{"text": "you said hi", "status": "reply", "exit": 0}]
        # The event may also end at EOF instead of a newline.
        assert _talk(sock, b'{"text": "eof"}')[-1]["text"] == "you said eof"
        assert agent.deliveries == 2
    assert oct(sock.stat().st_mode & 0o777) == "0o600"


def test_what_the_handler_is_given_is_the_event_line_only(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def record(raw: bytes, on_text: TextSink) -> tuple[int, dict[str, Any]]:
        seen.append(raw)
        return 2, {"error": {"type": "bad_event", "message": "the event is not JSON"}}

    with serving(tmp_path / "s", record):
        lines = _talk(tmp_path / "s", b"first line\nsecond line\n")
        big = _talk(tmp_path / "s", b"x" * (3 * 1024 * 1024))
    assert seen[0] == b"first line"
    assert len(seen[1]) == 1024 * 1024 + 1  # cut just past the limit, refused as too large
    assert lines[-1]["exit"] == 2 and big[-1]["exit"] == 2


def test_past_max_connections_a_delivery_is_told_busy(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(raw: bytes, on_text: TextSink) -> tuple[int, dict[str, Any]]:
        release.wait(30)
        return 0, {"text": "done", "status": "reply"}

    path = tmp_path / "s"
    with serving(path, slow, ServeLimits(max_connections=1)) as agent:
        first: list[list[dict[str, Any]]] = []
        waiter = threading.Thread(target=lambda: first.append(_talk(path, b"{}\n")))
        waiter.start()
        deadline = time.monotonic() + 10
        while not agent._threads and time.monotonic() < deadline:
            time.sleep(0.02)
        second = _talk(path, b"{}\n")
        release.set()
        waiter.join(30)
    assert second[-1] == {
        "error": {"type": "busy", "message": "1 deliveries are already in progress"},
        "exit": 3,
    }
    assert first[0][-1]["text"] == "done"


def _until_retired(path: Path, limits: ServeLimits, rss: float, deliveries: int) -> list[str]:
    """Serve ``deliveries`` events, then what ``serve_forever`` returned (it must)."""
    agent = WarmAgent(listening_socket(path), _pieces, limits, rss=lambda: rss)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(agent.serve_forever()))
    thread.start()
    try:
        for i in range(deliveries):
            assert _talk(path, b'{"text": "%d"}\n' % i)[-1]["text"] == f"you said {i}"
        thread.join(10)
        return result
    finally:
        agent.stop("test over")
        agent.listener.close()


def test_it_retires_after_max_deliveries_finishing_what_it_has(tmp_path: Path) -> None:
    limits = ServeLimits(max_deliveries=2)
    assert _until_retired(tmp_path / "s", limits, 50.0, 2) == ["2 deliveries served"]


def test_it_retires_above_its_memory_cap(tmp_path: Path) -> None:
    limits = ServeLimits(max_rss_mib=100)
    assert _until_retired(tmp_path / "s", limits, 101.0, 1) == [
        "resident memory 101 MiB is above 100 MiB"
    ]


def test_a_host_that_hangs_up_does_not_cut_the_delivery_short(tmp_path: Path) -> None:
    finished = threading.Event()

    def chatty(raw: bytes, on_text: TextSink) -> tuple[int, dict[str, Any]]:
        for _ in range(2000):  # far more than the socket buffers
            on_text("word " * 100)
        finished.set()  # the history would be written here, whole
        return 0, {"text": "done", "status": "reply"}

    path = tmp_path / "s"
    with serving(path, chatty):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(b"{}\n")
            sock.recv(100)
        assert finished.wait(30)


def test_without_systemd_or_a_path_serve_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    with pytest.raises(SystemExit, match="no socket from systemd"):
        listening_socket(None)


# ---- python3 -m guest.serve serve, as the image runs it ----------------------


def test_the_serve_command_streams_keeps_history_and_restarts_clean(
    layout: dict[str, Path],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.sock"
    argv = [PYTHON, "-m", "guest.serve", "serve", "--socket", str(path)]
    argv += ["--workspace", str(layout["workspace"]), "--state-dir", str(layout["state"])]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", TEST_SCRIPT_ENV: str(layout["script"])}

    def start() -> subprocess.Popen[bytes]:
        path.unlink(missing_ok=True)  # a killed one leaves its socket file behind
        proc = subprocess.Popen(argv, cwd=layout["opt"], env=env)
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not listen"
            time.sleep(0.05)
        return proc

    event = json.dumps({"type": "message", "text": "make a file", "channel": "cli"}).encode()
    proc = start()
    try:
        lines = _talk(path, event + b"\n")
        assert lines[0]["hello"] == HELLO and lines[0]["pid"] == proc.pid
        pieces = [line["delta"] for line in lines[1:-1]]
        assert "".join(pieces) == "Done: I wrote from-shell.txt."
        assert len(pieces) > 1
        final = lines[-1]
        assert (final["status"], final["model_calls"], final["exit"]) == ("reply", 2, 0)
        assert (layout["workspace"] / "from-shell.txt").read_text() == "hi\n"
        proc.send_signal(signal.SIGKILL)  # as a crash, or the OOM killer, would
        proc.wait(10)
        proc = start()  # systemd's Restart=always
        assert _talk(path, event + b"\n")[-1]["status"] == "reply"
        conversation = layout["state"] / "conversations" / "main.jsonl"
        roles = [json.loads(ln)["m"]["role"] for ln in conversation.read_text().splitlines()]
        assert roles == ["user", "assistant", "tool", "assistant"] * 2  # nothing lost
    finally:
        proc.kill()
        proc.wait(10)
