"""The HTTP layer of the host services (``services/http.py``) against a claw
that sends whatever it likes, over a socketpair standing in for the
forwarded channel: strict framing, bounded heads and bodies, deadlines that
trickling bytes do not extend, keep-alive, per-claw request and long-poll
caps, and handler failures that never put a guest-caused traceback in the
log. The same limits over a real sshd are in test_host_services_limits.py.
"""

from __future__ import annotations

import http.client
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from appliance.channel.forwarding import ClawIdentity
from appliance.core.quotas import Pacer
from appliance.services.egress_stub import EgressStub
from appliance.services.http import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpService,
    Route,
    long_poll,
)

SMALL = HttpLimits(max_body=1024, head_timeout_s=5, body_timeout_s=5, idle_timeout_s=5)
LINGER = 64 * 1024  # what a refusal may still drain, at most (http._LINGER_BYTES)


@dataclass
class Counting:
    """The server's end of the pair, counting what the service read."""

    sock: socket.socket
    read: int = 0

    def recv(self, nbytes: int, /) -> bytes:
        data = self.sock.recv(nbytes)
        self.read += len(data)
        return data

    def sendall(self, data: bytes, /) -> None:
        self.sock.sendall(data)

    def settimeout(self, timeout: float | None, /) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how: int, /) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Served:
    client: socket.socket
    conn: Counting
    thread: threading.Thread
    ended: list[float] = field(default_factory=list)

    def finished_within(self, seconds: float) -> bool:
        self.thread.join(seconds)
        return not self.thread.is_alive()


@contextmanager
def served(service: HttpService, claw: str = "alice") -> Iterator[Served]:
    server_end, client = socket.socketpair()
    conn = Counting(server_end)
    ended: list[float] = []

    def run() -> None:
        try:
            service.handle(ClawIdentity(claw), conn)
        finally:
            ended.append(time.monotonic())
            server_end.close()  # what the forwarding layer does

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield Served(client, conn, thread, ended)
    finally:
        client.close()
        thread.join(10)
        assert not thread.is_alive()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    will_close: bool

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name)

    def read(self) -> bytes:
        return self.body


def read_response(sock: socket.socket, method: str = "GET") -> Answer:
    """One whole response (it must be the last thing sent so far: the reader buffers)."""
    response = http.client.HTTPResponse(sock, method=method)
    try:
        response.begin()
        body = response.read()
        return Answer(response.status, response.headers, body, bool(response.will_close))
    finally:
        response.close()


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def echo_service(limits: HttpLimits = SMALL, **routes: Route) -> HttpService:
    def echo(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(200, {"claw": claw.name, "len": len(request.body)})

    table: dict[tuple[str, str], Route] = {("POST", "/echo"): echo, ("GET", "/echo"): echo}
    table.update({("GET", "/" + name): route for name, route in routes.items()})
    return HttpService("test", 1, table, limits=limits)


@pytest.fixture(autouse=True)
def no_sigpipe() -> Iterator[None]:
    """As in ``clawden serve``: a write to a connection the claw closed is an
    error, not the end of the process (``clawden`` main() restores SIGPIPE's
    default for the CLI, and other tests in this process call it)."""
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, previous)


@pytest.fixture(autouse=True)
def threads_come_back() -> Iterator[None]:
    """Every test leaves the host with the threads it found."""
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before


def _send_body_in_background(sock: socket.socket, nbytes: int) -> threading.Thread:
    def send() -> None:
        try:
            sock.sendall(b"x" * nbytes)
        except OSError:
            pass  # the server closed after refusing: expected

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


