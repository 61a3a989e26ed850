"""A hostile guest against the host's SSH transport (``channel/guard.py``).

The guest here is paramiko's own server side, run over the unix socket
``open_transport`` connects to, so the host end is exactly the production
code path (banner wait, pinned host key, key auth, ``ServiceRegistry.install``).
Where the guest must break the protocol, it sends the raw messages paramiko's
``Channel.send`` would never send.
"""

from __future__ import annotations

import inspect
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import paramiko
import pytest
from paramiko.common import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_EXTENDED_DATA,
    MSG_CHANNEL_OPEN,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_RESOURCE_SHORTAGE,
    cMSG_CHANNEL_DATA,
    cMSG_CHANNEL_EXTENDED_DATA,
    cMSG_IGNORE,
    cMSG_UNIMPLEMENTED,
)
from paramiko.packet import Packetizer

from appliance.channel import guard
from appliance.channel.forwarding import (
    ClawIdentity,
    ForwardedConnection,
    ForwardedService,
    ServiceRegistry,
)
from appliance.channel.guard import ClawTransport
from appliance.channel.keys import load_private_key
from appliance.channel.logbudget import ClawLogBudget
from appliance.channel.manager import ChannelManager, ChannelState
from appliance.channel.transport import ChannelTarget, open_transport
from tests.support.local_sshd import LocalSshd, local_sshd, mint_ed25519, sshd_available

REPO = Path(__file__).resolve().parents[2]
PORT = 7701
WINDOW = paramiko.common.DEFAULT_WINDOW_SIZE  # 2 MiB, what the host grants
CHUNK = paramiko.common.DEFAULT_MAX_PACKET_SIZE  # 32 KiB, the most per data packet


@pytest.fixture(autouse=True)
def no_sigpipe() -> Iterator[None]:
    """As in ``clawden serve``: a write to a socket the other end closed is an
    error, not the end of the process (``clawden`` main() restores SIGPIPE's
    default for the CLI, and other tests in this process call it). Here both
    ends are in this process, and the host hangs up on a guest mid-write."""
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, previous)


# -- paramiko's internals guard.py relies on -------------------------------


def test_the_paramiko_internals_guard_relies_on_are_unchanged() -> None:
    locked = re.search(r"^paramiko==([\w.]+)", (REPO / "requirements/host.lock").read_text(), re.M)
    assert locked, "requirements/host.lock pins no paramiko"
    assert paramiko.__version__ == locked.group(1)
    assert locked.group(1) == guard.PARAMIKO_AUDITED, (
        "paramiko changed: re-read the internals named in channel/guard.py, "
        "then raise PARAMIKO_AUDITED"
    )
    # Channel messages are dispatched through a class-level table, on the instance.
    table = paramiko.Transport._channel_handler_table  # type: ignore[attr-defined]
    assert table[MSG_CHANNEL_DATA] is paramiko.Channel._feed  # type: ignore[attr-defined]
    assert table[MSG_CHANNEL_EXTENDED_DATA] is paramiko.Channel._feed_extended  # type: ignore[attr-defined]
    run = inspect.getsource(paramiko.Transport.run)
    assert "self._channel_handler_table[ptype](chan, m)" in run
    assert "except EOFError" in run  # how a GuestViolation ends the thread
    # Channel opens go through _handler_table, bound at construction.
    transport = ClawTransport(socket.socket(socket.AF_UNIX), "x")
    try:
        assert transport._handler_table[MSG_CHANNEL_OPEN] == transport._parse_channel_open  # type: ignore[attr-defined]
        assert isinstance(transport.packetizer, guard._BoundedPacketizer)
        assert isinstance(transport.channels_seen, dict)
        assert len(transport._channels) == 0  # type: ignore[attr-defined]
    finally:
        transport.sock.close()
    # The window accounting _window_left reproduces.
    chan = paramiko.Channel(0)
    for name in ("in_window_size", "in_window_sofar", "in_max_packet_size"):
        assert isinstance(getattr(chan, name), int), name
    assert len(chan.in_buffer) == 0 and len(chan.in_stderr_buffer) == 0
    add_window = inspect.getsource(paramiko.Channel._check_add_window)  # type: ignore[attr-defined]
    assert "self.in_window_sofar += n" in add_window
    assert "self.in_window_sofar = 0" in add_window
    set_window = inspect.getsource(paramiko.Channel._set_window)  # type: ignore[attr-defined]
    assert "self.in_window_size = window_size" in set_window
    for reader in (paramiko.Channel.recv, paramiko.Channel.recv_stderr):
        assert "self._check_add_window(len(out))" in inspect.getsource(reader)
    # Packet bodies are read with read_all, at the length the header declares.
    assert "self.read_all(" in inspect.getsource(Packetizer.read_message)
    assert "packetizer_class" in inspect.signature(paramiko.Transport.__init__).parameters


