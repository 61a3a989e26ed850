"""A small, strict HTTP/1.1 server that runs directly on one forwarded SSH channel.

Each forwarded connection is already a private, authenticated byte stream
labelled with its claw, so there is no listening socket on the host at all:
h11 (a sans-I/O HTTP/1.1 parser, >= 0.16) is fed what ``conn.recv`` returns,
and routes get the claw identity as an argument. Several requests may follow
each other on one connection (the guest's httpx client keeps connections
alive).

Everything the other end sends is untrusted (the claw is assumed
compromised), so the server is bounded in every direction (``HttpLimits``;
docs/security.md, "Host services under attack", says which attack each limit
answers):

* framing: ``Content-Length`` only (digits, one header, at most
  ``max_body``); ``Transfer-Encoding`` in a request, folded header lines and
  anything h11 refuses are a 4xx with a short reason, and the connection is
  closed without reading the rest;
* size: the request line and headers together at most ``max_head`` bytes, at
  most ``max_headers`` header lines, a target of at most ``max_target``;
* time: deadlines, not per-read timeouts — the head must be complete
  ``head_timeout_s`` after the connection opens (or after the first byte of a
  later request), the body ``body_timeout_s`` after the head, an idle
  keep-alive connection is closed after ``idle_timeout_s``, and each write
  must finish within ``send_timeout_s``; a claw trickling bytes gains nothing;
* concurrency, per claw: at most ``requests_per_claw`` requests in handlers at
  once and at most ``long_polls_per_claw`` of the routes marked ``long_poll``
  (the rest get 429 with Retry-After at once). The number of connections (and
  so threads) is capped one layer down, in ``channel.forwarding``;
* rate, per claw: with a ``Pacer`` (the controller shares one between its
  services), each request waits its turn before anything answers it, refusals
  included, so no claw can make the host work for it faster than that rate.

A route that raises gets a 500 with a generic body and the controller one log
line: no traceback for input-shaped failures (``ClawdenError``,
``ValueError``, ``OverflowError``, ``RecursionError``), a traceback for
anything else, which the
controller's per-claw log budget limits (``channel.logbudget``).
"""

from __future__ import annotations

import http
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11

from appliance.channel.forwarding import ClawIdentity, ClawSlots, ForwardedConnection
from appliance.core.errors import ClawdenError
from appliance.core.quotas import Pacer
from appliance.core.textsafe import printable

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # the default request body limit (a service may raise it)


@dataclass(frozen=True)
class HttpLimits:
    """What one service lets a claw's requests cost the host."""

    max_body: int = MAX_BODY
    max_head: int = 16 * 1024  # request line + headers, bytes
    max_headers: int = 100
    max_target: int = 4096
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 60.0
    requests_per_claw: int = 8
    long_polls_per_claw: int = 4


# After refusing a request whose body is still coming, read (and drop) at most
# this much for at most this long, so the refusal reaches the client before the
# close (a close with unread data can reset the connection and lose it).
_LINGER_BYTES = 64 * 1024
_LINGER_S = 1.0
_RECV = 64 * 1024
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
# Failures of a route that are about the input it was given, not a host bug:
# one log line, no traceback (RecursionError: JSON nested thousands deep).
_INPUT_ERRORS = (ClawdenError, ValueError, OverflowError, RecursionError)
_INTERNAL = "the host failed to do this; its operator can check the log"


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


