"""A small HTTP/1.1 server that runs directly on one forwarded SSH channel.

Each forwarded connection is already a private, authenticated byte stream
labelled with its claw, so there is no listening socket on the host at all:
the standard library's request handler reads and writes the forwarded SSH channel
(which is socket-like), and routes get the claw identity as an argument.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from appliance.channel.forwarding import ClawIdentity, ForwardedConnection

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024  # a claw cannot make the host buffer more than this


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    """A response: either ``body`` (sent with Content-Length) or, when
    ``stream`` is set, an iterable of chunks sent as they come with
    ``Transfer-Encoding: chunked`` (server-sent events from the LLM gateway).

    The stream is always closed (``close()`` if it has one) once sent or when
    the client goes away, so a generator's ``finally`` can release upstream
    connections and record what it saw.
    """

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None

    @classmethod
    def json(cls, status: int, payload: Any) -> HttpResponse:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


Route = Callable[[ClawIdentity, HttpRequest], HttpResponse]


class HttpService:
    """A ``ForwardedService`` speaking HTTP with a fixed (method, path) route table."""

    def __init__(self, name: str, guest_port: int, routes: Mapping[tuple[str, str], Route]):
        self.name = name
        self.guest_port = guest_port
        self._routes = dict(routes)

    def dispatch(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        route = self._routes.get((request.method, request.path.split("?", 1)[0]))
        if route is None:
            known = any(path == request.path.split("?", 1)[0] for _, path in self._routes)
            if known:
                return HttpResponse.json(405, {"error": f"{request.method} not allowed here"})
            return HttpResponse.json(404, {"error": f"no such endpoint: {request.path}"})
        return route(claw, request)

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        conn.settimeout(300)
        # The stdlib handler only needs a socket-like object (makefile, sendall,
        # settimeout), which an SSH channel is.
        _Handler(conn, (f"claw:{claw.name}", 0), _Server(self, claw))  # type: ignore[arg-type]


class _Server:
    """Stands in for socketserver's server object: the handler only reads these."""

    def __init__(self, service: HttpService, claw: ClawIdentity) -> None:
        self.service = service
        self.claw = claw


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clawden-host"
    sys_version = ""
    server: _Server  # type: ignore[assignment]

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(HttpResponse.json(413, {"error": f"body larger than {MAX_BODY} bytes"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        request = HttpRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self._send(self.server.service.dispatch(self.server.claw, request))

    def _send(self, response: HttpResponse) -> None:
        if response.stream is not None:
            self._send_chunked(response, response.stream)
            return
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _send_chunked(self, response: HttpResponse, stream: Iterable[bytes]) -> None:
        try:
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in stream:
                if chunk:  # an empty chunk would end the body early
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    # Flush each chunk: a streamed token is worth sending now.
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)