# ---- framing ----------------------------------------------------------------------
BAD_FRAMING = [
    pytest.param(b"Content-Length: -1\r\n", 400, "Content-Length", id="negative"),
    pytest.param(b"Content-Length: +5\r\n", 400, "Content-Length", id="plus-sign"),
    pytest.param(b"Content-Length: 0x10\r\n", 400, "Content-Length", id="hex"),
    pytest.param(b"Content-Length: 1e3\r\n", 400, "Content-Length", id="exponent"),
    pytest.param(b"Content-Length: 5, 5\r\n", 400, "Content-Length", id="list"),
    pytest.param(b"Content-Length: 5\r\nContent-Length: 5\r\n", 400, "more than one", id="dup"),
    pytest.param(b"Content-Length: 5\r\ncontent-length: 6\r\n", 400, "Content-Length", id="clash"),
    pytest.param(b"Transfer-Encoding: chunked\r\n", 400, "Transfer-Encoding", id="chunked"),
    pytest.param(b"Transfer-Encoding: gzip\r\n", 400, "Transfer-Encoding", id="te-gzip"),
    pytest.param(
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400, "Transfer-Encoding", id="cl-te"
    ),
    pytest.param(b"X-A: 1\r\n folded: yes\r\n", 400, "folded", id="obs-fold"),
    pytest.param(b"Content-Length: 1025\r\n", 413, "limit is 1024", id="over-limit"),
    pytest.param(b"Content-Length: " + b"9" * 19 + b"\r\n", 413, "too large", id="huge"),
    pytest.param(b"Content-Length: " + b"9" * 5000 + b"\r\n", 400, "Content-Length", id="vast"),
]


@pytest.mark.parametrize(("headers", "status", "reason"), BAD_FRAMING)
def test_bad_framing_is_refused_and_nothing_more_is_read(
    headers: bytes, status: int, reason: str
) -> None:
    with served(echo_service()) as s:
        head = b"POST /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
        s.client.sendall(head)
        # The claw goes on sending a large body the host must not read.
        sender = _send_body_in_background(s.client, 4 * 1024 * 1024)
        response = read_response(s.client, "POST")
        error = json.loads(response.read())["error"]
        assert response.status == status
        assert reason in error["message"]
        assert response.getheader("Connection") == "close"
        assert s.finished_within(5)
        sender.join(10)
    assert s.conn.read <= SMALL.max_head + LINGER


def test_a_head_over_the_size_limit_or_with_too_many_lines_is_refused() -> None:
    cases = [
        (b"X-Big: " + b"a" * 20_000 + b"\r\n", 431),
        (b"".join(b"X-%d: 1\r\n" % i for i in range(101)), 431),
    ]
    for headers, status in cases:
        with served(echo_service()) as s:
            s.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
            response = read_response(s.client)
            assert response.status == status
            assert s.finished_within(5)
        assert s.conn.read <= SMALL.max_head + LINGER
    with served(echo_service()) as s:
        s.client.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s.client).status == 414


def test_garbage_is_a_short_escaped_400() -> None:
    with served(echo_service()) as s:
        s.client.sendall(b"\x1b[31mHELLO\x00 there\r\n\r\n")
        response = read_response(s.client)
        body = response.read()
        assert response.status == 400
        assert b"\x1b" not in body and b"\x00" not in body
        assert len(body) < 400


def test_a_good_body_is_read_exactly() -> None:
    with served(echo_service()) as s:
        s.client.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n")
        s.client.sendall(b"y" * 1024)
        response = read_response(s.client, "POST")
        assert (response.status, json.loads(response.read())) == (
            200,
            {"claw": "alice", "len": 1024},
        )


def test_expect_100_continue_is_answered_for_an_acceptable_body() -> None:
    with served(echo_service()) as s:
        s.client.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        s.client.settimeout(5)
        assert s.client.recv(100).startswith(b"HTTP/1.1 100 ")
        s.client.sendall(b"abc")
        response = read_response(s.client, "POST")
        assert json.loads(response.read())["len"] == 3


# ---- keep-alive -------------------------------------------------------------------
def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    with served(echo_service()) as s:
        for n in range(20):
            body = b"z" * n
            s.client.sendall(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (n, body)
            )
            response = read_response(s.client, "POST")
            assert response.status == 200 and json.loads(response.read())["len"] == n
            assert not response.will_close
        # Two requests in one write (pipelined) are answered in order.
        s.client.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        both = read_to_end(s.client)
        assert both.count(b"HTTP/1.1 200 OK\r\n") == 2
        assert both.index(b'"len": 0') < both.index(b'"len": 2')
        assert both.endswith(b'{"claw": "alice", "len": 2}')
        assert s.finished_within(5)


