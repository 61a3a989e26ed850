"""ClawConnection supervision against a real sshd (socat-bridged, no VM)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from appliance.channel.forwarding import ServiceRegistry
from appliance.channel.manager import ChannelManager, ChannelState
from appliance.channel.transport import ChannelTarget
from tests.support.local_sshd import LocalSshd, local_sshd, mint_ed25519, sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs openssh-server and socat")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[LocalSshd]:
    with local_sshd(tmp_path / "sshd") as server:
        yield server


def _manager(
    server: LocalSshd,
    events: list[tuple[str, str]],
    pinned: str | None = None,
    hooks: list[str] | None = None,
) -> ChannelManager:
    def target(claw: str) -> ChannelTarget:
        return ChannelTarget(
            claw,
            server.socket_path,
            pinned or server.host_public,
            paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private)),
            user=server.user,
        )

    seen = hooks if hooks is not None else []
    return ChannelManager(
        ServiceRegistry(),
        target,
        lambda action, claw, details: events.append((action, claw)),
        on_started=lambda claw: seen.append(f"started {claw}"),
        on_ready=lambda claw: seen.append(f"ready {claw}"),
    )


def test_connects_and_reconnects_after_the_transport_drops(sshd: LocalSshd) -> None:
    events: list[tuple[str, str]] = []
    manager = _manager(sshd, events)
    try:
        conn = manager.ensure("alice")
        assert conn.wait_ready(20)
        first = conn.transport()
        first.close()  # the guest went away under us
        assert _eventually(lambda: conn.status().connects >= 2 and conn.wait_ready(1))
        assert conn.transport() is not first
        assert events == []
    finally:
        manager.close()
    assert manager.claws() == []


def test_started_fires_once_per_connection_and_ready_only_the_first_time(sshd: LocalSshd) -> None:
    # The boot burst hangs on these: lifted when a claw is found running,
    # capped again when its channel is first ready, not at every reconnect.
    hooks: list[str] = []
    manager = _manager(sshd, [], hooks=hooks)
    try:
        conn = manager.ensure("alice")
        assert manager.ensure("alice") is conn
        assert conn.wait_ready(20)
        assert _eventually(lambda: hooks == ["started alice", "ready alice"])
        conn.transport().close()
        assert _eventually(lambda: conn.status().connects >= 2 and conn.wait_ready(1))
        assert hooks == ["started alice", "ready alice"]
        manager.drop("alice")
        assert manager.ensure("alice").wait_ready(20)
        assert _eventually(lambda: len(hooks) == 4)
        assert hooks[2:] == ["started alice", "ready alice"]
    finally:
        manager.close()


def test_a_wrong_host_key_is_refused_once_audited_and_not_hammered(sshd: LocalSshd) -> None:
    events: list[tuple[str, str]] = []
    _, impostor = mint_ed25519()
    manager = _manager(sshd, events, pinned=impostor)
    try:
        conn = manager.ensure("mallory")
        assert _eventually(lambda: conn.status().state is ChannelState.REFUSED)
        assert not conn.wait_ready(0.5)
        assert events == [("channel.hostkey_mismatch", "mallory")]
        assert "pinned" in (conn.status().last_error or "")
    finally:
        manager.close()


def _eventually(check: object, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False
