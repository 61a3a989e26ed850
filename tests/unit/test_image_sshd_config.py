"""The guest's sshd config (images/overlay/etc/ssh/sshd_config_clawden) parses
with this machine's OpenSSH — checked here, not only when an image is built
or a VM boots.

``sshd -t`` loads the host keys and exits non-zero without one, and the
config's ``HostKey`` is a path that only exists inside a running guest
(/run/clawden, filled from the seed disk at boot). So the check runs on a
copy in which only the ``HostKey`` line points at a throw-away key — the
same thing images/customize.sh does at build time. ``-o HostKey=...`` would
not do: HostKey accumulates, so the guest path would still be tried. The
other guest-only paths need no change: ``AuthorizedKeysFile`` is opened only
when a client authenticates, never by ``sshd -t``, and ``PidFile none`` names
no file. Every other line is tested exactly as shipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from provisioning.keys import mint_ed25519

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "images" / "overlay" / "etc" / "ssh" / "sshd_config_clawden"
SSHD = Path("/usr/sbin/sshd")

pytestmark = pytest.mark.skipif(not SSHD.exists(), reason="needs openssh-server (/usr/sbin/sshd)")


def _host_key(tmp_path: Path) -> Path:
    key = tmp_path / "host_key"
    key.write_text(mint_ed25519("clawden-config-check").private_openssh)
    key.chmod(0o600)  # sshd ignores a key others can read
    return key


def _checkable(text: str, key: Path, dest: Path) -> Path:
    """``text`` with its one HostKey line pointed at ``key``; nothing else changed."""
    rewritten, count = re.subn(r"(?m)^HostKey .*$", f"HostKey {key}", text)
    assert count == 1, "the shipped config should name exactly one HostKey"
    dest.write_text(rewritten)
    return dest


def _sshd(*args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege separation directory.
        Path("/run/sshd").mkdir(exist_ok=True)
    return subprocess.run(
        [str(SSHD), *args], capture_output=True, text=True, check=False, timeout=30
    )


def test_the_shipped_config_passes_sshd_t(tmp_path: Path) -> None:
    shipped = SHIPPED.read_text()
    config = _checkable(shipped, _host_key(tmp_path), tmp_path / "sshd_config")
    changed = [
        (a, b)
        for a, b in zip(shipped.splitlines(), config.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert [a for a, _ in changed] == ["HostKey /run/clawden/ssh_host_ed25519_key"]

    checked = _sshd("-t", "-f", str(config))
    # Not even a warning (a deprecated option, a key it could not load).
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    # And it means what it says: the effective settings the channel relies on.
    effective = _sshd("-T", "-f", str(config))
    assert effective.returncode == 0, effective.stderr
    settings = set(effective.stdout.splitlines())
    for expected in (
        "authenticationmethods publickey",
        "passwordauthentication no",
        "permitrootlogin no",
        "allowusers clawctl",
        "authorizedkeysfile /run/clawden/authorized_keys",
        "allowtcpforwarding remote",
        "permitlisten 127.0.0.1:7701 127.0.0.1:7702 127.0.0.1:7703",
        "permitopen none",
        "allowagentforwarding no",
        "allowstreamlocalforwarding no",
        "x11forwarding no",
        "permittunnel no",
        "permituserrc no",
        "permituserenvironment no",
        "subsystem sftp /usr/bin/sudo -n /usr/lib/clawden/as-claw /usr/lib/openssh/sftp-server",
    ):
        assert expected in settings, expected


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        # A misspelt keyword...
        (
            "PermitEmptyPasswords no",
            "PermitEmptyPasswordz no",
            r"line \d+: Bad configuration option: PermitEmptyPasswordz",
        ),
        # ...and a value sshd does not know.
        (
            "PasswordAuthentication no",
            "PasswordAuthentication maybe",
            r'line \d+: unsupported option "maybe"',
        ),
    ],
)
def test_sshd_t_rejects_a_broken_copy(tmp_path: Path, old: str, new: str, complaint: str) -> None:
    # Guards the test above: the same check, on the same config with one line
    # broken, fails — and for that line, not because sshd could not run.
    shipped = SHIPPED.read_text()
    assert re.search(rf"(?m)^{re.escape(old)}$", shipped), old
    broken = re.sub(rf"(?m)^{re.escape(old)}$", new, shipped)
    config = _checkable(broken, _host_key(tmp_path), tmp_path / "sshd_config")
    checked = _sshd("-t", "-f", str(config))
    assert checked.returncode == 255, checked.stderr
    assert re.search(complaint, checked.stderr), checked.stderr
