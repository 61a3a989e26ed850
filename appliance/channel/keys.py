"""Loading the keys ``provisioning.keys`` minted into paramiko objects, for
the channel's transport (client key, pinned guest host key)."""

from __future__ import annotations

import io

import paramiko

from appliance.core.errors import IntegrityError
from provisioning.keys import public_blob


def load_private_key(private_openssh: str) -> paramiko.PKey:
    """The paramiko key for a stored OpenSSH private key text."""
    try:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(private_openssh))
    except (paramiko.SSHException, ValueError) as exc:
        raise IntegrityError(
            "stored private key cannot be loaded", "re-provision the claw's keys"
        ) from exc


def load_public_key(public_openssh: str) -> paramiko.PKey:
    """The paramiko key for a public line, e.g. to pin a guest's host key."""
    return paramiko.Ed25519Key(data=public_blob(public_openssh))


def public_line_of(key: paramiko.PKey, comment: str = "") -> str:
    """``ssh-ed25519 AAAA...`` text of a paramiko key (e.g. a server's host key)."""
    line = f"{key.get_name()} {key.get_base64()}"
    return f"{line} {comment}" if comment else line
