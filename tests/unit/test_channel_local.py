"""The control channel against a real sshd bridged to a unix socket (no VM)."""

from __future__ import annotations

import io
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from appliance.channel.forwarding import ClawIdentity, ServiceRegistry
from appliance.channel.transport import ChannelTarget, HostKeyMismatch, open_transport, run_command
from appliance.core.errors import Unavailable
from appliance.services.hostapi import host_api_service
from tests.support.local_sshd import LocalSshd, local_sshd, mint_ed25519, sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    with local_sshd(tmp_path / "sshd") as server:
        yield server


def _target(server: LocalSshd, claw: str = "alice", host_key: str | None = None) -> ChannelTarget:
    return ChannelTarget(
        claw=claw,
        socket_path=server.socket_path,
        pinned_host_key=host_key or server.host_public,
        client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private)),
        user=server.user,
    )


def test_exec_streams_output_and_returns_exit_code(sshd: LocalSshd) -> None:
    transport = open_transport(_target(sshd), timeout=10)
    try:
        out: list[bytes] = []
        err: list[bytes] = []
        code = run_command(transport, "echo hello; echo oops >&2; exit 7", out.append, err.append)
        assert code == 7
        assert b"".join(out) == b"hello\n"
        assert b"".join(err) == b"oops\n"
    finally:
        transport.close()


def test_changed_host_key_is_refused_before_auth(sshd: LocalSshd) -> None:
    _, other_public = mint_ed25519()
    with pytest.raises(HostKeyMismatch) as info:
        open_transport(_target(sshd, host_key=other_public), timeout=10)
    assert "pinned" in str(info.value)
    assert "BEGIN" not in str(info.value)  # never leaks key material


def test_missing_socket_is_a_clear_unavailable(tmp_path: Path) -> None:
    _, public = mint_ed25519()
    target = ChannelTarget(
        claw="ghost",
        socket_path=tmp_path / "nope.sock",
        pinned_host_key=public,
        client_key=paramiko.Ed25519Key.from_private_key(io.StringIO(mint_ed25519()[0])),
    )
    with pytest.raises(Unavailable, match="clawden claw status ghost"):
        open_transport(target, timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_forwarded_connection_carries_the_claw_identity(sshd: LocalSshd) -> None:
    # The "guest" here is this machine: sshd listens on a loopback port for the
    # host's remote forward, and an HTTP client inside "the guest" asks whoami.
    service = host_api_service()
    port = _free_port()
    service.guest_port = port
    transport = open_transport(_target(sshd, claw="bob"), timeout=10)
    try:
        ServiceRegistry([service]).install(transport, ClawIdentity("bob"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/whoami", timeout=10) as resp:
            assert resp.status == 200
            assert resp.read() == b'{"claw": "bob"}'
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/nothing", timeout=10)
        assert info.value.code == 404
        info.value.close()
    finally:
        transport.close()


def test_each_forwarded_port_reaches_its_own_service(sshd: LocalSshd) -> None:
    from appliance.services.http import HttpResponse, HttpService, Route

    ports = [_free_port(), _free_port()]

    def answer(i: int) -> Route:
        return lambda claw, request: HttpResponse(200, b"svc%d" % i)

    services = [
        HttpService(f"svc{i}", port, {("GET", "/"): answer(i)}) for i, port in enumerate(ports)
    ]
    transport = open_transport(_target(sshd, claw="carol"), timeout=10)
    try:
        ServiceRegistry(services).install(transport, ClawIdentity("carol"))
        for i, port in enumerate(ports):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                assert resp.read() == b"svc%d" % i
    finally:
        transport.close()
