"""MessageRepository: per-claw history, as-is text, the size cap, delivery flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.core.errors import InvalidInput
from appliance.core.messages import MAX_TEXT_BYTES
from appliance.store import open_db
from appliance.store.messages import MessageRepository


def test_round_trip_keeps_untrusted_text_exactly(tmp_path: Path) -> None:
    text = "hi \x1b]0;owned\x07 \u202eevil\u202c <script>alert(1)</script>\x00end"
    path = tmp_path / "clawden.db"
    first = open_db(path)
    try:
        sent = MessageRepository(first).add("alice", "in", "cli", "operator", text)
    finally:
        first.close()
    second = open_db(path)  # a controller restart loses nothing
    try:
        (got,) = MessageRepository(second).list("alice")
    finally:
        second.close()
    assert got == sent
    assert got.text == text
    assert (got.direction, got.channel, got.kind, got.delivered) == ("in", "cli", "chat", False)


def test_list_is_per_claw_oldest_first_with_limit_and_since(db: Database) -> None:
    repo = MessageRepository(db)
    ids = [repo.add("alice", "in", "cli", "op", f"m{i}").id for i in range(5)]
    repo.add("bob", "in", "cli", "op", "not alice's")
    assert [m.text for m in repo.list("alice", limit=2)] == ["m3", "m4"]
    assert [m.text for m in repo.list("alice", limit=2, since_id=ids[0])] == ["m1", "m2"]
    assert repo.list("alice", since_id=ids[-1]) == []
    with pytest.raises(InvalidInput, match="invalid limit 0"):
        repo.list("alice", limit=0)


def test_mark_delivered_and_undelivered(db: Database) -> None:
    repo = MessageRepository(db)
    first = repo.add("alice", "out", "schedule", "alice", "one", kind="heartbeat")
    second = repo.add("alice", "out", "web", "alice", "two")
    repo.add("alice", "in", "web", "Alice", "three")
    assert [m.id for m in repo.undelivered("alice")] == [first.id, second.id]
    assert repo.mark_delivered(first.id) is True
    assert repo.mark_delivered(9999) is False
    assert [m.id for m in repo.undelivered("alice")] == [second.id]
    assert repo.list("alice")[0].delivered is True


def test_text_over_the_cap_is_refused_with_a_fix(db: Database) -> None:
    repo = MessageRepository(db)
    repo.add("alice", "in", "cli", "op", "x" * MAX_TEXT_BYTES)
    with pytest.raises(InvalidInput) as info:
        repo.add("alice", "in", "cli", "op", "é" * (MAX_TEXT_BYTES // 2 + 1))
    assert (
        info.value.what
        == f"the message is {MAX_TEXT_BYTES + 2} bytes, the limit is {MAX_TEXT_BYTES}"
    )
    assert "shorter" in info.value.fix
    assert len(repo.list("alice")) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("direction", "sideways"), ("channel", "Tele gram"), ("kind", "spam"), ("sender", "")],
)
def test_fields_are_validated(db: Database, field: str, value: str) -> None:
    args = {"claw": "alice", "direction": "in", "channel": "cli", "sender": "op", "text": "t"}
    args[field] = value
    with pytest.raises(InvalidInput):
        MessageRepository(db).add(**args)  # type: ignore[arg-type]
    assert MessageRepository(db).list("alice") == []
