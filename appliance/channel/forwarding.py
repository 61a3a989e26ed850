"""Host services reached from inside a claw through SSH remote port forwards.

The host asks the guest's sshd to listen on ``127.0.0.1:<port>`` *inside the
VM*; every connection a guest process makes there arrives on the host as a new
SSH channel of *that claw's* transport. The claw's identity therefore comes
from which transport carried the connection — never from anything the guest
sends — and every service handler receives it explicitly.

The host services in ``appliance.services`` (host API, LLM gateway, egress)
plug in as ``ForwardedService``s; the egress proxy to come will too.

A claw is assumed compromised, so what it can make the host spend is bounded
here: each forwarded connection gets one thread, and a claw may have at most
``connections_per_claw`` open per service (16 by default) — the next one is
closed at once, before any thread starts. Below that, the transport
(``guard.ClawTransport``) refuses, before paramiko makes a channel, every
channel the guest opens that is not a connection to one of these forwards,
and any past 64 open on it. Lines logged while serving a
connection are attributed to its claw (``logbudget.serving_claw``), so the
controller's log budget can throttle a claw that floods it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import paramiko

from appliance.channel.logbudget import serving_claw

log = logging.getLogger(__name__)

GUEST_LOOPBACK = "127.0.0.1"
# Open forwarded connections (= serving threads) one claw may hold per service.
CONNECTIONS_PER_CLAW = 16


@dataclass(frozen=True)
class ClawIdentity:
    """Who is on the other end of a forwarded connection, as the host knows it."""

    name: str


class ForwardedConnection(Protocol):
    """One forwarded connection as a service sees it: the socket-like subset
    of an SSH channel (services never import paramiko)."""

    def recv(self, nbytes: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...

    def settimeout(self, timeout: float | None, /) -> None: ...

    def close(self) -> None: ...


class ForwardedService(Protocol):
    """A host-side service a claw can reach on ``127.0.0.1:guest_port``."""

    name: str
    guest_port: int

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        """Serve one connection; runs on its own thread, must close ``conn``."""


class ClawSlots:
    """At most ``limit`` holders at once per claw, taken without waiting: a
    claw over its limit is refused, never queued (a queue would be one more
    thing it could fill). Used for connections here and for requests and
    long polls by the HTTP services."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_acquire(self, claw: str) -> bool:
        with self._lock:
            held = self._held.get(claw, 0)
            if held >= self.limit:
                return False
            self._held[claw] = held + 1
            return True

    def release(self, claw: str) -> None:
        with self._lock:
            held = self._held.get(claw, 0) - 1
            if held > 0:
                self._held[claw] = held
            else:
                self._held.pop(claw, None)

    def held(self, claw: str) -> int:
        with self._lock:
            return self._held.get(claw, 0)

    @contextmanager
    def hold(self, claw: str) -> Iterator[bool]:
        """``with slots.hold(name) as ok:`` — ``ok`` says whether a slot was
        taken; it is given back when the block ends."""
        ok = self.try_acquire(claw)
        try:
            yield ok
        finally:
            if ok:
                self.release(claw)


class ServiceRegistry:
    """The set of services every claw's transport gets forwards for, and the
    count of each claw's open connections to each of them."""

    def __init__(
        self,
        services: Iterable[ForwardedService] = (),
        *,
        connections_per_claw: int = CONNECTIONS_PER_CLAW,
    ) -> None:
        self.connections_per_claw = connections_per_claw
        self._services: dict[int, ForwardedService] = {}
        self._open: dict[int, ClawSlots] = {}
        for service in services:
            self.register(service)

    def register(self, service: ForwardedService) -> None:
        if service.guest_port in self._services:
            other = self._services[service.guest_port].name
            raise ValueError(f"port {service.guest_port} already used by {other}")
        self._services[service.guest_port] = service
        self._open[service.guest_port] = ClawSlots(self.connections_per_claw)

    def open_connections(self, claw: str) -> int:
        """How many forwarded connections ``claw`` has open (all services)."""
        return sum(slots.held(claw) for slots in self._open.values())

    def __iter__(self) -> Iterator[ForwardedService]:
        return iter(list(self._services.values()))

    @property
    def ports(self) -> list[int]:
        return sorted(self._services)

    def install(self, transport: paramiko.Transport, claw: ClawIdentity) -> None:
        """Ask the guest to listen for every registered service on this transport.

        paramiko keeps a single forwarded-connection handler per transport, so
        one router serves all ports and picks the service by the port the guest
        connected to. The identity is bound here, per transport, so a
        connection can only ever be attributed to the claw whose channel
        carried it.
        """
        services = dict(self._services)
        open_slots = dict(self._open)

        def route(chan: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
            service = services.get(server[1])
            if service is None or server[0] != GUEST_LOOPBACK:
                # A ClawTransport refuses these before a channel exists; this
                # covers any other transport.
                log.warning(
                    "claw %s: forwarded connection to unknown %s",
                    claw.name,
                    server,
                    extra={"claw": claw.name},
                )
                _close(chan)
                return
            slots = open_slots[server[1]]
            if not slots.try_acquire(claw.name):
                # Refused before a thread exists: a claw opening connections
                # faster than it closes them costs the host one close each.
                log.warning(
                    "claw %s: %s connection refused, %d already open",
                    claw.name,
                    service.name,
                    slots.limit,
                    extra={"claw": claw.name},
                )
                _close(chan)
                return
            # paramiko calls this on its transport thread: hand off at once so
            # one slow request never stalls the claw's whole channel.
            try:
                threading.Thread(
                    target=_serve_one,
                    args=(service, claw, chan, slots),
                    name=f"{service.name}:{claw.name}",
                    daemon=True,
                ).start()
            except RuntimeError:  # the interpreter cannot start another thread
                slots.release(claw.name)
                log.error("claw %s: no thread for a %s connection", claw.name, service.name)
                _close(chan)

        for port in sorted(services):
            transport.request_port_forward(GUEST_LOOPBACK, port, handler=route)


def _serve_one(
    service: ForwardedService, claw: ClawIdentity, chan: paramiko.Channel, slots: ClawSlots
) -> None:
    try:
        with serving_claw(claw.name):
            try:
                service.handle(claw, chan)
            except (EOFError, OSError, paramiko.SSHException) as exc:
                # The claw hung up or the transport went away mid-answer: routine.
                log.info(
                    "service %s: claw %s's connection dropped (%s)",
                    service.name,
                    claw.name,
                    type(exc).__name__,
                )
            except Exception:  # noqa: BLE001 — one bad request must not kill the channel
                # A bug in the service (it answers what the claw sends itself);
                # the claw's log budget limits how many tracebacks it can cause.
                log.exception("service %s failed for claw %s", service.name, claw.name)
    finally:
        _close(chan)
        slots.release(claw.name)


def _close(chan: paramiko.Channel) -> None:
    try:
        chan.close()
    except (EOFError, OSError, paramiko.SSHException):
        pass  # the transport is already gone (guest stopped, host hung up)
