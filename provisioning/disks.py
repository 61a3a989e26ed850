"""The three disks of a claw, made on the host before its first boot
(see docs/dev/contracts.md, "Guest disks"):

* ``root.qcow2`` — a throw-away overlay on the golden image (which is only read);
* ``data.qcow2`` — an empty ext4 labelled ``CLAWDATA``, the claw's persistent state;
* ``seed.img`` — a small raw ext4 labelled ``CLAWSEED`` with the claw's keys
  and identity, attached read-only.

File systems are made with ``mkfs.ext4 [-d dir]`` on plain files: no mounting,
no loop devices, so this works unprivileged. Every file is written under a
temporary name and renamed into place, and is 0600: the seed holds the guest's
private host key, the data disk the claw's private data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.core.errors import InvalidInput
from appliance.image.tools import run_tool
from provisioning.keys import KEY_TYPE, fingerprint_sha256

SEED_LABEL = "CLAWSEED"
DATA_LABEL = "CLAWDATA"
SEED_SIZE_MIB = 8
DEFAULT_DATA_MIB = 2048
MIN_DATA_MIB = 64
MAX_DATA_MIB = 1 << 20

# The host's services, each remote-forwarded onto the guest's 127.0.0.1.
GUEST_PORTS: Mapping[str, int] = {"hostapi": 7701, "llm": 7702, "proxy": 7703}

_FIX_DISK = "check free space and permissions in the claw's directory"


@dataclass(frozen=True)
class SeedContent:
    """What the seed disk carries. ``host_private_key`` is the guest's SSH host
    key (OpenSSH text) and a secret."""

    host_private_key: str
    host_public_key: str
    authorized_keys: str
    claw_json: Mapping[str, object]  # written as claw.json

    def __repr__(self) -> str:
        return (
            f"SeedContent(host_public_key={self.host_public_key!r}, claw_json={self.claw_json!r})"
        )


def claw_identity(
    name: str, member: str, ports: Mapping[str, int] = GUEST_PORTS
) -> dict[str, object]:
    """The ``claw.json`` document (informational for the agent)."""
    return {"name": name, "member": member, "ports": dict(ports)}


def authorized_keys_line(host_client_public: str, ports: Iterable[int]) -> str:
    """An authorized_keys line for the host's client key that allows nothing
    but remote forwards on the guest's 127.0.0.1 at ``ports``.

    ``restrict`` turns off every optional feature (pty, agent and X11
    forwarding, ~/.ssh/rc); ``port-forwarding`` turns forwards back on and the
    ``permitlisten`` options pin where they may listen. Exec and SFTP channels
    stay possible: the host needs them.
    """
    fingerprint_sha256(host_client_public)  # validates the line, raises if malformed
    parts = host_client_public.split()
    wanted: list[int] = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"invalid forward port {port!r}", "use integers from 1 to 65535")
        if port not in wanted:
            wanted.append(port)
    if not wanted:
        raise InvalidInput("no forward ports given", "pass the claw's service ports")
    options = ["restrict", "port-forwarding"]
    options += [f'permitlisten="127.0.0.1:{port}"' for port in wanted]
    # Rebuilt from the parsed key, so nothing but type, key and a comment of
    # plain words can reach the guest's authorized_keys.
    comment = " ".join(p for p in parts[2:] if p.replace("-", "").replace("@", "").isalnum())
    line = f"{','.join(options)} {KEY_TYPE} {parts[1]}"
    return f"{line} {comment}" if comment else line


def _new_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (tools then write into it and keep the mode)."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp")


def create_root_overlay(golden: Path, dest: Path) -> None:
    """A qcow2 overlay backed by ``golden`` (absolute path, format pinned so
    QEMU never probes it). The golden file is only read."""
    golden = golden.resolve()
    if not golden.is_file():
        raise InvalidInput(f"golden image {golden} not found", "build it: `clawden image build`")
    if dest.resolve() == golden:
        raise InvalidInput("the root overlay cannot replace the golden image", "pick another path")
    tmp = _tmp_name(dest)
    _new_private_file(tmp)
    try:
        run_tool(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", golden, "-F", "qcow2", tmp],
            f"creating the root overlay {dest.name}",
            _FIX_DISK,
        )
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def create_data_disk(dest: Path, size_mib: int = DEFAULT_DATA_MIB) -> None:
    """An empty ext4 labelled CLAWDATA as a sparse qcow2 (a few MiB on disk)."""
    if not MIN_DATA_MIB <= size_mib <= MAX_DATA_MIB:
        raise InvalidInput(
            f"invalid data disk size {size_mib} MiB",
            f"choose between {MIN_DATA_MIB} and {MAX_DATA_MIB} MiB",
        )
    raw = dest.with_name(f".{dest.name}.raw.tmp")
    tmp = _tmp_name(dest)
    _new_private_file(raw)
    _new_private_file(tmp)
    try:
        # Inode tables and journal are written now rather than lazily by the
        # guest kernel, which would spend the VM's (emulated) CPU on it; the
        # zeros cost nothing once qemu-img drops them from the qcow2.
        run_tool(
            ["mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, "-m", "1",
             "-E", "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
             raw, f"{size_mib}M"],
            f"formatting the data disk {dest.name}",
            _FIX_DISK,
        )  # fmt: skip
        run_tool(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp],
            f"converting the data disk {dest.name}",
            _FIX_DISK,
        )
        tmp.replace(dest)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _check_seed(seed: SeedContent) -> None:
    if "BEGIN OPENSSH PRIVATE KEY" not in seed.host_private_key:
        raise InvalidInput(
            "seed host key is not an OpenSSH private key", "mint it with keys.mint_ed25519"
        )
    fingerprint_sha256(seed.host_public_key)
    if not seed.authorized_keys.strip():
        raise InvalidInput("seed has no authorized_keys", "use authorized_keys_line()")


def create_seed_disk(dest: Path, seed: SeedContent) -> None:
    """The CLAWSEED ext4 (raw, 8 MiB, no journal so the guest can mount it
    read-only from a read-only device)."""
    _check_seed(seed)
    files = {
        "ssh_host_ed25519_key": seed.host_private_key.rstrip("\n") + "\n",
        "ssh_host_ed25519_key.pub": seed.host_public_key.strip() + "\n",
        "authorized_keys": seed.authorized_keys.rstrip("\n") + "\n",
        "claw.json": json.dumps(dict(seed.claw_json), indent=2, sort_keys=True) + "\n",
    }
    # Next to the destination rather than in /tmp: same file system, same
    # permissions regime; mkdtemp makes it 0700.
    staging = Path(tempfile.mkdtemp(prefix=".seed-", dir=dest.parent))
    tmp = _tmp_name(dest)
    try:
        for name, text in files.items():
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        _new_private_file(tmp)
        run_tool(
            ["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-O", "^has_journal", "-m", "0",
             "-E", "root_owner=0:0", "-d", staging, tmp, f"{SEED_SIZE_MIB}M"],
            f"creating the seed disk {dest.name}",
            _FIX_DISK,
        )  # fmt: skip
        tmp.replace(dest)
    finally:
        # The staging copy holds the private host key: never leave it behind.
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)
