"""KeyRepository: pinned guest host keys and the host's per-claw client keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.store import GUEST_HOST, HOST_CLIENT, KeyRepository, open_db

PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyRepository]:
    db: Database = open_db(tmp_path / "clawden.db")
    yield KeyRepository(db)
    db.close()


def test_put_and_get(keys: KeyRepository) -> None:
    keys.put("alice", GUEST_HOST, "ssh-ed25519 AAAAguest", "SHA256:guest")
    keys.put("alice", HOST_CLIENT, "ssh-ed25519 AAAAclient", "SHA256:client", PRIVATE)

    guest = keys.get("alice", GUEST_HOST)
    assert guest is not None
    assert (guest.claw, guest.kind, guest.public_key, guest.fingerprint) == (
        "alice",
        "guest_host",
        "ssh-ed25519 AAAAguest",
        "SHA256:guest",
    )
    assert guest.private_key is None
    assert guest.created_at.endswith("Z")

    client = keys.get("alice", HOST_CLIENT)
    assert client is not None and client.private_key == PRIVATE
    assert keys.get("alice", "other") is None
    assert keys.get("bob", GUEST_HOST) is None


def test_put_replaces_the_key_of_the_same_claw_and_kind(keys: KeyRepository) -> None:
    keys.put("alice", HOST_CLIENT, "ssh-ed25519 OLD", "SHA256:old", PRIVATE)
    keys.put("alice", HOST_CLIENT, "ssh-ed25519 NEW", "SHA256:new", "NEWPRIVATE")
    key = keys.get("alice", HOST_CLIENT)
    assert key is not None
    assert (key.public_key, key.fingerprint, key.private_key) == (
        "ssh-ed25519 NEW",
        "SHA256:new",
        "NEWPRIVATE",
    )


def test_delete_for_removes_only_that_claws_keys(keys: KeyRepository) -> None:
    keys.put("alice", GUEST_HOST, "a1", "f1")
    keys.put("alice", HOST_CLIENT, "a2", "f2", PRIVATE)
    keys.put("bob", GUEST_HOST, "b1", "f3")
    assert keys.delete_for("alice") == 2
    assert keys.get("alice", GUEST_HOST) is None
    assert keys.get("alice", HOST_CLIENT) is None
    assert keys.get("bob", GUEST_HOST) is not None
    assert keys.delete_for("alice") == 0


def test_repr_and_str_never_show_the_private_key(keys: KeyRepository) -> None:
    keys.put("alice", HOST_CLIENT, "ssh-ed25519 AAAA", "SHA256:fp", PRIVATE)
    key = keys.get("alice", HOST_CLIENT)
    assert key is not None
    for text in (repr(key), str(key), f"{key}", f"{[key]}"):
        assert "c2VjcmV0" not in text
        assert "PRIVATE KEY" not in text
        assert "<redacted>" in text
        assert "SHA256:fp" in text


def test_repr_says_when_there_is_no_private_key(keys: KeyRepository) -> None:
    keys.put("alice", GUEST_HOST, "ssh-ed25519 AAAA", "SHA256:fp")
    key = keys.get("alice", GUEST_HOST)
    assert key is not None
    assert "private_key=None" in repr(key)
