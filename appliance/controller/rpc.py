"""The controller's local API for the CLI: JSON lines over a root-only unix socket.

The controller owns every claw's channel (a virtio-serial socket takes one
client at a time), so CLI commands that need the guest — ``exec``, readiness —
ask the controller. Requests are one JSON object per line; replies are JSON
lines, the last of which has ``"done": true``. Output of ``exec`` streams as
base64 chunks so any bytes survive.

An op registered as taking input (``exec``) may have more lines follow its
request: ``{"stdin": <base64>}`` chunks, then ``{"stdin_eof": true}``. They
are read on a thread of their own into a small bounded queue, so a client
sending faster than the command reads is held back by the socket, and nothing
is buffered without limit on either side.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import queue
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from appliance.core.errors import ClawdenError, Unavailable

log = logging.getLogger(__name__)

Reply = dict[str, Any]
Handler = Callable[[dict[str, Any], Callable[[Reply], None]], Reply]

MAX_LINE = 1024 * 1024  # a request, or one input line (a 64 KiB chunk is ~87 KiB)
INPUT_CHUNK = 65536
INPUT_QUEUE = 16  # chunks held in the controller per request: at most 1 MiB
# Writing to a peer that hung up must raise EPIPE, not deliver SIGPIPE: the
# CLI restores SIGPIPE's default (so `clawden … | head` ends quietly), which
# would otherwise kill the controller, or a CLI still sending input.
_NO_SIGPIPE = getattr(socket, "MSG_NOSIGNAL", 0)


class ClientGone(Exception):  # noqa: N818 — an event, not a failure of ours
    """The client hung up before the end of its input: whatever it started is abandoned."""


class ClientInput:
    """The input lines a client sends after its request, as the
    ``read_nowait`` source ``channel/transport.py: run_command`` feeds to a
    command. Reading starts with the first ``read_nowait``."""

    def __init__(self, rfile: Any, sock: socket.socket) -> None:
        self._rfile, self._sock = rfile, sock
        self._queue: queue.Queue[bytes | None | ClientGone] = queue.Queue(INPUT_QUEUE)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False

    def read_nowait(self) -> bytes | None:
        """Input that has arrived (``b""`` if none yet), ``None`` at its end;
        raises ``ClientGone`` if the client left without ending it."""
        if self._ended:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, daemon=True)
            self._thread.start()
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return b""
        if isinstance(item, ClientGone):
            self._ended = True
            raise item
        if item is None:
            self._ended = True
        return item

    def close(self) -> None:
        """Stop reading: wakes the reader thread and waits for it, so it never
        outlives the connection (its socket is closed right after)."""
        self._closed.set()
        if self._thread is None:
            return
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the client has gone already
        self._thread.join(timeout=5)

    def _pump(self) -> None:
        end: bytes | None | ClientGone = ClientGone("the client hung up mid-input")
        try:
            while not self._closed.is_set():
                line = self._rfile.readline(MAX_LINE)
                if not line.endswith(b"\n"):
                    break  # hung up (or an over-long line): abandon
                message = json.loads(line)
                if message.get("stdin_eof"):
                    end = None
                    break
                data = decode_chunk(str(message.get("stdin", "")))
                if data and not self._put(data):
                    return
        except (OSError, ValueError, AttributeError):
            pass  # a broken connection or a malformed line: abandon
        self._put(end)

    def _put(self, item: bytes | None | ClientGone) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False


InputHandler = Callable[[dict[str, Any], Callable[[Reply], None], ClientInput], Reply]


def _error_reply(exc: ClawdenError) -> Reply:
    return {"done": True, "error": {"type": type(exc).__name__, "what": exc.what, "fix": exc.fix}}


def lock_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + ".lock")


def _already_running(pid: str) -> ClawdenError:
    return ClawdenError(
        f"a controller is already running (pid {pid})",
        "use it: it serves the CLI and the panel. Only one controller may own the claws'"
        " channels; to restart it, `systemctl restart clawden` where it runs as a service,"
        f" else stop that `clawden serve` first (Ctrl-C in its terminal, or `kill {pid}`)",
    )


def take_controller_lock(socket_path: Path) -> int:
    """An exclusive ``flock`` on ``<socket>.lock`` holding this process's pid,
    held until the returned descriptor is closed (the kernel drops it when
    the process dies, so a killed controller leaves nothing stale)."""
    fd = os.open(lock_path(socket_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise _already_running(holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    # socketserver's listen backlog is 5. A unix socket whose backlog is full
    # refuses a connect at once (EAGAIN), which the CLI can only report as
    # "the controller is not running" — with a few CLIs at once on a busy box.
    request_queue_size = 128


class RpcServer:
    """Threaded unix-socket server dispatching ``{"op": ...}`` requests."""

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        input_handlers: Mapping[str, InputHandler] | None = None,
    ) -> None:
        """``input_handlers`` are ops whose client may send input lines after
        the request; they get a ``ClientInput`` to read them from."""
        self.path = path
        self._handlers = handlers
        self._input_handlers = input_handlers or {}
        outer = self

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._handle(self.rfile, self.connection)

        # The lock first: it alone decides who is the controller. A ping of
        # the socket cannot: the first controller binds the socket before its
        # initial reconcile and answers only after it (starting every claw
        # after a host reboot takes minutes), so a ping would time out and a
        # second controller would take the socket over.
        self._lock_fd = take_controller_lock(path)
        try:
            self._refuse_if_running()
            path.unlink(missing_ok=True)
            self._server = _Server(str(path), _Conn)
        except BaseException:
            os.close(self._lock_fd)
            raise
        path.chmod(0o600)  # the CLI runs as the same (root) user; nobody else may drive VMs
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _refuse_if_running(self) -> None:
        # Belt and braces behind the lock: a controller from before the lock
        # existed (mid-upgrade) holds the socket without it.
        if not self.path.exists():
            return
        try:
            reply = call(self.path, {"op": "ping"}, timeout=5)
        except Unavailable:
            return  # a stale socket from a controller that died
        raise _already_running(str(reply.get("pid") or "?"))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
        # Released last, once the socket is gone: the next controller may
        # bind straight away. The file stays (deleting a lock file races).
        os.close(self._lock_fd)

    def _handle(self, rfile: Any, sock: socket.socket) -> None:
        lock = threading.Lock()

        def send(reply: Reply) -> None:
            with lock:
                sock.sendall(json.dumps(reply).encode() + b"\n", _NO_SIGPIPE)

        line = rfile.readline(MAX_LINE)
        client_input: ClientInput | None = None
        try:
            request = json.loads(line)
            op = str(request.get("op"))
            handler = self._handlers.get(op)
            input_handler = self._input_handlers.get(op)
            if handler is not None:
                final = handler(request, send)
            elif input_handler is not None:
                client_input = ClientInput(rfile, sock)
                final = input_handler(request, send, client_input)
            else:
                raise ClawdenError(f"unknown request {request.get('op')!r}", "upgrade the CLI")
            final["done"] = True
            send(final)
        except ClawdenError as exc:
            send(_error_reply(exc))
        except (json.JSONDecodeError, AttributeError):
            send(_error_reply(ClawdenError("malformed request", "this is a bug; report it")))
        except (BrokenPipeError, ClientGone):
            pass  # nobody left to answer
        except Exception as exc:  # noqa: BLE001 — the CLI gets an answer, the log the detail
            log.exception("controller request %r failed", line[:200])
            send(
                _error_reply(
                    ClawdenError(
                        f"the controller failed: {type(exc).__name__}",
                        "see the controller's output for details, then retry",
                    )
                )
            )
        finally:
            if client_input is not None:
                client_input.close()


def _connect(path: Path, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise Unavailable(
            "the clawden controller is not running",
            "start it with `clawden serve` (the README's run command starts it)",
        ) from None
    return sock


def stream(
    path: Path,
    request: dict[str, Any],
    timeout: float | None = None,
    send_input: Iterable[bytes] | None = None,
) -> Iterator[Reply]:
    """Send one request; yield every reply line; raise the controller's error, if any.

    ``send_input`` (for an op that takes input) is sent after the request, on
    a thread, as ``stdin`` lines and then ``stdin_eof``, while the replies are
    read; it stops quietly when the controller stops reading.
    """
    sock = _connect(path, timeout)
    with sock, sock.makefile("rb") as rfile:
        sock.sendall(json.dumps(request).encode() + b"\n")
        if send_input is not None:
            threading.Thread(target=_send_input, args=(sock, send_input), daemon=True).start()
        while True:
            line = rfile.readline()
            if not line:
                raise Unavailable(
                    "the controller closed the connection mid-request",
                    "check the controller's output, then retry",
                )
            reply: Reply = json.loads(line)
            if "error" in reply:
                err = reply["error"]
                raise _rebuild_error(err)
            yield reply
            if reply.get("done"):
                return


def _send_input(sock: socket.socket, chunks: Iterable[bytes]) -> None:
    try:
        for chunk in chunks:
            if chunk:
                line = json.dumps({"stdin": encode_chunk(chunk)}).encode() + b"\n"
                sock.sendall(line, _NO_SIGPIPE)
        sock.sendall(b'{"stdin_eof": true}\n', _NO_SIGPIPE)
    except OSError:
        pass  # the controller closed the connection: the command needs no more


def call(path: Path, request: dict[str, Any], timeout: float | None = 30) -> Reply:
    last: Reply = {}
    for reply in stream(path, request, timeout):
        last = reply
    return last


def _rebuild_error(err: dict[str, Any]) -> ClawdenError:
    from appliance.core import errors

    cls = getattr(errors, str(err.get("type")), ClawdenError)
    if not (isinstance(cls, type) and issubclass(cls, ClawdenError)):
        cls = ClawdenError
    return cls(str(err.get("what")), str(err.get("fix") or ""))


def encode_chunk(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode_chunk(data: str) -> bytes:
    return base64.b64decode(data)
