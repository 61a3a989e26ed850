"""Host services reached from inside a claw through SSH remote port forwards.

The host asks the guest's sshd to listen on ``127.0.0.1:<port>`` *inside the
VM*; every connection a guest process makes there arrives on the host as a new
SSH channel of *that claw's* transport. The claw's identity therefore comes
from which transport carried the connection — never from anything the guest
sends — and every service handler receives it explicitly.

The host services in ``appliance.services`` (host API, LLM gateway, egress)
plug in as ``ForwardedService``s; the egress proxy to come will too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import paramiko

log = logging.getLogger(__name__)

GUEST_LOOPBACK = "127.0.0.1"


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


class ServiceRegistry:
    """The set of services every claw's transport gets forwards for."""

    def __init__(self, services: Iterable[ForwardedService] = ()) -> None:
        self._services: dict[int, ForwardedService] = {}
        for service in services:
            self.register(service)

    def register(self, service: ForwardedService) -> None:
        if service.guest_port in self._services:
            other = self._services[service.guest_port].name
            raise ValueError(f"port {service.guest_port} already used by {other}")
        self._services[service.guest_port] = service

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

        def route(chan: paramiko.Channel, origin: tuple[str, int], server: tuple[str, int]) -> None:
            service = services.get(server[1])
            if service is None or server[0] != GUEST_LOOPBACK:
                log.warning("claw %s: forwarded connection to unknown %s", claw.name, server)
                chan.close()
                return
            # paramiko calls this on its transport thread: hand off at once so
            # one slow request never stalls the claw's whole channel.
            threading.Thread(
                target=_serve_one,
                args=(service, claw, chan),
                name=f"{service.name}:{claw.name}",
                daemon=True,
            ).start()

        for port in sorted(services):
            transport.request_port_forward(GUEST_LOOPBACK, port, handler=route)


def _serve_one(service: ForwardedService, claw: ClawIdentity, chan: paramiko.Channel) -> None:
    try:
        service.handle(claw, chan)
    except (EOFError, OSError, paramiko.SSHException) as exc:
        # The claw hung up or the transport went away mid-answer: routine.
        log.info("service %s: claw %s's connection dropped (%s)", service.name, claw.name, exc)
    except Exception:  # noqa: BLE001 — one bad request must not kill the channel
        log.exception("service %s failed for claw %s", service.name, claw.name)
    finally:
        try:
            chan.close()
        except (EOFError, OSError, paramiko.SSHException):
            pass  # the transport is already gone (guest stopped, host hung up)