# -- a hostile guest: paramiko's server side behind the control socket ---------


class _GuestSshd(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.forwards: list[tuple[str, int]] = []
        self.forwarded = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.asbytes() == self.client_key.asbytes()
        return paramiko.common.AUTH_SUCCESSFUL if ok else paramiko.common.AUTH_FAILED

    def check_port_forward_request(self, address: str, port: int) -> int:
        self.forwards.append((address, port))
        self.forwarded.set()
        return port


class Guest:
    """The guest's end of one connection: raw access to its server transport."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport

    def connect(self, port: int = PORT) -> paramiko.Channel:
        """A guest process connecting to 127.0.0.1:port (sshd's remote forward)."""
        return self.transport.open_forwarded_tcpip_channel(
            ("127.0.0.1", 40000), ("127.0.0.1", port)
        )

    def send_raw(self, msg: paramiko.Message) -> None:
        self.transport._send_user_message(msg)  # type: ignore[attr-defined]

    def data(self, chan: paramiko.Channel, payload: bytes, stderr: bool = False) -> None:
        """CHANNEL_DATA (or stderr EXTENDED_DATA), whatever the window says."""
        msg = paramiko.Message()
        msg.add_byte(cMSG_CHANNEL_EXTENDED_DATA if stderr else cMSG_CHANNEL_DATA)
        msg.add_int(chan.remote_chanid)
        if stderr:
            msg.add_int(1)
        msg.add_string(payload)
        self.send_raw(msg)

    def flood(self, chan: paramiko.Channel, total: int, stderr: bool = False) -> int:
        """Send ``total`` bytes in full-size packets; how many went out before
        the host hung up."""
        sent = 0
        try:
            while sent < total:
                self.data(chan, b"x" * CHUNK, stderr)
                sent += CHUNK
        except (EOFError, OSError, paramiko.SSHException):
            pass
        return sent


@contextmanager
def hostile_guest(
    tmp_path: Path, registry: ServiceRegistry, claw: str = "alice"
) -> Iterator[tuple[Guest, ClawTransport]]:
    """A connected guest with the host's forwards installed: (guest, host)."""
    host_private, host_public = mint_ed25519()
    client_private, client_public = mint_ed25519()
    sshd = _GuestSshd(load_private_key(client_private))
    path = tmp_path / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    served: list[paramiko.Transport] = []

    def serve() -> None:
        conn, _ = listener.accept()
        server = paramiko.Transport(conn)
        server.add_server_key(load_private_key(host_private))
        served.append(server)
        server.start_server(server=sshd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = ChannelTarget(claw, path, host_public, load_private_key(client_private))
    host = open_transport(target, timeout=10)
    try:
        registry.install(host, ClawIdentity(claw))
        assert not registry.ports or sshd.forwarded.wait(10)
        thread.join(10)
        yield Guest(served[0]), host
    finally:
        host.close()
        for server in served:
            server.close()
        listener.close()


class Holding:
    """A service that takes each connection and holds it, unread, until released."""

    name = "holding"
    guest_port = PORT

    def __init__(self) -> None:
        self.conns: list[paramiko.Channel] = []
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        self.conns.append(cast(paramiko.Channel, conn))
        self.arrived.release()
        self.release.wait(30)
        conn.close()

    def next_conn(self) -> paramiko.Channel:
        assert self.arrived.acquire(timeout=10)
        return self.conns[-1]


class UntilEof:
    """A service that reads each connection until the guest closes it."""

    name = "until-eof"
    guest_port = PORT

    def handle(self, claw: ClawIdentity, conn: ForwardedConnection) -> None:
        while conn.recv(1024):
            pass
        conn.close()


@pytest.fixture
def holding() -> Iterator[Holding]:
    service = Holding()
    yield service
    service.release.set()


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _violations(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == guard.__name__ and "broke" in r.getMessage()]


# -- the receive window -------------------------------------------------------


@pytest.mark.parametrize("stderr", [False, True], ids=["data", "stderr"])
def test_data_past_the_window_closes_the_transport_and_is_never_buffered(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture, stderr: bool
) -> None:
    caplog.set_level(logging.WARNING)
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        guest_chan = guest.connect()
        conn = holding.next_conn()
        assert conn.in_window_size == WINDOW
        sent = guest.flood(guest_chan, 4 * WINDOW, stderr)  # the service reads nothing
        assert _eventually(lambda: not host.is_active())
        held = len(conn.in_stderr_buffer if stderr else conn.in_buffer)
        assert held == WINDOW  # everything granted, not a byte more
        assert sent > WINDOW  # the guest did send past it
        assert host.violation is not None and "receive window" in host.violation
    [line] = _violations(caplog)
    assert line.__dict__["claw"] == "alice"  # so the claw's log budget applies
    assert f"with 0 left (of {WINDOW})" in line.getMessage()


def test_the_window_counts_what_was_read_but_not_granted_again(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture
) -> None:
    # Read a little (below paramiko's 10 % threshold for a WINDOW_ADJUST): the
    # bytes left the buffer but the guest was not given them back.
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        guest_chan = guest.connect()
        conn = holding.next_conn()
        guest.flood(guest_chan, WINDOW)
        assert _eventually(lambda: len(conn.in_buffer) == WINDOW)
        assert len(conn.recv(CHUNK)) == CHUNK
        assert conn.in_window_sofar == CHUNK
        guest.data(guest_chan, b"y")
        assert _eventually(lambda: not host.is_active())
        assert len(conn.in_buffer) == WINDOW - CHUNK
    assert len(_violations(caplog)) == 1


def test_a_data_packet_over_the_maximum_closes_the_transport(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture
) -> None:
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        guest_chan = guest.connect()
        conn = holding.next_conn()
        guest.data(guest_chan, b"z" * (CHUNK + 1))
        assert _eventually(lambda: not host.is_active())
        assert len(conn.in_buffer) == 0
        assert host.violation is not None and "larger than the 32768" in host.violation
    assert len(_violations(caplog)) == 1


def test_extended_data_of_a_type_other_than_stderr_closes_the_transport(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture
) -> None:
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        guest_chan = guest.connect()
        holding.next_conn()
        msg = paramiko.Message()
        msg.add_byte(cMSG_CHANNEL_EXTENDED_DATA)
        msg.add_int(guest_chan.remote_chanid)
        msg.add_int(2)
        msg.add_string(b"?")
        guest.send_raw(msg)
        assert _eventually(lambda: not host.is_active())
        assert (
            host.violation == f"channel {guest_chan.remote_chanid}: extended data of unknown type 2"
        )
    assert len(_violations(caplog)) == 1


def test_a_packet_longer_than_openssh_allows_is_refused_before_it_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with hostile_guest(tmp_path, ServiceRegistry()) as (guest, host):
        msg = paramiko.Message()
        msg.add_byte(cMSG_IGNORE)
        msg.add_string(b"\0" * (guard.MAX_PACKET_BYTES + 1))
        try:
            guest.send_raw(msg)
        except (EOFError, OSError):
            pass  # the host hung up mid-packet: it did not wait for the rest
        assert _eventually(lambda: not host.is_active())
        assert host.violation is not None and "packet" in host.violation
    assert len(_violations(caplog)) == 1


def _read_at_the_edge(chan: paramiko.Channel, total: int) -> None:
    """Read ``total`` bytes, each time only once the sender has used up the
    window to its last byte (buffered + read but not granted again = the
    window), so every packet it sends lands right at the edge."""
    got = 0

    def window_used_up() -> bool:
        buffered = len(chan.in_buffer)
        return buffered + chan.in_window_sofar >= WINDOW or got + buffered >= total

    while got < total:
        assert _eventually(window_used_up)
        got += len(chan.recv(len(chan.in_buffer)))


def test_a_guest_respecting_the_window_is_served_at_its_edge(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture
) -> None:
    # paramiko's own send waits for the window, as OpenSSH does.
    total = 3 * WINDOW + 12345
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        guest_chan = guest.connect()
        conn = holding.next_conn()
        sender = threading.Thread(target=guest_chan.sendall, args=(b"w" * total,), daemon=True)
        sender.start()
        _read_at_the_edge(conn, total)
        sender.join(10)
        assert host.is_active() and host.violation is None
    assert _violations(caplog) == []


# -- channel opens ------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["session", "x11", "auth-agent@openssh.com", "direct-tcpip", "tun@openssh.com"]
)
def test_channel_types_other_than_forwarded_connections_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING)
    with hostile_guest(tmp_path, ServiceRegistry()) as (guest, host):
        with pytest.raises(paramiko.ChannelException) as info:
            guest.transport.open_channel(kind, ("127.0.0.1", 22), ("127.0.0.1", 5), timeout=10)
        assert info.value.code == OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        assert host.is_active()
        assert len(host._channels) == 0  # type: ignore[attr-defined]
    [line] = [r for r in caplog.records if r.name == guard.__name__]
    assert f"refused a '{kind}' channel" in line.getMessage()


def test_a_connection_to_a_port_the_host_does_not_forward_is_refused_without_a_thread(
    tmp_path: Path, holding: Holding
) -> None:
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, host):
        # Which threads, not how many: the set-up's own threads may still be
        # ending, which a count mistook for fewer threads than before.
        threads = set(threading.enumerate())
        with pytest.raises(paramiko.ChannelException) as info:
            guest.connect(PORT + 1)
        assert info.value.code == OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        assert set(threading.enumerate()) - threads == set()
        assert holding.conns == []
        guest.connect(PORT)  # the forwarded one still works
        holding.next_conn()


