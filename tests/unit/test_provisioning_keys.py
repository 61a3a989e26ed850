"""Per-claw key minting: OpenSSH formats, fingerprints, paramiko round trips."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from appliance.channel import keys as channel_keys
from appliance.core.errors import IntegrityError, InvalidInput
from provisioning import keys


def test_minted_key_has_openssh_formats() -> None:
    pair = keys.mint_ed25519("clawden-host@alice")
    assert pair.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    kind, blob, comment = pair.public_openssh.split(" ")
    assert kind == "ssh-ed25519" and comment == "clawden-host@alice"
    assert len(base64.b64decode(blob)) == 4 + 11 + 4 + 32
    assert keys.mint_ed25519().public_openssh.count(" ") == 1  # no comment, no trailing space


def test_every_mint_is_a_new_key() -> None:
    assert keys.mint_ed25519().public_openssh != keys.mint_ed25519().public_openssh


def test_private_key_never_shows_in_repr() -> None:
    pair = keys.mint_ed25519("x")
    assert "PRIVATE" not in repr(pair)
    assert pair.public_openssh in repr(pair)


def test_private_key_round_trips_through_paramiko() -> None:
    pair = keys.mint_ed25519("c")
    pkey = channel_keys.load_private_key(pair.private_openssh)
    assert isinstance(pkey, paramiko.Ed25519Key)
    # The public half paramiko derives is the one we minted.
    assert keys.same_public_key(channel_keys.public_line_of(pkey), pair.public_openssh)
    # And a signature made with the loaded private key verifies with the public line.
    sig = pkey.sign_ssh_data(b"challenge")
    public = channel_keys.load_public_key(pair.public_openssh)
    assert public.verify_ssh_sig(b"challenge", paramiko.Message(sig.asbytes()))
    other = channel_keys.load_public_key(keys.mint_ed25519().public_openssh)
    assert not other.verify_ssh_sig(b"challenge", paramiko.Message(sig.asbytes()))


def test_fingerprint_is_sha256_of_the_blob() -> None:
    pair = keys.mint_ed25519("c")
    blob = base64.b64decode(pair.public_openssh.split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert pair.fingerprint == expected == keys.fingerprint_of(pair.public_openssh)
    assert paramiko.Ed25519Key(data=blob).fingerprint == expected


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="openssh-client not installed")
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = keys.mint_ed25519("c")
    (tmp_path / "k.pub").write_text(pair.public_openssh + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[1] == pair.fingerprint


@pytest.mark.parametrize(
    "line",
    [
        "",
        "ssh-rsa AAAAB3NzaC1yc2E x",
        "ssh-ed25519 !!notbase64",
        "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa").decode(),
    ],
)
def test_malformed_public_lines_are_rejected(line: str) -> None:
    with pytest.raises(IntegrityError):
        keys.fingerprint_sha256(line)


def test_bad_private_key_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError) as err:
        channel_keys.load_private_key(
            "-----BEGIN OPENSSH PRIVATE KEY-----\ngarbage\n-----END OPENSSH PRIVATE KEY-----\n"
        )
    assert "garbage" not in str(err.value)


@pytest.mark.parametrize("comment", ["has space", "new\nline", 'quote"', "x" * 65])
def test_comment_cannot_smuggle_text(comment: str) -> None:
    with pytest.raises(InvalidInput):
        keys.mint_ed25519(comment)
