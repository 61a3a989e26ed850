"""The egress proxy port (guest ``127.0.0.1:7703``) until the real proxy exists.

The claw's ``web_fetch`` goes through a proxy here: a plain request with an
absolute URI for http, ``CONNECT host:443`` for https. Until the egress
proxy's issue lands, every request is refused with 403 — serving the port
matters, because "refused by the host" tells the model web access is a policy
it can explain to its owner, whereas nothing listening reads as a fault.

For ``CONNECT`` a client only ever shows the status line, so the reason is in
the reason phrase. Nothing is fetched, nothing is forwarded; the request head
is read only to tell ``CONNECT`` from the rest (and to log what was wanted),
under the same bounds as the HTTP services' heads: at most ``max_head`` bytes,
complete within ``head_timeout_s`` of the connection (a deadline — bytes
trickling in do not extend it).
"""

from __future__ import annotations

import json
import logging
import time

from appliance.channel.forwarding import ClawIdentity, ForwardedConnection
from appliance.core.textsafe import printable
from appliance.services.http import HttpLimits, recv_before

log = logging.getLogger(__name__)

EGRESS_PORT = 7703
REASON = "web access is not enabled for this claw yet"
CODE = "egress_not_available"


def _read_head(conn: ForwardedConnection, limits: HttpLimits) -> bytes:
    """The request line and headers (or as much as arrived before a limit)."""
    head = b""
    deadline = time.monotonic() + limits.head_timeout_s
    while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < limits.max_head:
        chunk = recv_before(conn, deadline, min(4096, limits.max_head - len(head)))
        if not chunk:  # the deadline passed, or the claw hung up
            break
        head += chunk
    return head


def refusal(method: str) -> bytes:
    """The whole response for a request with ``method``."""
    if method == "CONNECT":
        return (
            f"HTTP/1.1 403 {REASON}\r\nX-Clawden-Refusal: {CODE}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        ).encode()
    body = json.dumps({"error": {"message": REASON, "code": CODE}}).encode()
    return (
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        f"X-Clawden-Refusal: {CODE}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class EgressStub:
    """A ``ForwardedService`` that refuses every request on the proxy port."""

    def __init__(self, guest_port: int = EGRESS_PORT, limits: HttpLimits | None = None) -> None:
        self.name = "egress"
        self.guest_port = guest_port
        self.limits = limits or HttpLimits()

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        first = _read_head(conn, self.limits).split(b"\n", 1)[0].decode("latin-1").strip()
        method, _, rest = first.partition(" ")
        target = rest.rsplit(" ", 1)[0] if " " in rest else rest
        log.info(
            "claw %s: refused %s %s (no egress yet)",
            claw.name,
            printable(method[:16]),
            printable(target[:200]),
        )
        try:
            conn.settimeout(self.limits.send_timeout_s)
            conn.sendall(refusal(method.upper()))
        except (OSError, EOFError):
            pass  # the claw hung up first; there is nobody left to tell
        # The caller closes the channel.


def egress_stub_service() -> EgressStub:
    return EgressStub()
