"""CLI error shape, the controller's local API, and escaping of untrusted text."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.cli import main
from appliance.controller import rpc
from appliance.core.errors import ClawdenError, NotFound, Unavailable
from appliance.core.textsafe import printable


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLAWDEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLAWDEN_LIBVIRT_URI", "test:///default")
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("argv", "expected", "code"),
    [
        (["claw", "create", "Bad_Name", "--member", "X"], "invalid claw name 'Bad_Name'", 2),
        (["claw", "create", "ok", "--member", "X", "--cpus", "99"], "invalid --cpus 99", 2),
        (["claw", "status", "nobody"], "no claw named 'nobody'", 2),
        (["claw", "exec", "ok"], "no command given", 2),
        (["audit", "list", "--limit", "5"], None, 0),
        (["llm", "usage"], None, 0),
        (["llm", "usage", "Bad_Name"], "invalid claw name 'Bad_Name'", 2),
    ],
)
def test_cli_errors_are_one_actionable_line(
    home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str | None, code: int
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    if expected is None:
        assert err == ""
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and expected in lines[0] and " — " in lines[0]


def test_exec_without_controller_says_how_to_start_it(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["claw", "exec", "alice", "--", "true"]) == Unavailable.exit_code
    assert "clawden serve" in capsys.readouterr().err


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "c.sock"

    def echo(req: dict[str, Any], send: Callable[[rpc.Reply], None]) -> rpc.Reply:
        for chunk in req["chunks"]:
            send({"stdout": rpc.encode_chunk(chunk.encode())})
        return {"exit": 3}

    def fail(req: dict[str, Any], send: Callable[[rpc.Reply], None]) -> rpc.Reply:
        raise NotFound("no claw named 'x'", "see `clawden claw list`")

    def crash(req: dict[str, Any], send: Callable[[rpc.Reply], None]) -> rpc.Reply:
        raise RuntimeError("secret-ish internals")

    srv = rpc.RpcServer(path, {"echo": echo, "fail": fail, "crash": crash, "ping": lambda r, s: {}})
    srv.start()
    yield path
    srv.close()


def test_rpc_streams_replies_then_the_result(server: Path) -> None:
    replies = list(rpc.stream(server, {"op": "echo", "chunks": ["a", "b\x00"]}))
    data = b"".join(rpc.decode_chunk(r["stdout"]) for r in replies if "stdout" in r)
    assert data == b"ab\x00"
    assert replies[-1] == {"exit": 3, "done": True}


def test_rpc_errors_keep_their_type_and_fix(server: Path) -> None:
    with pytest.raises(NotFound) as info:
        rpc.call(server, {"op": "fail"})
    assert info.value.fix == "see `clawden claw list`"
    with pytest.raises(ClawdenError, match="controller failed: RuntimeError") as crashed:
        rpc.call(server, {"op": "crash"})
    assert "secret-ish" not in str(crashed.value)
    with pytest.raises(ClawdenError, match="unknown request"):
        rpc.call(server, {"op": "nope"})


def test_socket_is_private_and_a_second_controller_is_refused(server: Path) -> None:
    assert server.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ClawdenError, match="already running"):
        rpc.RpcServer(server, {})


def test_a_second_controller_is_refused_at_once_while_the_first_is_busy(tmp_path: Path) -> None:
    # The first controller binds its socket, then runs its initial reconcile
    # before it answers (minutes, after a host reboot). A ping would wait and
    # time out; the lock refuses the second one at once, and keeps the socket.
    path = tmp_path / "c.sock"
    first = rpc.RpcServer(path, {"ping": lambda r, s: {"pid": os.getpid()}})
    try:
        started = time.monotonic()
        with pytest.raises(ClawdenError) as refused:
            rpc.RpcServer(path, {})
        assert time.monotonic() - started < 2
        assert refused.value.what == f"a controller is already running (pid {os.getpid()})"
        assert "systemctl restart clawden" in refused.value.fix
        assert path.exists()
    finally:
        first.start()
        first.close()
    # Closed: the lock is free again for the next controller.
    second = rpc.RpcServer(path, {})
    second.start()
    second.close()


def test_a_killed_controller_leaves_nothing_that_blocks_the_next(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    script = (
        "import sys, time; from pathlib import Path; from appliance.controller import rpc;"
        "rpc.RpcServer(Path(sys.argv[1]), {}); print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        with pytest.raises(ClawdenError, match=f"already running \\(pid {proc.pid}\\)"):
            rpc.RpcServer(path, {})
    finally:
        proc.kill()
        proc.communicate()
    assert path.exists()  # its socket is left behind, stale
    srv = rpc.RpcServer(path, {"ping": lambda r, s: {}})
    srv.start()
    assert rpc.call(path, {"op": "ping"}) == {"done": True}
    srv.close()


def test_rpc_serves_concurrent_clients(server: Path) -> None:
    results: list[rpc.Reply] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(rpc.call(server, {"op": "echo", "chunks": []}))
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"exit": 3, "done": True}] * 8


def test_clients_queue_while_the_controller_is_busy_accepting(tmp_path: Path) -> None:
    # The deterministic form of the test above: nobody accepts yet (the serving
    # thread is not started), as when the controller is slow under load.
    path = tmp_path / "c.sock"
    srv = rpc.RpcServer(path, {"ping": lambda r, s: {}})
    waiting: list[socket.socket] = []
    try:
        try:
            for _ in range(32):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                waiting.append(sock)
                sock.settimeout(10)
                sock.connect(str(path))  # EAGAIN here read as "controller not running"
        finally:
            srv.start()  # (close() waits for the serving loop: it must be running)
        for sock in waiting:
            sock.sendall(b'{"op": "ping"}\n')
        for sock in waiting:
            with sock.makefile("rb") as replies:
                assert json.loads(replies.readline()) == {"done": True}
    finally:
        for sock in waiting:
            sock.close()
        srv.close()


def test_printable_defuses_terminal_escapes() -> None:
    hostile = "ok\x1b]0;pwned\x07\x1b[2J\r\x9bdone\n\ttab"
    shown = printable(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "\x9b" not in shown
    assert shown.endswith("done\n\ttab")
    assert "\\x1b]0;pwned" in shown
    assert printable("Zoë — ünïcode") == "Zoë — ünïcode"


def test_rpc_input_lines_reach_an_input_handler_and_a_hang_up_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "i.sock"
    gone = threading.Event()

    def collect(
        req: dict[str, Any], send: Callable[[rpc.Reply], None], stdin: rpc.ClientInput
    ) -> rpc.Reply:
        data = bytearray()
        while True:
            try:
                chunk = stdin.read_nowait()
            except rpc.ClientGone:
                gone.set()
                raise
            if chunk is None:
                return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            data += chunk
            if not chunk:
                time.sleep(0.005)

    srv = rpc.RpcServer(
        path, {"ping": lambda r, s: {"pong": 1}}, input_handlers={"collect": collect}
    )
    srv.start()
    try:
        data = os.urandom(3 * 2**20)  # far more than the controller holds at once
        chunks = (data[i : i + rpc.INPUT_CHUNK] for i in range(0, len(data), rpc.INPUT_CHUNK))
        replies = list(rpc.stream(path, {"op": "collect"}, send_input=chunks))
        digest = hashlib.sha256(data).hexdigest()
        assert replies == [{"sha256": digest, "size": len(data), "done": True}]
        assert list(rpc.stream(path, {"op": "collect"}, send_input=[])) == [
            {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0, "done": True}
        ]
        # A client that hangs up before the end of its input: the handler hears it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(path))
            raw.sendall(b'{"op": "collect"}\n{"stdin": "aGk="}\n')
        assert gone.wait(10)
        assert rpc.call(path, {"op": "ping"}) == {"pong": 1, "done": True}
    finally:
        srv.close()


_SPEWING_CONTROLLER = r"""
import signal, sys, time
from pathlib import Path
from appliance.controller import rpc
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as `clawden serve` has it (cli.main)
def spew(req, send):
    for _ in range(3000):
        send({"stdout": rpc.encode_chunk(b"x" * 1000)})
        time.sleep(0.001)
    return {"exit": 0}
srv = rpc.RpcServer(Path(sys.argv[1]), {"spew": spew, "ping": lambda r, s: {}})
srv.start()
print("up", flush=True)
sys.stdin.read()  # until the test is done
print("survived", flush=True)
"""


def test_a_client_hanging_up_mid_output_does_not_kill_the_controller(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPEWING_CONTROLLER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            client.sendall(b'{"op": "spew"}\n')
            assert client.recv(100)  # output is flowing; now hang up (`| head -c 1`)
        time.sleep(1)
        assert rpc.call(path, {"op": "ping"}, timeout=10) == {"done": True}
        out, _ = proc.communicate("", timeout=10)
        assert (proc.returncode, out) == (0, "survived\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
