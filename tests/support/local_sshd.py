"""A real OpenSSH sshd behind a unix socket, the way a claw's guest runs it.

The guest bridges ``sshd -i`` to its virtio-serial port with socat; here socat
bridges it to a unix socket on the host instead, so the channel code can be
exercised against the real sshd in a second, without booting a VM.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provisioning import keys


def mint_ed25519() -> tuple[str, str]:
    """(private, public) OpenSSH texts, minted the way provisioning mints them."""
    pair = keys.mint_ed25519()
    return pair.private_openssh, pair.public_openssh


@dataclass
class LocalSshd:
    socket_path: Path
    host_public: str
    client_private: str
    user: str


def sshd_available() -> bool:
    return Path("/usr/sbin/sshd").exists() and shutil.which("socat") is not None


def _wait_listening(path: Path, timeout: float = 10.0) -> None:
    """Until socat accepts connections: its socket file appears at bind(),
    a moment before listen(), and a connect in between is refused. The probe
    connection costs one sshd that finds no client and exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.02)


@contextmanager
def local_sshd(workdir: Path, permit_listen: str = "127.0.0.1:*") -> Iterator[LocalSshd]:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    host_private, host_public = mint_ed25519()
    client_private, client_public = mint_ed25519()
    (workdir / "host_key").write_text(host_private)
    os.chmod(workdir / "host_key", 0o600)
    (workdir / "authorized_keys").write_text(client_public + "\n")
    os.chmod(workdir / "authorized_keys", 0o600)
    user = getpass.getuser()
    config = workdir / "sshd_config"
    config.write_text(
        f"HostKey {workdir / 'host_key'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "AllowTcpForwarding remote\nPermitOpen none\n"
        f"PermitListen {permit_listen}\n"
        f"AllowUsers {user}\nLogLevel ERROR\n"
        "Subsystem sftp internal-sftp\n"  # the guest's sshd has it (skills, imports)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sock = workdir / "control.sock"
    proc = subprocess.Popen(
        [
            "socat",
            f"UNIX-LISTEN:{sock},fork,mode=600",
            f"EXEC:/usr/sbin/sshd -i -e -f {config}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(sock)
        yield LocalSshd(sock, host_public, client_private, user)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