class _LongPoll:
    """A route marked by ``long_poll``."""

    def __init__(self, route: Route) -> None:
        self.route = route

    def __call__(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        return self.route(claw, request)


def long_poll(route: Route) -> Route:
    """Mark ``route`` as one that holds its request open while it waits (the
    host API's approval wait): a claw may have at most
    ``HttpLimits.long_polls_per_claw`` of them running at once."""
    return _LongPoll(route)


def error_response(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """An error both the guest's host-API client and its ``openai`` client
    read: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return HttpResponse(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _short(text: str, limit: int = 200) -> str:
    """Guest-influenced text for a reason or a log line: bounded and escaped."""
    text = printable(text)
    return text if len(text) <= limit else text[:limit] + "…"


class HttpService:
    """A ``ForwardedService`` speaking HTTP with a fixed (method, path) route table."""

    def __init__(
        self,
        name: str,
        guest_port: int,
        routes: Mapping[tuple[str, str], Route],
        *,
        limits: HttpLimits | None = None,
        pacer: Pacer | None = None,
    ):
        self.name = name
        self.guest_port = guest_port
        self.limits = limits or HttpLimits()
        self.pacer = pacer
        self._routes = dict(routes)
        # One service object serves every claw: these count per claw name.
        self._requests = ClawSlots(self.limits.requests_per_claw)
        self._long_polls = ClawSlots(self.limits.long_polls_per_claw)

    def dispatch(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        path = request.path.split("?", 1)[0]
        route = self._routes.get((request.method, path))
        if route is None:
            known = any(p == path for _, p in self._routes)
            if known:
                return HttpResponse.json(405, {"error": f"{request.method} not allowed here"})
            return HttpResponse.json(404, {"error": f"no such endpoint: {request.path[:200]}"})
        if not isinstance(route, _LongPoll):
            return self._call(route, claw, request)
        with self._long_polls.hold(claw.name) as admitted:
            if not admitted:
                return error_response(
                    429,
                    f"this claw already has {self.limits.long_polls_per_claw} long polls waiting; "
                    "wait for one to answer",
                    "too_many_waits",
                    {"Retry-After": "5"},
                )
            return self._call(route, claw, request)

    def _call(self, route: Route, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        try:
            return route(claw, request)
        except _INPUT_ERRORS as exc:
            log.warning(
                "claw %s: %s %s %s failed: %s: %s",
                claw.name,
                self.name,
                request.method,
                _short(request.path, 100),
                type(exc).__name__,
                _short(str(exc)),
            )
        except Exception:  # noqa: BLE001 — the claw gets an answer, the log the detail
            log.exception(
                "claw %s: %s %s %s failed",
                claw.name,
                self.name,
                request.method,
                _short(request.path, 100),
            )
        return error_response(500, _INTERNAL, "internal")

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        _Connection(self, claw, conn).serve()


class _Closed(Exception):
    """The connection is over: the claw hung up, or a deadline passed (worth
    an info line when the claw had started a request it did not finish)."""

    def __init__(self, why: str, level: int = logging.DEBUG) -> None:
        super().__init__(why)
        self.level = level


class _Refused(Exception):
    """The request is refused before any handler sees it; the connection is
    closed after the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Connection:
    """One forwarded connection: requests read, answered and (if both sides
    agree) the next one read, until the claw hangs up or a limit ends it."""

    def __init__(self, service: HttpService, claw: ClawIdentity, conn: ForwardedConnection):
        self.service = service
        self.limits = service.limits
        self.claw = claw
        self.conn = conn
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)

    # ---- the loop ------------------------------------------------------------------
    def serve(self) -> None:
        head_deadline: float | None = time.monotonic() + self.limits.head_timeout_s
        while True:
            try:
                request = self._read_request(head_deadline)
            except _Closed as exc:
                log.log(
                    exc.level,
                    "claw %s: %s connection closed: %s",
                    self.claw.name,
                    self.service.name,
                    exc,
                )
                return
            except _Refused as refusal:
                self._refuse(refusal)
                return
            if not self._respond(request):
                return
            # Keep-alive: the next request may come any time within the idle
            # timeout; its head deadline starts with its first byte.
            head_deadline = None

    # ---- reading -------------------------------------------------------------------
    def _read_request(self, head_deadline: float | None) -> HttpRequest:
        limits = self.limits
        raw = bytearray(self.h11.trailing_data[0])  # a pipelined request's start
        if raw and head_deadline is None:
            head_deadline = time.monotonic() + limits.head_timeout_s
        idle_deadline = time.monotonic() + limits.idle_timeout_s
        while True:
            event = self._next_event(raw)
            if event is not h11.NEED_DATA:
                break
            if head_deadline is None:
                data = self._recv(idle_deadline, "idle keep-alive", limits.max_head, partial=False)
                head_deadline = time.monotonic() + limits.head_timeout_s
            else:
                data = self._recv(head_deadline, "request head", limits.max_head, partial=bool(raw))
            raw += data
            self.h11.receive_data(data)
        if isinstance(event, h11.ConnectionClosed):
            raise _Closed("the claw closed the connection")
        if not isinstance(event, h11.Request):
            raise _Refused(400, "expected a request")
        # Exactly the bytes h11 parsed as this head (body bytes stay in its buffer).
        head = bytes(raw[: len(raw) - len(self.h11.trailing_data[0])])
        length = self._check_head(head, event)
        if length > limits.max_body:
            raise _Refused(413, f"the body is {length} bytes; the limit is {limits.max_body}")
        if self.h11.they_are_waiting_for_100_continue:
            self._send(h11.InformationalResponse(status_code=100, headers=[]))
        body = self._read_body(length, time.monotonic() + limits.body_timeout_s)
        return HttpRequest(
            method=event.method.decode("ascii"),
            path=event.target.decode("ascii", "replace"),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers},
            body=body,
        )

    def _next_event(self, raw: bytearray) -> Any:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if _has_header(raw, b"transfer-encoding"):
                raise _Refused(400, _NO_TRANSFER_ENCODING) from None
            status = exc.error_status_hint
            if status == 431:
                reason = f"the request head is over {self.limits.max_head} bytes"
            else:
                reason = _short(str(exc), 100)
            raise _Refused(status if status in (400, 413, 414, 431) else 400, reason) from None

    def _check_head(self, head: bytes, request: h11.Request) -> int:
        """Refuse what h11 accepts but this server does not; the body length."""
        limits = self.limits
        # h11 bounds a head still incomplete; one that arrived whole is checked here.
        if len(head) > limits.max_head:
            raise _Refused(431, f"the request head is over {limits.max_head} bytes")
        if len(request.target) > limits.max_target:
            raise _Refused(414, f"the request target is over {limits.max_target} bytes")
        lines = head.rstrip(b"\r\n").split(b"\n")[1:]
        if len(lines) > limits.max_headers:
            raise _Refused(431, f"the request has over {limits.max_headers} header lines")
        lengths = []
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                raise _Refused(400, "folded header lines are not accepted")
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                raise _Refused(400, _NO_TRANSFER_ENCODING)
            if name == b"content-length":
                lengths.append(value.strip())
        if len(lengths) > 1:
            raise _Refused(400, "the request has more than one Content-Length header")
        if not lengths:
            return 0
        digits = lengths[0]
        if not digits.isdigit():  # ASCII digits only (bytes.isdigit): no sign, no comma
            raise _Refused(400, "Content-Length must be a number of bytes")
        if len(digits) > 18:
            raise _Refused(413, f"the body is too large; the limit is {limits.max_body} bytes")
        return int(digits)

    def _read_body(self, length: int, deadline: float) -> bytes:
        body = bytearray()
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Refused(400, _short(str(exc), 100)) from None
            if event is h11.NEED_DATA:
                data = self._recv(
                    deadline, "request body", min(_RECV, length - len(body)), partial=True
                )
                self.h11.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _Refused(400, "unexpected data in the request body")

    def _recv(self, deadline: float, what: str, nbytes: int, *, partial: bool) -> bytes:
        """Some bytes, or ``_Closed`` at EOF or once ``deadline`` has passed
        (``partial``: the claw had started a request, worth an info line)."""
        data = recv_before(self.conn, deadline, max(nbytes, 1))
        level = logging.INFO if partial else logging.DEBUG
        if data is None:
            raise _Closed(f"the {what} was not complete in time", level)
        if not data:
            raise _Closed(f"the claw hung up during the {what}", level)
        return data

    # ---- answering -----------------------------------------------------------------
    def _respond(self, request: HttpRequest) -> bool:
        """Answer one request; whether the connection can carry another."""
        service = self.service
        if service.pacer is not None:
            # Waiting holds this connection's thread, asleep: the claw's cap on
            # connections bounds how many wait, and how long the queue is.
            wait = service.pacer.delay(self.claw.name, time.monotonic())
            if wait > 0:
                time.sleep(wait)
        with service._requests.hold(self.claw.name) as admitted:
            if admitted:
                response = service.dispatch(self.claw, request)
            else:
                response = error_response(
                    429,
                    f"this claw already has {self.limits.requests_per_claw} requests in progress "
                    f"on the host's {service.name} service; retry shortly",
                    "too_many_requests",
                    {"Retry-After": "1"},
                )
            # The slot is held until the answer is sent (a stream included).
            if not self._send_response(request, response):
                return False
        h = self.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            return True
        return False

    def _send_response(self, request: HttpRequest, response: HttpResponse) -> bool:
        stream = original = response.stream
        try:
            try:
                start = self._start_line(response)
            except (h11.LocalProtocolError, ValueError):
                # A handler put something unsendable in its status or headers.
                log.exception(
                    "claw %s: %s %s answered an unsendable response",
                    self.claw.name,
                    self.service.name,
                    _short(request.path, 100),
                )
                response, stream = error_response(500, _INTERNAL, "internal"), None
                start = self._start_line(response)
            self._send(start)
            if request.method == "HEAD" or response.status in (204, 304):
                pass
            elif stream is not None:
                for chunk in stream:
                    if chunk:  # an empty chunk would end the body early
                        self._send(h11.Data(data=chunk))
            elif response.body:
                self._send(h11.Data(data=response.body))
            self._send(h11.EndOfMessage())
            return True
        except (OSError, EOFError) as exc:
            log.debug("claw %s: gone while answering (%s)", self.claw.name, type(exc).__name__)
            return False
        except h11.LocalProtocolError as exc:
            log.error("claw %s: %s could not answer: %s", self.claw.name, self.service.name, exc)
            return False
        except Exception:  # noqa: BLE001 — a failing stream ends this answer only
            log.exception("claw %s: %s response stream failed", self.claw.name, self.service.name)
            return False
        finally:
            close = getattr(original, "close", None)
            if callable(close):
                close()

    def _start_line(self, response: HttpResponse) -> h11.Response:
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP] + [
            ("Server", "clawden-host")
        ]
        if response.stream is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(response.body))))
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        return h11.Response(status_code=response.status, headers=headers, reason=reason)

    def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.conn.settimeout(self.limits.send_timeout_s)
            self.conn.sendall(data)

    def _refuse(self, refusal: _Refused) -> None:
        """Answer a refused request with its reason and close (nothing more of
        it is read, except a short bounded linger)."""
        log.warning(
            "claw %s: %s refused a request: %d %s",
            self.claw.name,
            self.service.name,
            refusal.status,
            refusal.reason,
        )
        response = error_response(refusal.status, refusal.reason, "bad_request")
        phrase = http.HTTPStatus(refusal.status).phrase
        head = (
            f"HTTP/1.1 {refusal.status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n"
            "Server: clawden-host\r\n\r\n"
        ).encode()
        try:
            self.conn.settimeout(self.limits.send_timeout_s)
            self.conn.sendall(head + response.body)
            linger(self.conn)
        except (OSError, EOFError):
            pass  # the claw is gone; nothing left to tell it


