"""The warm agent: ``clawden-agent serve``, one long-lived process per claw.

Why: a one-shot delivery starts Python and imports ``openai`` every time
(5.6 of the 8 s a ``claw say`` cost beyond the model, under TCG). This
service pays that once, keeps one gateway client, and takes deliveries on a
unix socket that systemd holds (``clawden-agent.socket``: root:clawctl 0660,
so only the host's login reaches it, and connections wait in the backlog
while the service restarts).

The protocol (docs/agent.md, "The warm agent"), one connection per event:

1. on accept the agent writes ``{"hello": "clawden-agent", "pid": N}``;
2. the host writes the event: one JSON object on one line (or up to EOF);
3. the agent writes ``{"delta": TEXT}`` lines while the model streams, then
   one final line — the same reply or error object ``deliver`` prints, with
   ``"exit"``: the exit code ``deliver`` would have had — and closes.

A host that got no hello knows the event was never read and may deliver it
one-shot instead; a host that got a hello and no final line knows the agent
died mid-delivery. Bounded: one thread per connection, at most
``max_connections`` (past that: "busy"); after ``max_deliveries`` or above
``max_rss_mib`` it stops accepting, finishes what it has and exits, and
systemd starts a fresh one. A crash costs the delivery in flight only: the
conversation and memory are files, written as the agent goes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import TextSink

log = logging.getLogger(__name__)

HELLO = "clawden-agent"
LISTEN_FD = 3  # systemd's first passed socket (sd_listen_fds)
MAX_EVENT_BYTES = 1024 * 1024  # per event, whichever way it comes (serve.py too)
EVENT_WAIT_S = 60.0  # the host writes the event right after connecting
SEND_WAIT_S = 300.0  # a host that stops reading is given up on, not waited for
ACCEPT_POLL_S = 1.0  # how often the accept loop looks whether to retire

# (exit code, final JSON object) for one event's raw bytes.
Handler = Callable[[bytes, TextSink], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class ServeLimits:
    # Restarting costs ~6 s of imports under TCG, spent while nobody waits
    # (the next connection waits in the backlog only if it comes at once).
    max_deliveries: int = 200
    # The service is ~60 MiB after its imports; a leak, a huge history or a
    # tool's output kept alive is what passes this.
    max_rss_mib: int = 160
    # A chat, a schedule and a heartbeat can overlap (they then queue on the
    # delivery lock); more than this at once is a host bug or a flood.
    max_connections: int = 8


def listening_socket(path: Path | None) -> socket.socket:
    """``path`` bound and listening (tests), else the socket systemd passed."""
    if path is not None:
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        return sock
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        raise SystemExit(
            "clawden-agent serve: no socket from systemd (LISTEN_FDS) and no --socket PATH"
        )
    return socket.socket(fileno=LISTEN_FD)


def rss_mib() -> float:
    """This process's resident memory, from /proc (0 where unreadable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


class _Conn:
    """One host connection: JSON lines out, a send failure remembered, not raised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.gone = False

    def send(self, payload: dict[str, Any]) -> None:
        line = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
        with self.lock:
            if self.gone:
                return
            try:
                self.sock.sendall(line)
            except OSError:
                # The host went away: the delivery still finishes, so its
                # history and memory are whole; only the live pieces are lost.
                self.gone = True

    def read_event(self) -> bytes:
        """Bytes up to the first newline or EOF; more than MAX_EVENT_BYTES is cut
        there (and then refused as not JSON or too large by the handler)."""
        data = bytearray()
        while len(data) <= MAX_EVENT_BYTES:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            end = chunk.find(b"\n")
            if end >= 0:
                data += chunk[:end]
                break
            data += chunk
        return bytes(data[: MAX_EVENT_BYTES + 1])


def _close(sock: socket.socket) -> None:
    """Close after the host has read everything: unread input left behind
    would make the kernel reset the connection, and the host could lose the
    final line (an event past the limit, a refused one)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        for _ in range(64):  # at most 4 MiB, a second each
            if not sock.recv(65536):
                break
    except OSError:
        pass
    sock.close()


class WarmAgent:
    def __init__(
        self,
        listener: socket.socket,
        handle: Handler,
        limits: ServeLimits = ServeLimits(),
        rss: Callable[[], float] = rss_mib,
    ) -> None:
        self.listener = listener
        self.handle = handle
        self.limits = limits
        self.rss = rss
        self.deliveries = 0
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._retire = threading.Event()
        self.why = ""

    def serve_forever(self) -> str:
        """Take connections until it is time to make way; why, when it is."""
        self.listener.settimeout(ACCEPT_POLL_S)
        while not self._retire.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(EVENT_WAIT_S)
            thread: threading.Thread | None = None
            with self._lock:
                if len(self._threads) < self.limits.max_connections:
                    thread = threading.Thread(target=self._serve_one, args=(sock,), daemon=True)
                    self._threads.add(thread)
            if thread is None:
                self._refuse(sock)
                continue
            thread.start()
        # Connections already queued wait for the next instance (systemd
        # keeps the listening socket); the ones in flight finish here.
        for thread in list(self._threads):
            thread.join()
        return self.why

    def stop(self, why: str) -> None:
        self.why = self.why or why
        self._retire.set()

    def _refuse(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        conn.send({"hello": HELLO, "pid": os.getpid()})
        message = f"{self.limits.max_connections} deliveries are already in progress"
        conn.send({"error": {"type": "busy", "message": message}, "exit": 3})
        _close(sock)

    def _serve_one(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        try:
            conn.send({"hello": HELLO, "pid": os.getpid()})
            try:
                raw = conn.read_event()
            except OSError as exc:
                log.warning("no event from the host (%s)", exc)
                return
            sock.settimeout(SEND_WAIT_S)
            code, payload = self.handle(raw, lambda text: conn.send({"delta": text}))
            conn.send({**payload, "exit": code})
        finally:
            self._done(threading.current_thread())
            _close(sock)

    def _done(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.discard(thread)
            self.deliveries += 1
            count = self.deliveries
        if count >= self.limits.max_deliveries:
            self.stop(f"{count} deliveries served")
        elif (rss := self.rss()) > self.limits.max_rss_mib:
            self.stop(f"resident memory {rss:.0f} MiB is above {self.limits.max_rss_mib} MiB")