def test_channel_opens_past_the_cap_are_refused_until_channels_close(
    tmp_path: Path, holding: Holding, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    registry = ServiceRegistry([holding], connections_per_claw=1000)
    with hostile_guest(tmp_path, registry) as (guest, host):
        opened = [guest.connect() for _ in range(guard.MAX_OPEN_CHANNELS)]
        for _ in opened:
            holding.next_conn()
        with pytest.raises(paramiko.ChannelException) as info:
            guest.connect()
        assert info.value.code == OPEN_FAILED_RESOURCE_SHORTAGE
        assert len(holding.conns) == guard.MAX_OPEN_CHANNELS
        holding.release.set()  # the service closes them all
        assert _eventually(lambda: len(host._channels) == 0)  # type: ignore[attr-defined]
        # Hold the next one again: a service that closed it at once could do so
        # before the guest's open_channel() looked it up, which paramiko then
        # reports as "Unable to open channel".
        holding.release = threading.Event()
        guest.connect()
        holding.next_conn()
        assert host.is_active()
    refusals = [r for r in caplog.records if r.name == guard.__name__]
    assert [
        f"{guard.MAX_OPEN_CHANNELS} channels already open" in r.getMessage() for r in refusals
    ] == [True]


def test_the_ids_of_closed_channels_are_not_kept_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "SEEN_IDS_KEPT", 16)

    service: ForwardedService = UntilEof()
    with hostile_guest(tmp_path, ServiceRegistry([service])) as (guest, host):
        for _ in range(100):
            guest.connect().close()
        assert _eventually(lambda: len(host._channels) == 0)  # type: ignore[attr-defined]
        guest.connect()
        assert host.is_active()
        assert len(host.channels_seen) <= 16 + 1


