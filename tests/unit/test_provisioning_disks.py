"""Per-claw disks: authorized_keys options, seed/data/root disk contents.

Disk images are inspected with debugfs (e2fsprogs) and qemu-img: no mounting.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.core.errors import IntegrityError, InvalidInput
from provisioning import disks, keys

needs_e2fs = pytest.mark.skipif(
    shutil.which("debugfs") is None and not Path("/usr/sbin/debugfs").exists(),
    reason="e2fsprogs missing",
)
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils missing")


def _debugfs(image: Path, request: str) -> str:
    out = subprocess.run(
        ["/usr/sbin/debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def _label(image: Path) -> str:
    out = subprocess.run(
        ["/usr/sbin/dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("Filesystem volume name:"))
    return line.split(":", 1)[1].strip()


def _qemu_info(path: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_authorized_keys_line_restricts_to_remote_forwards() -> None:
    pair = keys.mint_ed25519("clawden-host@alice")
    line = disks.authorized_keys_line(pair.public_openssh, [7701, 7702, 7703, 7701])
    options, kind, blob, comment = line.split(" ")
    assert options == (
        'restrict,port-forwarding,permitlisten="127.0.0.1:7701",'
        'permitlisten="127.0.0.1:7702",permitlisten="127.0.0.1:7703"'
    )
    assert f"{kind} {blob}" == " ".join(pair.public_openssh.split()[:2])
    assert comment == "clawden-host@alice"
    assert "\n" not in line


@pytest.mark.parametrize("ports", [[], [0], [65536], ["7701"], [True]])
def test_authorized_keys_line_rejects_bad_ports(ports: list[object]) -> None:
    pair = keys.mint_ed25519()
    with pytest.raises(InvalidInput):
        disks.authorized_keys_line(pair.public_openssh, ports)  # type: ignore[arg-type]


def test_authorized_keys_line_rejects_injected_options() -> None:
    pair = keys.mint_ed25519()
    with pytest.raises(IntegrityError):
        disks.authorized_keys_line('command="sh" ' + pair.public_openssh, [7701])
    with pytest.raises(IntegrityError):
        disks.authorized_keys_line(pair.public_openssh + "\nssh-ed25519 AAAA evil", [7701])


def _seed() -> disks.SeedContent:
    host = keys.mint_ed25519("guest")
    client = keys.mint_ed25519("host")
    return disks.SeedContent(
        host_private_key=host.private_openssh,
        host_public_key=host.public_openssh,
        authorized_keys=disks.authorized_keys_line(
            client.public_openssh, disks.GUEST_PORTS.values()
        ),
        claw_json=disks.claw_identity("alice", "Alice"),
    )


@needs_e2fs
def test_seed_disk_holds_exactly_the_seed_files(tmp_path: Path) -> None:
    seed = _seed()
    dest = tmp_path / "seed.img"
    disks.create_seed_disk(dest, seed)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.stat().st_size == disks.SEED_SIZE_MIB << 20
    assert _label(dest) == "CLAWSEED"
    listing = _debugfs(dest, "ls -l /")
    names = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    assert names - {".", "..", "lost+found"} == {
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "authorized_keys",
        "claw.json",
    }
    assert _debugfs(dest, "cat /ssh_host_ed25519_key").strip() == seed.host_private_key.strip()
    assert _debugfs(dest, "cat /authorized_keys").strip() == seed.authorized_keys
    claw = json.loads(_debugfs(dest, "cat /claw.json"))
    assert claw == {
        "name": "alice",
        "member": "Alice",
        "ports": {"hostapi": 7701, "llm": 7702, "proxy": 7703},
    }
    # No journal: the guest mounts it read-only from a read-only device.
    assert (
        "has_journal"
        not in subprocess.run(
            ["/usr/sbin/dumpe2fs", "-h", str(dest)], capture_output=True, text=True
        ).stdout
    )
    # No staging directory with the private key is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.img"]


def test_seed_disk_refuses_non_keys(tmp_path: Path) -> None:
    seed = _seed()
    bad = disks.SeedContent("not a key", seed.host_public_key, seed.authorized_keys, seed.claw_json)
    with pytest.raises(InvalidInput):
        disks.create_seed_disk(tmp_path / "seed.img", bad)
    assert not (tmp_path / "seed.img").exists()
    assert "PRIVATE" not in repr(seed)


@needs_e2fs
@needs_qemu_img
def test_data_disk_is_sparse_ext4_labelled_clawdata(tmp_path: Path) -> None:
    dest = tmp_path / "data.qcow2"
    disks.create_data_disk(dest, 512)
    info = _qemu_info(dest)
    assert info["format"] == "qcow2" and info["virtual-size"] == 512 << 20
    assert dest.stat().st_size < 32 << 20  # sparse: only metadata is stored
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    raw = tmp_path / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(dest), str(raw)], check=True)
    assert _label(raw) == "CLAWDATA"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.raw", "data.qcow2"]


def test_data_disk_size_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        disks.create_data_disk(tmp_path / "d.qcow2", 1)


@needs_qemu_img
def test_root_overlay_is_backed_by_the_untouched_golden(tmp_path: Path) -> None:
    golden = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(golden), "64M"], check=True)
    golden.chmod(0o444)  # a write attempt would fail loudly
    before = golden.read_bytes()
    dest = tmp_path / "claw" / "root.qcow2"
    dest.parent.mkdir()
    disks.create_root_overlay(golden, dest)
    disks.create_root_overlay(golden, dest)  # again: replaces, as every boot does
    info = _qemu_info(dest)
    assert info["backing-filename"] == str(golden)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 64 << 20
    assert golden.read_bytes() == before
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.parent.iterdir()) == ["root.qcow2"]


def test_root_overlay_needs_a_golden(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        disks.create_root_overlay(tmp_path / "missing.qcow2", tmp_path / "root.qcow2")
