"""A claw's workspace files over real SFTP (a real sshd bridged by socat like
the guest's, no VM), the path rules, the console tail and the per-day usage
the claw page draws."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
import pytest

from appliance.channel import workspace_sftp
from appliance.channel.transport import ChannelTarget, open_transport
from appliance.config import Settings
from appliance.controller.console import console_tail
from appliance.controller.guestfiles import ClawFiles
from appliance.core.errors import InvalidInput
from appliance.core.workspace_files import check_editable_file, check_workspace_file
from appliance.store import Store
from tests.support.local_sshd import local_sshd, sshd_available


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[paramiko.Transport]:
    if not sshd_available():
        pytest.skip("needs openssh-server and socat")
    with local_sshd(tmp_path / "sshd") as server:
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private))
        target = ChannelTarget("alice", server.socket_path, server.host_public, key, server.user)
        t = open_transport(target, timeout=10)
        try:
            yield t
        finally:
            t.close()


def _workspace(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "path",
    ["../x.md", "/etc/passwd", "memory/../SOUL.md", "memory/2026-1-1.md", "skills/a/SKILL.md",
     "soul.md", "SOUL.md/", "./SOUL.md", "memory/2026-01-01.md\n", ""],
)  # fmt: skip
def test_only_the_listed_files_may_be_read(path: str) -> None:
    with pytest.raises(InvalidInput):
        check_workspace_file(path)


def test_the_allowed_paths() -> None:
    assert check_workspace_file("memory/2026-01-31.md") == "memory/2026-01-31.md"
    assert check_workspace_file("SOUL.md") == "SOUL.md"
    assert check_editable_file("HEARTBEAT.md") == "HEARTBEAT.md"
    with pytest.raises(InvalidInput, match="cannot be edited"):
        check_editable_file("SOUL.md")


def test_list_and_read_over_sftp(transport: paramiko.Transport, tmp_path: Path) -> None:
    guest = _workspace(
        tmp_path / "ws",
        {"SOUL.md": "soul", "USER.md": "user", "notes.txt": "n", "memory/2026-02-01.md": "a",
         "memory/2026-02-03.md": "b", "memory/ideas.md": "i"},
    )  # fmt: skip
    os.symlink("/etc/passwd", guest / "MEMORY.md")  # a claw's planted link
    listed = workspace_sftp.list_files(transport, root=str(guest))
    assert [f.path for f in listed] == [
        "SOUL.md", "USER.md", "memory/2026-02-03.md", "memory/2026-02-01.md"
    ]  # fmt: skip
    assert listed[0].size == 4
    read = workspace_sftp.read_file(transport, "memory/2026-02-03.md", root=str(guest))
    assert read is not None and read.text == "b" and not read.truncated
    assert workspace_sftp.read_file(transport, "AGENTS.md", root=str(guest)) is None
    with pytest.raises(InvalidInput, match="not a plain file"):
        workspace_sftp.read_file(transport, "MEMORY.md", root=str(guest))
    with pytest.raises(InvalidInput):
        workspace_sftp.read_file(transport, "../sshd/host_key", root=str(guest))


def test_reads_are_capped(transport: paramiko.Transport, tmp_path: Path) -> None:
    guest = _workspace(tmp_path / "ws", {"MEMORY.md": "x" * 5000})
    read = workspace_sftp.read_file(transport, "MEMORY.md", root=str(guest), max_bytes=1000)
    assert read is not None and read.text == "x" * 1000 and read.truncated


def test_a_memory_link_is_not_followed(transport: paramiko.Transport, tmp_path: Path) -> None:
    elsewhere = _workspace(tmp_path / "elsewhere", {"2026-02-01.md": "not the claw's"})
    guest = _workspace(tmp_path / "ws", {"SOUL.md": "s"})
    os.symlink(elsewhere, guest / "memory")
    assert [f.path for f in workspace_sftp.list_files(transport, root=str(guest))] == ["SOUL.md"]
    assert workspace_sftp.read_file(transport, "memory/2026-02-01.md", root=str(guest)) is None


def test_write_replaces_atomically_and_never_through_a_link(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    guest = _workspace(tmp_path / "ws", {"USER.md": "old"})
    target = _workspace(tmp_path / "outside", {"victim": "keep"})
    os.symlink(target / "victim", guest / "HEARTBEAT.md")
    workspace_sftp.write_file(transport, "USER.md", b"new text", root=str(guest))
    workspace_sftp.write_file(transport, "HEARTBEAT.md", b"- check mail", root=str(guest))
    assert (guest / "USER.md").read_text() == "new text"
    assert not (guest / "HEARTBEAT.md").is_symlink()
    assert (guest / "HEARTBEAT.md").read_text() == "- check mail"
    assert (target / "victim").read_text() == "keep"
    assert sorted(os.listdir(guest)) == ["HEARTBEAT.md", "USER.md"]  # no temp file left
    with pytest.raises(InvalidInput):
        workspace_sftp.write_file(transport, "SOUL.md", b"x", root=str(guest))


def test_console_tail_reads_only_the_end(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, libvirt_uri="test:///default")
    log = ClawFiles.for_claw(settings, "alice").console_log
    assert console_tail(settings, "alice", 10) is None
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"".join(b"line %05d \xff\x1b[2J\n" % i for i in range(20000)))
    tail = console_tail(settings, "alice", 100)
    assert tail is not None and len(tail) == 100
    assert tail[0].startswith("line 19900") and tail[-1].startswith("line 19999")
    assert "\ufffd" in tail[0]  # undecodable bytes replaced, never an error
    everything = console_tail(settings, "alice")
    assert everything is not None and len(everything) == 20000


def test_usage_per_day(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    store.usage.record("alice", "m", prompt_tokens=10, ts=now)
    store.usage.record("alice", "m", completion_tokens=5, cost_usd=0.5, ts=now)
    store.usage.record("alice", "m", prompt_tokens=7, ts=now - timedelta(days=2))
    store.usage.record("alice", "m", prompt_tokens=99, ts=now - timedelta(days=31))
    store.usage.record("bob", "m", prompt_tokens=1, ts=now)
    days = store.usage.per_day("alice", now - timedelta(days=30))
    assert sorted(days) == ["2026-02-27", "2026-03-01"]
    assert days["2026-03-01"].tokens == 15 and days["2026-03-01"].requests == 2
    assert days["2026-03-01"].cost_usd == 0.5
    store.db.close()