_NO_TRANSFER_ENCODING = "Transfer-Encoding is not accepted here; send the body with Content-Length"


def _has_header(raw: bytes | bytearray, name: bytes) -> bool:
    head = bytes(raw).split(b"\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return any(line.partition(b":")[0].strip().lower() == name for line in head.split(b"\n")[1:])


def recv_before(conn: ForwardedConnection, deadline: float, nbytes: int) -> bytes | None:
    """``conn.recv(nbytes)``, waiting no later than ``deadline`` (monotonic):
    ``None`` once it has passed — however the bytes trickle in, a deadline
    ends the wait, where a per-read timeout would restart with every byte.
    ``b""`` when the other end has closed the connection (or dropped it)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    conn.settimeout(remaining)
    try:
        return conn.recv(nbytes)
    except TimeoutError:  # socket.timeout, which paramiko raises too
        return None
    except (OSError, EOFError):
        return b""


def linger(conn: ForwardedConnection) -> None:
    """Close our side for writing, then drop what the client still sends
    (bounded in bytes and time) so the answer reaches it before the close."""
    shutdown = getattr(conn, "shutdown", None)
    if callable(shutdown):
        try:
            shutdown(1)  # SHUT_WR: the answer is complete
        except (OSError, EOFError):
            return
    deadline = time.monotonic() + _LINGER_S
    drained = 0
    while drained < _LINGER_BYTES:
        data = recv_before(conn, deadline, min(_RECV, _LINGER_BYTES - drained))
        if not data:
            return
        drained += len(data)