# -- the log ----------------------------------------------------------------------


def test_what_paramiko_logs_on_a_claws_transport_counts_against_its_log_budget(
    tmp_path: Path,
) -> None:
    # Each MSG_UNIMPLEMENTED makes paramiko log a warning, on the transport's thread.
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(ClawLogBudget(lines=10, window_s=60))
    with hostile_guest(tmp_path, ServiceRegistry()) as (guest, host):
        paramiko_log = logging.getLogger("paramiko")
        paramiko_log.addHandler(handler)
        try:
            for seqno in range(100):
                msg = paramiko.Message()
                msg.add_byte(cMSG_UNIMPLEMENTED)
                msg.add_int(seqno)
                guest.send_raw(msg)
            assert _eventually(lambda: len(records) >= 10)
            time.sleep(0.2)
            assert host.is_active()
        finally:
            paramiko_log.removeHandler(handler)
    unhandled = [r for r in records if "unhandled type" in r.getMessage()]
    assert len(unhandled) == 10


# -- the connection manager -----------------------------------------------------


def test_after_a_violation_the_manager_waits_before_reconnecting(
    tmp_path: Path, holding: Holding
) -> None:
    attempts: list[float] = []
    with hostile_guest(tmp_path, ServiceRegistry([holding])) as (guest, first):

        def connect(target: ChannelTarget, timeout: float) -> paramiko.Transport:
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                return first
            raise AssertionError("reconnected at once")

        manager = ChannelManager(
            ServiceRegistry([holding]),
            lambda claw: ChannelTarget(
                claw, tmp_path / "unused", "", load_private_key(mint_ed25519()[0])
            ),
            lambda action, claw, details: None,
            connect=connect,
        )
        try:
            conn = manager.ensure("alice")
            assert conn.wait_ready(10)
            guest.flood(guest.connect(), 2 * WINDOW)
            assert _eventually(lambda: conn.status().state is ChannelState.CONNECTING)
            assert "broke the SSH protocol" in (conn.status().last_error or "")
            time.sleep(1)
            assert len(attempts) == 1
        finally:
            manager.close()


