"""The host services' limits end to end, over a real sshd (socat-bridged, no
VM): the "guest" is this machine, whose loopback ports are the host's remote
forwards. What is left here is how the limits are counted (per claw, across
claws, over keep-alive) and the log budget's summary line; the attacks
themselves, with the host's health measured around each, are in
tests/integration/test_hostile_host_services.py (``pytest -m hostile``), and
parsing details in test_http_strict.py.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest
from sqlite_utils import Database

from appliance.channel.forwarding import (
    ClawIdentity,
    ForwardedConnection,
    ForwardedService,
    ServiceRegistry,
)
from appliance.channel.logbudget import ClawLogBudget
from appliance.channel.transport import ChannelTarget, open_transport
from appliance.core.errors import Unavailable
from appliance.core.model import Claw, ClawState
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest
from appliance.store import ClawRepository, Store
from tests.support.local_sshd import LocalSshd, local_sshd, sshd_available

needs_sshd = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")


@pytest.fixture(autouse=True)
def no_sigpipe() -> Iterator[None]:
    """As in ``clawden serve`` (other tests in this process run the CLI's
    main(), which restores SIGPIPE's default)."""
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, previous)


@pytest.fixture(autouse=True)
def threads_come_back() -> Iterator[None]:
    """Every test leaves the host with the threads it found (transports,
    serving threads and clients all gone)."""
    before = threading.active_count()
    yield
    assert _threads_settle(before)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    with local_sshd(tmp_path / "sshd") as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OnPort:
    """One shared service object, reached on a port of its own per claw (every
    claw here shares this machine's loopback, unlike real guests)."""

    def __init__(self, inner: ForwardedService) -> None:
        self.inner = inner
        self.name = inner.name
        self.guest_port = _free_port()

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        self.inner.handle(claw, conn)


def _connect(
    server: LocalSshd, claw: str, service: ForwardedService, connections_per_claw: int = 16
) -> tuple[paramiko.Transport, ServiceRegistry, int]:
    on_port = OnPort(service)
    target = ChannelTarget(
        claw=claw,
        socket_path=server.socket_path,
        pinned_host_key=server.host_public,
        client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private)),
        user=server.user,
    )
    for attempt in range(20):
        try:
            transport = open_transport(target, timeout=10)
            break
        except Unavailable:
            # local_sshd yields once socat's socket file exists, which on a
            # busy machine can be a moment before it listens.
            if attempt == 19:
                raise
            time.sleep(0.1)
    registry = ServiceRegistry([on_port], connections_per_claw=connections_per_claw)
    registry.install(transport, ClawIdentity(claw))
    return transport, registry, on_port.guest_port