def test_a_streamed_answer_then_another_request_on_the_same_connection() -> None:
    closed: list[bool] = []

    def events() -> Iterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b""  # an empty chunk must not end the body
            yield b"data: 2\n\n"
        finally:
            closed.append(True)

    def stream(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, headers={"Content-Type": "text/event-stream"}, stream=events())

    with served(echo_service(stream=stream)) as s:
        s.client.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(s.client)
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"data: 1\n\ndata: 2\n\n"
        s.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s.client).status == 200
    assert closed == [True]


# ---- deadlines --------------------------------------------------------------------
def _trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


@pytest.mark.parametrize("phase", ["head", "body"])
def test_trickled_bytes_do_not_extend_the_deadline(phase: str) -> None:
    limits = HttpLimits(head_timeout_s=0.6, body_timeout_s=0.6, idle_timeout_s=5)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    stop = threading.Event()
    with served(echo_service(limits)) as s:
        started = time.monotonic()
        if phase == "head":
            data = head
        else:
            s.client.sendall(head)
            data = b"b" * 100
        trickler = threading.Thread(target=_trickle, args=(s.client, data, 0.05, stop))
        trickler.start()
        try:
            # One byte every 50 ms would keep a per-read timeout alive forever.
            assert s.finished_within(3)
            assert s.ended[0] - started < 1.5
        finally:
            stop.set()
            trickler.join()
        s.client.settimeout(2)
        assert s.client.recv(100) == b""  # closed, no answer


def test_an_idle_keep_alive_connection_is_closed() -> None:
    limits = HttpLimits(head_timeout_s=5, idle_timeout_s=0.5)
    with served(echo_service(limits)) as s:
        s.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s.client).status == 200
        answered = time.monotonic()
        assert s.finished_within(3)
        assert 0.4 < s.ended[0] - answered < 1.5


def test_a_connection_that_never_sends_is_closed_at_the_head_deadline() -> None:
    limits = HttpLimits(head_timeout_s=0.5)
    with served(echo_service(limits)) as s:
        assert s.finished_within(3)


