"""Per-claw SSH keys: minted on the host at provisioning, never reused.

Each claw gets two ed25519 keypairs: the guest's SSH *host* key (private half
goes to the guest on the seed disk; the host pins the public half) and the
host's *client* key for user ``claw`` (private half stays on the host; the
public half goes into the guest's authorized_keys). paramiko cannot generate
ed25519 keys, so minting uses ``cryptography``; ``appliance.channel.keys``
loads the results for paramiko.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.core.errors import IntegrityError, InvalidInput

KEY_TYPE = "ssh-ed25519"

# A comment ends up in authorized_keys and logs: keep it to one harmless word.
_COMMENT_RE = re.compile(r"^[A-Za-z0-9@._:+-]{0,64}$")


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 keypair as OpenSSH text. ``private_openssh`` is a secret:
    write it 0600 and never log it (``repr`` leaves it out)."""

    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    def __repr__(self) -> str:
        return f"KeyPair(public_openssh={self.public_openssh!r})"

    @property
    def fingerprint(self) -> str:
        return fingerprint_sha256(self.public_openssh)


def mint_ed25519(comment: str = "") -> KeyPair:
    """A fresh ed25519 keypair; ``comment`` is appended to the public line."""
    if not _COMMENT_RE.match(comment):
        raise InvalidInput(
            f"invalid key comment {comment!r}",
            "use up to 64 letters, digits and @ . _ : + - (e.g. 'clawden-host@alice')",
        )
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return KeyPair(private, f"{public} {comment}" if comment else public)


def public_blob(public_openssh: str) -> bytes:
    parts = public_openssh.strip().split()
    if len(parts) < 2 or parts[0] != KEY_TYPE or "\n" in public_openssh.strip():
        raise IntegrityError(
            "not an ssh-ed25519 public key line",
            "re-provision the claw's keys (its stored public key is malformed)",
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error as exc:
        raise IntegrityError(
            "public key is not valid base64", "re-provision the claw's keys"
        ) from exc
    # The blob repeats the type name; a mismatch means a forged or mangled line.
    if not blob.startswith(len(KEY_TYPE).to_bytes(4, "big") + KEY_TYPE.encode()):
        raise IntegrityError("public key blob is not ssh-ed25519", "re-provision the claw's keys")
    return blob


def fingerprint_sha256(public_openssh: str) -> str:
    """OpenSSH-style fingerprint, as ``ssh-keygen -lf`` prints it: ``SHA256:...``."""
    digest = hashlib.sha256(public_blob(public_openssh)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# The name the controller uses.
fingerprint_of = fingerprint_sha256


def same_public_key(a: str, b: str) -> bool:
    """True when two public lines hold the same key (comments ignored)."""
    return public_blob(a) == public_blob(b)