def _until(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _threads_settle(at_most: int) -> bool:
    return _until(lambda: threading.active_count() <= at_most)


def _get(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _post(port: int, path: str, body: object, timeout: float = 10) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


class _FakeTransport:
    def __init__(self) -> None:
        self.handlers: dict[int, Callable[..., None]] = {}

    def request_port_forward(self, address: str, port: int, handler: Callable[..., None]) -> int:
        self.handlers[port] = handler
        return port


class _FakeChannel:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def recv(self, nbytes: int, /) -> bytes:
        return b""

    def sendall(self, data: bytes, /) -> None:
        pass

    def settimeout(self, timeout: float | None, /) -> None:
        pass

    def close(self) -> None:
        self.closed.set()


class _Blocking:
    name = "blocking"
    guest_port = 7799

    def __init__(self) -> None:
        self.release = threading.Event()
        self.serving: list[str] = []

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        self.serving.append(claw.name)
        self.release.wait(10)


def test_one_registry_counts_connections_per_claw() -> None:
    """In the controller one registry serves every claw: its cap is per claw."""
    service = _Blocking()
    registry = ServiceRegistry([service], connections_per_claw=3)
    transports = {name: _FakeTransport() for name in ("alice", "bob")}
    for name, transport in transports.items():
        registry.install(transport, ClawIdentity(name))  # type: ignore[arg-type]
    before = threading.active_count()
    channels = {name: [_FakeChannel() for _ in range(4)] for name in transports}
    try:
        for name, chans in channels.items():
            for chan in chans:
                transports[name].handlers[7799](chan, ("127.0.0.1", 1), ("127.0.0.1", 7799))
        assert _until(lambda: len(service.serving) == 6)
        assert sorted(service.serving) == ["alice"] * 3 + ["bob"] * 3
        for chans in channels.values():
            assert [c.closed.is_set() for c in chans] == [False, False, False, True]
        assert threading.active_count() <= before + 6  # none for the refused two
        assert registry.open_connections("alice") == registry.open_connections("bob") == 3
    finally:
        service.release.set()
    assert _until(lambda: registry.open_connections("alice") == 0)
    assert all(c.closed.is_set() for chans in channels.values() for c in chans)
    assert _threads_settle(before)


@needs_sshd
def test_keep_alive_carries_many_requests_over_the_forward(sshd: LocalSshd) -> None:
    transport, registry, port = _connect(sshd, "alice", host_api_service())
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(20):
                conn.request("GET", "/v1/whoami")
                response = conn.getresponse()
                assert (response.status, response.read()) == (200, b'{"claw": "alice"}')
            first_socket = conn.sock
            conn.request("GET", "/v1/health")
            conn.getresponse().read()
            assert conn.sock is first_socket  # the same connection throughout
            assert registry.open_connections("alice") == 1
        finally:
            conn.close()
    finally:
        transport.close()


@pytest.fixture
def two_claws(db: Database) -> Database:
    for name in ("alice", "bob"):
        ClawRepository(db).add(
            Claw(name, name.title(), ClawState.RUNNING, "img", 1, 512, "2026-01-01")
        )
    return db


@needs_sshd
def test_a_flood_of_bad_requests_leaves_a_bounded_log(sshd: LocalSshd) -> None:
    """100 malformed requests: 100 answers, at most the budget's lines in the
    log plus one summary, and no traceback."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    # Connected first: paramiko's lines about the handshake are logged on the
    # claw's transport thread, so they too count against its budget.
    transport, _, port = _connect(sshd, "alice", host_api_service())
    handler = Collect()
    budget = ClawLogBudget(lines=10, window_s=60)
    handler.addFilter(budget)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        bad = [
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x1b[2J junk\r\n\r\n",
        ]
        for n in range(100):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(bad[n % len(bad)])
                assert sock.recv(12).startswith(b"HTTP/1.1 4")
        budget.flush()  # as `clawden serve` does when it stops
    finally:
        transport.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
    alice = [r.getMessage() for r in records if "claw alice" in r.getMessage()]
    [summary] = [m for m in alice if "suppressed" in m]
    assert len(alice) == 10 + 1
    assert summary.startswith("claw alice: 90 log lines suppressed")
    assert not any(r.exc_info or r.exc_text for r in records)


def test_nan_and_lone_surrogates_are_a_400_not_a_traceback(
    two_claws: Database, caplog: pytest.LogCaptureFixture
) -> None:
    service = host_api_service(Store(two_claws))
    cases = [
        ("/v1/messages", b'{"text": "\\ud800"}', "not valid Unicode"),
        ("/v1/approvals", b'{"action": "a", "details": "x", "timeout_s": NaN}', "NaN"),
        ("/v1/approvals/wait", b'{"id": "x", "wait_s": Infinity}', "Infinity"),
        ("/v1/messages", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ]
    with caplog.at_level(logging.INFO):
        for path, body, reason in cases:
            response = service.dispatch(ClawIdentity("alice"), HttpRequest("POST", path, {}, body))
            assert response.status == 400, path
            assert reason in json.loads(response.body)["error"]["message"]
    assert not any(r.exc_info for r in caplog.records)