# ---- per-claw caps ----------------------------------------------------------------
def _blocking_route(release: threading.Event, entered: threading.Semaphore) -> Route:
    def route(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        entered.release()
        release.wait(10)
        return HttpResponse.json(200, {"claw": claw.name})

    return route


def test_requests_in_progress_are_capped_per_claw() -> None:
    release, entered = threading.Event(), threading.Semaphore(0)
    limits = HttpLimits(requests_per_claw=2, head_timeout_s=5, idle_timeout_s=5)
    service = echo_service(limits, slow=_blocking_route(release, entered))
    with served(service) as a1, served(service) as a2, served(service) as a3:
        with served(service, claw="bob") as b:
            for s in (a1, a2):
                s.client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                assert entered.acquire(timeout=5)
            started = time.monotonic()
            a3.client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = read_response(a3.client)
            assert refused.status == 429 and refused.getheader("Retry-After") == "1"
            assert "2 requests in progress" in json.loads(refused.read())["error"]["message"]
            assert time.monotonic() - started < 1
            # Bob is not alice: his request goes through while hers wait.
            b.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert json.loads(read_response(b.client).read()) == {"claw": "bob", "len": 0}
            release.set()
            for s in (a1, a2):
                assert read_response(s.client).status == 200
            # The refused connection stays usable once a slot is free again.
            a3.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(a3.client).status == 200


def test_long_polls_are_capped_per_claw() -> None:
    release, entered = threading.Event(), threading.Semaphore(0)
    limits = HttpLimits(long_polls_per_claw=2, head_timeout_s=5, idle_timeout_s=5)
    service = echo_service(limits, wait=long_poll(_blocking_route(release, entered)))
    with served(service) as a1, served(service) as a2, served(service) as a3:
        with served(service, claw="bob") as b:
            for s in (a1, a2):
                s.client.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                assert entered.acquire(timeout=5)
            a3.client.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = read_response(a3.client)
            assert refused.status == 429 and refused.getheader("Retry-After")
            assert "2 long polls" in json.loads(refused.read())["error"]["message"]
            # Other routes of the same claw are not long polls.
            a3.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(a3.client).status == 200
            b.client.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            assert entered.acquire(timeout=5)  # bob has long polls of his own
            release.set()
            for s in (a1, a2, b):
                assert read_response(s.client).status == 200


# ---- handler failures -------------------------------------------------------------
def test_a_failing_handler_is_a_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    def bad_input(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        raise ValueError("cannot convert float NaN to integer")

    def bug(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        raise ZeroDivisionError("oops")

    service = echo_service(bad_input=bad_input, bug=bug)
    for path, traceback in (("/bad_input", False), ("/bug", True)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="appliance"), served(service) as s:
            s.client.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            response = read_response(s.client)
            error = json.loads(response.read())["error"]
            assert response.status == 500
            assert error["message"] == "the host failed to do this; its operator can check the log"
            assert "NaN" not in error["message"] and "oops" not in error["message"]
        [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert (record.exc_info is not None) is traceback
        assert "alice" in record.getMessage()


def test_unsendable_headers_from_a_handler_are_a_500() -> None:
    def crlf(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b"x", {"X-Note": "a\r\nSet-Cookie: evil=1"})

    with served(echo_service(crlf=crlf)) as s:
        s.client.sendall(b"GET /crlf HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(s.client)
        assert response.status == 500 and response.getheader("Set-Cookie") is None


# ---- the egress stub ----------------------------------------------------------------
def test_the_egress_stub_reads_a_bounded_head_before_a_deadline() -> None:
    stub = EgressStub(limits=HttpLimits(head_timeout_s=0.5))
    server_end, client = socket.socketpair()
    stop = threading.Event()
    trickler = threading.Thread(
        target=_trickle, args=(client, b"GET http://example.com/ HTTP/1.1\r\n" * 10, 0.05, stop)
    )
    try:
        started = time.monotonic()
        trickler.start()
        stub.handle(ClawIdentity("alice"), Counting(server_end))
        assert time.monotonic() - started < 1.5  # not one read timeout per byte
        stop.set()
        client.settimeout(2)
        assert client.recv(100).startswith(b"HTTP/1.1 403 ")
    finally:
        stop.set()
        trickler.join()
        server_end.close()
        client.close()
    # A head over the size limit: reading stops at the limit.
    server_end, client = socket.socketpair()
    conn = Counting(server_end)
    client.sendall(b"GET http://example.com/ HTTP/1.1\r\nX: ")
    sender = _send_body_in_background(client, 1024 * 1024)
    try:
        stub.handle(ClawIdentity("alice"), conn)
        assert conn.read <= HttpLimits().max_head
    finally:
        server_end.close()
        sender.join(10)
        client.close()


def test_a_pacer_spaces_a_claws_requests_before_anything_answers_them() -> None:
    asked: list[tuple[str, float]] = []

    class Recording(Pacer):
        def delay(self, claw: str, now_s: float) -> float:
            wait = super().delay(claw, now_s)
            asked.append((claw, wait))
            return wait

    pacer = Recording(per_second=5, burst=2)
    service = HttpService("test", 1, {("GET", "/echo"): _echo_route}, limits=SMALL, pacer=pacer)
    started = time.monotonic()
    with served(service) as s:
        for _ in range(6):
            s.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s.client).status == 200
    took = time.monotonic() - started
    with served(service, claw="bob") as s:
        s.client.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s.client).status == 200
    alice = [wait for claw, wait in asked if claw == "alice"]
    assert len(alice) == 6 and alice[:2] == [0.0, 0.0]
    assert sum(alice[2:]) > 0  # past the burst, requests waited their turn ...
    # ... and the waits were slept: the 6th could start 4 intervals after the 1st.
    assert took >= 4 / 5 - 0.01
    assert asked[-1] == ("bob", 0.0)  # another claw's turn is its own


def _echo_route(claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(200, {"claw": claw.name})
