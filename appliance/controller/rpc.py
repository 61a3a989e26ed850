"""The controller's local API for the CLI: JSON lines over a root-only unix socket.

The controller owns every claw's channel (a virtio-serial socket takes one
client at a time), so CLI commands that need the guest — ``exec``, readiness —
ask the controller. Requests are one JSON object per line; replies are JSON
lines, the last of which has ``"done": true``. Output of ``exec`` streams as
base64 chunks so any bytes survive.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from appliance.core.errors import ClawdenError, Unavailable

log = logging.getLogger(__name__)

Reply = dict[str, Any]
Handler = Callable[[dict[str, Any], Callable[[Reply], None]], Reply]


def _error_reply(exc: ClawdenError) -> Reply:
    return {"done": True, "error": {"type": type(exc).__name__, "what": exc.what, "fix": exc.fix}}


class _Server(socketserver.ThreadingUnixStreamServer):
    # socketserver's listen backlog is 5. A unix socket whose backlog is full
    # refuses a connect at once (EAGAIN), which the CLI can only report as
    # "the controller is not running" — with a few CLIs at once on a busy box.
    request_queue_size = 128


class RpcServer:
    """Threaded unix-socket server dispatching ``{"op": ...}`` requests."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        outer = self

        class _Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer._handle(self.rfile, self.wfile)

        self._refuse_if_running()
        path.unlink(missing_ok=True)
        self._server = _Server(str(path), _Conn)
        self._server.daemon_threads = True
        path.chmod(0o600)  # the CLI runs as the same (root) user; nobody else may drive VMs
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _refuse_if_running(self) -> None:
        if not self.path.exists():
            return
        try:
            reply = call(self.path, {"op": "ping"})
        except Unavailable:
            return  # a stale socket from a controller that died
        raise ClawdenError(
            f"a controller is already running (pid {reply.get('pid')})",
            "use it, or stop it first; only one controller may own the claws' channels",
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)

    def _handle(self, rfile: Any, wfile: Any) -> None:
        lock = threading.Lock()

        def send(reply: Reply) -> None:
            with lock:
                wfile.write(json.dumps(reply).encode() + b"\n")
                wfile.flush()

        line = rfile.readline(1024 * 1024)
        try:
            request = json.loads(line)
            handler = self._handlers.get(str(request.get("op")))
            if handler is None:
                raise ClawdenError(f"unknown request {request.get('op')!r}", "upgrade the CLI")
            final = handler(request, send)
            final["done"] = True
            send(final)
        except ClawdenError as exc:
            send(_error_reply(exc))
        except (json.JSONDecodeError, AttributeError):
            send(_error_reply(ClawdenError("malformed request", "this is a bug; report it")))
        except BrokenPipeError:
            pass
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


def stream(path: Path, request: dict[str, Any], timeout: float | None = None) -> Iterator[Reply]:
    """Send one request; yield every reply line; raise the controller's error, if any."""
    sock = _connect(path, timeout)
    with sock, sock.makefile("rb") as rfile:
        sock.sendall(json.dumps(request).encode() + b"\n")
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
