"""Keeps one live, authenticated transport per running claw.

Each claw gets a small supervisor thread: connect (waiting patiently while the
guest boots), install the service forwards, then watch the transport; when it
drops — the guest rebooted, sshd restarted, the VM was stopped — reconnect with
exponential backoff. A guest presenting the wrong host key is *refused* and not
hammered: it is reported once (audit) and retried slowly, in case the operator
restores the right seed. A guest that broke the SSH protocol (see
``guard.py``) had its transport closed; the next attempt waits
``VIOLATION_PAUSE``, so breaking it again and again costs the host a handshake
and a log line every few seconds at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import paramiko

from appliance.channel.forwarding import ClawIdentity, ServiceRegistry
from appliance.channel.guard import ClawTransport
from appliance.channel.transport import (
    BANNER_WINDOW,
    ChannelTarget,
    HostKeyMismatch,
    NoBanner,
    disconnect,
    open_transport,
)
from appliance.core.errors import ClawdenError, Unavailable

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
REFUSED_RETRY = 60.0
HANG_UP_PAUSE = 1.0  # long enough for the guest to see us go and restart sshd
VIOLATION_PAUSE = BACKOFF_MAX  # after the guest broke the SSH protocol


class ChannelState(StrEnum):
    CONNECTING = "connecting"
    READY = "ready"
    REFUSED = "refused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ChannelStatus:
    claw: str
    state: ChannelState
    since: float
    connects: int
    last_error: str | None


EventSink = Callable[[str, str, dict[str, object]], None]  # (action, claw, details)
ClawHook = Callable[[str], None]


def _no_hook(claw: str) -> None:
    pass


Connector = Callable[[ChannelTarget, float], paramiko.Transport]


class ClawConnection:
    """Supervises the transport to one claw."""

    def __init__(
        self,
        claw: str,
        target_factory: Callable[[], ChannelTarget],
        registry: ServiceRegistry,
        on_event: EventSink,
        connect: Connector = open_transport,
        on_ready: ClawHook = _no_hook,
    ) -> None:
        self.claw = claw
        self._target_factory = target_factory
        self._registry = registry
        self._on_event = on_event
        self._connect = connect
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._transport: paramiko.Transport | None = None
        self._state = ChannelState.CONNECTING
        self._since = time.time()
        self._connects = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"channel:{claw}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            transport = self._transport
        if transport is not None:
            disconnect(transport)
        self._thread.join(timeout=10)
        self._set(ChannelState.STOPPED, None, None)

    def status(self) -> ChannelStatus:
        with self._lock:
            return ChannelStatus(
                self.claw, self._state, self._since, self._connects, self._last_error
            )

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._state is not ChannelState.READY:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self._transport
            state = self._state
            error = self._last_error
        if transport is None or not transport.is_active():
            detail = f" ({error})" if error else ""
            raise Unavailable(
                f"claw {self.claw!r} is not connected: channel {state.value}{detail}",
                f"wait for it to boot, or check `clawden claw status {self.claw}`",
            )
        return transport

    def _set(
        self, state: ChannelState, transport: paramiko.Transport | None, error: str | None
    ) -> None:
        with self._changed:
            if state is not self._state:
                self._since = time.time()
            self._state = state
            self._transport = transport
            if error is not None or state is ChannelState.READY:
                self._last_error = error
            if state is ChannelState.READY:
                self._connects += 1
            self._changed.notify_all()

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        reported_refusal = False
        while not self._stop.is_set():
            try:
                transport = self._connect(self._target_factory(), BANNER_WINDOW)
            except HostKeyMismatch as exc:
                self._set(ChannelState.REFUSED, None, exc.what)
                if not reported_refusal:
                    self._on_event("channel.hostkey_mismatch", self.claw, {"error": exc.what})
                    reported_refusal = True
                self._stop.wait(REFUSED_RETRY)
                continue
            except NoBanner as exc:
                # Booting, or a stale sshd still owns the port: hang up briefly
                # so the guest notices, then greet the fresh sshd.
                self._set(ChannelState.CONNECTING, None, exc.what)
                self._stop.wait(HANG_UP_PAUSE)
                continue
            except ClawdenError as exc:
                self._set(ChannelState.CONNECTING, None, exc.what)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self._stop.is_set():
                disconnect(transport)
                break
            try:
                self._registry.install(transport, ClawIdentity(self.claw))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                disconnect(transport)
                self._set(ChannelState.CONNECTING, None, f"port forwards refused: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            reported_refusal = False
            backoff = BACKOFF_FIRST
            self._set(ChannelState.READY, transport, None)
            log.info("channel to %s ready", self.claw)
            if self.status().connects == 1:  # only this thread counts them
                self._on_ready(self.claw)
            while transport.is_active() and not self._stop.wait(0.5):
                pass
            disconnect(transport)
            if self._stop.is_set():
                break
            violation = transport.violation if isinstance(transport, ClawTransport) else None
            if violation is None:
                self._set(ChannelState.CONNECTING, None, "connection lost; reconnecting")
            else:
                self._set(
                    ChannelState.CONNECTING,
                    None,
                    f"closed: the guest broke the SSH protocol ({violation}); "
                    f"reconnecting in {VIOLATION_PAUSE:.0f} s",
                )
                self._stop.wait(VIOLATION_PAUSE)


class ChannelManager:
    """All claws' connections, keyed by claw name."""

    def __init__(
        self,
        registry: ServiceRegistry,
        target_for: Callable[[str], ChannelTarget],
        on_event: EventSink,
        connect: Connector = open_transport,
        on_started: ClawHook = _no_hook,
        on_ready: ClawHook = _no_hook,
    ) -> None:
        """``on_started`` runs when a claw's connection is made (the claw was
        found running), before it connects; ``on_ready`` when that connection
        is first ready. Both on the caller's or the channel's thread."""
        self._registry = registry
        self._target_for = target_for
        self._on_event = on_event
        self._connect = connect
        self._on_started = on_started
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self._conns: dict[str, ClawConnection] = {}

    def ensure(self, claw: str) -> ClawConnection:
        with self._lock:
            conn = self._conns.get(claw)
            if conn is not None:
                return conn
            conn = ClawConnection(
                claw,
                lambda: self._target_for(claw),
                self._registry,
                self._on_event,
                self._connect,
                self._on_ready,
            )
            self._conns[claw] = conn
        # Outside the lock (the hook may call libvirt), before the first
        # connect, so it runs before ``on_ready`` can.
        self._on_started(claw)
        conn.start()
        return conn

    def drop(self, claw: str) -> None:
        with self._lock:
            conn = self._conns.pop(claw, None)
        if conn is not None:
            conn.stop()

    def get(self, claw: str) -> ClawConnection | None:
        with self._lock:
            return self._conns.get(claw)

    def claws(self) -> list[str]:
        with self._lock:
            return sorted(self._conns)

    def close(self) -> None:
        for claw in self.claws():
            self.drop(claw)
