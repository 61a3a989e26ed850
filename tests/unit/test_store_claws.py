"""ClawRepository: the desired state of each claw."""

from __future__ import annotations

import pytest
from sqlite_utils import Database

from appliance.core.errors import Conflict, NotFound
from appliance.core.model import Claw, ClawState
from appliance.store import ClawRepository, KeyRepository


def _claw(name: str = "alice", member: str = "Alice", **overrides: object) -> Claw:
    fields: dict[str, object] = {
        "name": name,
        "member": member,
        "state": ClawState.CREATING,
        "image_version": "2024.06.1",
        "vcpus": 1,
        "memory_mib": 512,
        "created_at": "2024-06-01T10:00:00.000000Z",
    }
    fields.update(overrides)
    return Claw(**fields)  # type: ignore[arg-type]


def test_add_then_get_round_trips_every_field(db: Database) -> None:
    claws = ClawRepository(db)
    claw = _claw(vcpus=2, memory_mib=1024, state=ClawState.STOPPED)
    claws.add(claw)
    got = claws.get("alice")
    assert got == claw
    assert got is not None and isinstance(got.state, ClawState)


def test_get_unknown_is_none_and_require_unknown_is_not_found(db: Database) -> None:
    claws = ClawRepository(db)
    assert claws.get("nobody") is None
    with pytest.raises(NotFound) as info:
        claws.require("nobody")
    assert info.value.what == "no claw named 'nobody'"
    assert info.value.fix == "see `clawden claw list`"


def test_duplicate_name_is_a_conflict_and_leaves_the_existing_claw(db: Database) -> None:
    claws = ClawRepository(db)
    original = _claw(member="Alice")
    claws.add(original)
    with pytest.raises(Conflict) as info:
        claws.add(_claw(member="Mallory", vcpus=4))
    assert "alice" in info.value.what
    assert info.value.fix
    assert claws.require("alice") == original
    assert len(claws.list()) == 1


def test_list_is_sorted_by_name(db: Database) -> None:
    claws = ClawRepository(db)
    for name in ("charlie", "alice", "bob"):
        claws.add(_claw(name=name))
    assert [c.name for c in claws.list()] == ["alice", "bob", "charlie"]


def test_set_state_and_image_version(db: Database) -> None:
    claws = ClawRepository(db)
    claws.add(_claw())
    claws.add(_claw(name="bob"))
    claws.set_state("alice", ClawState.RUNNING)
    claws.set_image_version("alice", "2024.07.0")
    alice = claws.require("alice")
    assert alice.state is ClawState.RUNNING
    assert alice.image_version == "2024.07.0"
    # Only the named claw changes.
    assert claws.require("bob") == _claw(name="bob")


def test_updating_an_unknown_claw_is_not_found(db: Database) -> None:
    claws = ClawRepository(db)
    with pytest.raises(NotFound):
        claws.set_state("ghost", ClawState.RUNNING)
    with pytest.raises(NotFound):
        claws.set_image_version("ghost", "1")


def test_delete_removes_the_claw_and_its_keys_only(db: Database) -> None:
    claws, keys = ClawRepository(db), KeyRepository(db)
    claws.add(_claw())
    claws.add(_claw(name="bob"))
    keys.put("alice", "host_client", "ssh-ed25519 AAAA", "SHA256:a", "PRIVATE")
    keys.put("bob", "host_client", "ssh-ed25519 BBBB", "SHA256:b", "PRIVATE")
    claws.delete("alice")
    assert claws.get("alice") is None
    assert keys.get("alice", "host_client") is None
    assert claws.get("bob") is not None
    assert keys.get("bob", "host_client") is not None


def test_delete_is_idempotent_for_resumed_operations(db: Database) -> None:
    claws = ClawRepository(db)
    claws.add(_claw())
    claws.delete("alice")
    claws.delete("alice")
    assert claws.list() == []