# -- a real OpenSSH sshd ----------------------------------------------------------


@pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")
def test_openssh_filling_the_window_again_and_again_is_never_refused(tmp_path: Path) -> None:
    server: LocalSshd
    with local_sshd(tmp_path / "sshd") as server:
        target = ChannelTarget(
            "alice",
            server.socket_path,
            server.host_public,
            load_private_key(server.client_private),
            user=server.user,
        )
        transport = open_transport(target, timeout=10)
        try:
            total = 3 * WINDOW + 12345
            chan = transport.open_session(timeout=10)
            chan.exec_command(f"head -c {total} /dev/zero")
            _read_at_the_edge(chan, total)
            assert chan.recv_exit_status() == 0
            assert transport.is_active() and transport.violation is None
        finally:
            transport.close()


def test_channel_opens_past_the_burst_are_paced_on_the_claws_own_transport(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A claw opening and closing connections in a loop: past a burst of
    # MAX_OPEN_CHANNELS, its opens are handled at CHANNEL_OPENS_PER_SECOND.
    monkeypatch.setattr(guard, "CHANNEL_OPENS_PER_SECOND", 10.0)

    service: ForwardedService = UntilEof()
    with hostile_guest(tmp_path, ServiceRegistry([service], connections_per_claw=1000)) as (
        guest,
        host,
    ):
        started = time.monotonic()
        for _ in range(guard.MAX_OPEN_CHANNELS + 6):
            chan = guest.connect()
            chan.close()
            assert _eventually(lambda: len(host._channels) < guard.MAX_OPEN_CHANNELS)  # type: ignore[attr-defined]
        took = time.monotonic() - started
        assert host.is_active() and host.violation is None
    # The 6 opens past the burst waited a tenth of a second each, at least.
    assert took >= 6 / 10 - 0.01
