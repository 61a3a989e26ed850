"""put_tree over real SFTP: a real sshd bridged by socat like the guest's (no VM)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest

from appliance.channel.sftp import put_tree, validate_dest
from appliance.channel.transport import ChannelTarget, open_transport
from appliance.controller.guestcopy import put_tree_handler
from appliance.core.errors import InvalidInput
from tests.support.local_sshd import LocalSshd, local_sshd, sshd_available

NOW = datetime(2026, 11, 20, 9, 30, 0, tzinfo=UTC)


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[paramiko.Transport]:
    if not sshd_available():
        pytest.skip("needs openssh-server and socat")
    with local_sshd(tmp_path / "sshd") as server:
        t = open_transport(_target(server), timeout=10)
        try:
            yield t
        finally:
            t.close()


def _target(server: LocalSshd) -> ChannelTarget:
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(server.client_private))
    return ChannelTarget("alice", server.socket_path, server.host_public, key, server.user)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _copy(
    t: paramiko.Transport, src: Path, guest: Path, dest: str, mode: str
) -> tuple[Any, list[Any]]:
    sent: list[Any] = []
    reply = put_tree(t, src, dest, mode, sent.append, root=str(guest), now=NOW)
    return reply, sent


def test_replace_swaps_a_skill_folder_whole(transport: paramiko.Transport, tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    _tree(guest, {"skills/weather/SKILL.md": "old", "skills/weather/stale.txt": "x"})
    src = _tree(tmp_path / "src", {"SKILL.md": "new", "scripts/run.py": "print(1)"})
    reply, sent = _copy(transport, src, guest, "skills/weather", "replace")
    assert reply == {"files": 2, "bytes": 11, "replaced": True}
    assert (guest / "skills/weather/SKILL.md").read_text() == "new"
    assert (guest / "skills/weather/scripts/run.py").read_text() == "print(1)"
    assert not (guest / "skills/weather/stale.txt").exists()
    assert sorted(os.listdir(guest / "skills")) == ["weather"]  # no incoming/old left
    assert sent[-1]["progress"].startswith("2/2 ")


def test_merge_backs_up_what_it_replaces(transport: paramiko.Transport, tmp_path: Path) -> None:
    guest = _tree(tmp_path / "guest", {"SOUL.md": "mine", "USER.md": "same", "notes.md": "n"})
    src = _tree(tmp_path / "src", {"SOUL.md": "imported", "USER.md": "same", "memory/a.md": "m"})
    reply, _ = _copy(transport, src, guest, "", "merge")
    assert reply["files"] == 2 and reply["unchanged"] == 1
    assert reply["backed_up"] == ["SOUL.md"]
    backup = guest / ".clawden-import-backup/20261120T093000Z"
    assert reply["backup_dir"] == str(backup)
    assert (backup / "SOUL.md").read_text() == "mine"
    assert (guest / "SOUL.md").read_text() == "imported"
    assert (guest / "memory/a.md").read_text() == "m" and (guest / "notes.md").exists()
    assert not [n for n in os.listdir(guest) if ".clawden-" in n and n != ".clawden-import-backup"]


def test_a_guest_symlink_refuses_the_copy(transport: paramiko.Transport, tmp_path: Path) -> None:
    guest, outside = tmp_path / "guest", tmp_path / "outside"
    guest.mkdir()
    outside.mkdir()
    os.symlink(outside, guest / "memory")
    src = _tree(tmp_path / "src", {"SOUL.md": "s", "memory/a.md": "m"})
    with pytest.raises(InvalidInput, match="memory in the claw's workspace is a symbolic link"):
        _copy(transport, src, guest, "", "merge")
    assert list(outside.iterdir()) == [] and not (guest / "SOUL.md").exists()
    os.symlink(outside, guest / "skills")
    with pytest.raises(InvalidInput, match="skills in the claw's workspace is a symbolic link"):
        _copy(transport, src, guest, "skills/x", "replace")
    assert list(outside.iterdir()) == []


def test_a_guest_symlink_as_the_skill_folder_is_replaced_not_followed(
    transport: paramiko.Transport, tmp_path: Path
) -> None:
    guest, outside = tmp_path / "guest", tmp_path / "outside"
    (guest / "skills").mkdir(parents=True)
    _tree(outside, {"keep.txt": "k"})
    os.symlink(outside, guest / "skills/x")
    src = _tree(tmp_path / "src", {"SKILL.md": "s"})
    _copy(transport, src, guest, "skills/x", "replace")
    assert not (guest / "skills/x").is_symlink() and (outside / "keep.txt").exists()


@pytest.mark.parametrize("dest", ["/etc", "../x", "a/../../b", "a\x1bb"])
def test_bad_destinations_are_refused(dest: str) -> None:
    with pytest.raises(InvalidInput):
        validate_dest(dest)


def test_handler_validates_before_reaching_the_claw(tmp_path: Path) -> None:
    def no_transport(claw: str, wait: float) -> paramiko.Transport:
        raise AssertionError("must not connect")

    staging = tmp_path / "tmp"
    (staging / "stage-1").mkdir(parents=True)
    handle = put_tree_handler(no_transport, staging=staging)
    ok = str(staging / "stage-1")
    with pytest.raises(InvalidInput):
        handle({"claw": "alice", "source": ok, "dest": "../x", "mode": "merge"}, print)
    with pytest.raises(InvalidInput):
        handle({"claw": "../x", "source": ok, "dest": "", "mode": "merge"}, print)
    for elsewhere in ("/root/.ssh", str(staging), f"{staging}/../other", "stage-1"):
        with pytest.raises(InvalidInput, match="not a folder staged under"):
            handle({"claw": "alice", "source": elsewhere, "dest": "", "mode": "merge"}, print)
