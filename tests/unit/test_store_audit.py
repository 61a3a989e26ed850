"""AuditLog: append-only, hash-chained, verifiable."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.core.errors import InvalidInput
from appliance.store import AuditLog, open_db

ZERO = "0" * 64
CONTENT = ("ts", "actor", "action", "target", "details", "prev_hash", "hash")


@pytest.fixture
def head(tmp_path: Path) -> Path:
    return tmp_path / "audit.head"


def _fill(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append("admin", "claw.start", f"claw-{i}", {"n": i})


def _attacker(db: Database) -> None:
    """What someone with write access does first: remove the guard rails."""
    db.executescript(
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;"
        "DROP INDEX audit_log_hash;"
    )


def _row(db: Database, seq: int) -> dict[str, object]:
    return next(db.query("SELECT * FROM audit_log WHERE seq = ?", [seq]))


def _rehash(db: Database, seq: int, prev_hash: str) -> str:
    """Recompute a row's hash the way an informed attacker would."""
    row = _row(db, seq)
    payload = {k: row[k] for k in ("seq", "ts", "actor", "action", "target")}
    payload["details"] = json.loads(str(row["details"]))
    payload["prev_hash"] = prev_hash
    digest = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    db.execute(
        "UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", [prev_hash, digest, seq]
    )
    return digest


def test_fresh_and_filled_chains_verify(db: Database) -> None:
    log = AuditLog(db)
    empty = log.verify()
    assert (empty.ok, empty.count, empty.problems) == (True, 0, [])
    _fill(log, 5)
    result = log.verify()
    assert (result.ok, result.count, result.problems) == (True, 5, [])
    assert result.head_hash == log.entries()[-1].hash


def test_entries_are_numbered_and_chained(db: Database) -> None:
    log = AuditLog(db)
    first = log.append("admin", "policy.set", "alice", {"capability": "email", "rule": "ask"})
    second = log.append("controller", "claw.stop", "alice")
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == ZERO
    assert second.prev_hash == first.hash
    assert second.details == {}
    # The hash format is part of the contract: sha256 over canonical JSON.
    payload = {
        "seq": 1,
        "ts": first.ts,
        "actor": "admin",
        "action": "policy.set",
        "target": "alice",
        "details": {"capability": "email", "rule": "ask"},
        "prev_hash": ZERO,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert first.hash == hashlib.sha256(canonical.encode()).hexdigest()
    assert log.entries() == [first, second]


def test_entries_since_and_limit(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 6)
    assert [e.seq for e in log.entries(since_seq=3)] == [4, 5, 6]
    assert [e.seq for e in log.entries(since_seq=1, limit=2)] == [2, 3]
    assert log.entries(since_seq=6) == []


@pytest.mark.parametrize(
    "details",
    [
        {"private_key": "hunter2-s3cr3t"},
        {"API_KEY": "hunter2-s3cr3t"},
        {"request": {"headers": {"token": "hunter2-s3cr3t"}}},
        {"items": [{"password": "hunter2-s3cr3t"}]},
        {"secret": None},
    ],
)
def test_secrets_are_refused_and_nothing_is_written(
    db: Database, details: dict[str, object]
) -> None:
    log = AuditLog(db)
    with pytest.raises(InvalidInput) as info:
        log.append("admin", "gateway.key_set", "openai", details)
    assert "secret" in info.value.what
    assert info.value.fix
    assert "hunter2" not in str(info.value)  # the value is never echoed
    assert log.entries() == []


def test_non_json_details_are_refused(db: Database) -> None:
    log = AuditLog(db)
    with pytest.raises(InvalidInput):
        log.append("admin", "x", "y", {"when": object()})
    with pytest.raises(InvalidInput):
        log.append("admin", "x", "y", {"ratio": float("nan")})
    assert log.entries() == []


def test_triggers_block_update_and_delete(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 3)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_log WHERE seq = 3")
    assert [e.actor for e in log.entries()] == ["admin"] * 3
    assert log.verify().ok


def test_detects_an_edited_row(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 5)
    _attacker(db)
    db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
    result = log.verify()
    assert not result.ok
    assert result.problems == ["row 3 was edited (hash mismatch)"]


def test_detects_an_edited_and_rehashed_row(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 5)
    _attacker(db)
    db.execute("UPDATE audit_log SET target = 'nothing-to-see' WHERE seq = 3")
    _rehash(db, 3, str(_row(db, 2)["hash"]))
    assert log.verify().problems == ["chain broken at 4 (prev_hash does not match row 3)"]


def test_detects_a_deleted_middle_row(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 5)
    _attacker(db)
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    result = log.verify()
    assert (result.ok, result.count) == (False, 4)
    assert result.problems == ["row 3 is missing (gap 2→4)"]


def test_detects_several_deleted_rows(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 8)
    _attacker(db)
    db.execute("DELETE FROM audit_log WHERE seq IN (1, 4, 5, 6)")
    assert log.verify().problems == [
        "row 1 is missing (gap 0→2)",
        "rows 4–6 are missing (gap 3→7)",
    ]


def test_detects_reordered_rows(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 6)
    _attacker(db)
    row3, row4 = _row(db, 3), _row(db, 4)
    sets = ", ".join(f"{c} = :{c}" for c in CONTENT)
    db.execute(f"UPDATE audit_log SET {sets} WHERE seq = 3", {c: row4[c] for c in CONTENT})
    db.execute(f"UPDATE audit_log SET {sets} WHERE seq = 4", {c: row3[c] for c in CONTENT})
    result = log.verify()
    assert not result.ok
    assert result.problems == ["rows out of order at 3", "rows out of order at 4"]


def test_without_a_head_file_tail_deletion_goes_unnoticed(db: Database) -> None:
    # The documented limit of a bare chain; the head file exists for this.
    log = AuditLog(db)
    _fill(log, 5)
    _attacker(db)
    db.execute("DELETE FROM audit_log WHERE seq >= 4")
    assert log.verify().ok


def test_head_file_is_private_and_tracks_the_tail(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 3)
    last = log.entries()[-1]
    assert json.loads(head.read_text()) == {"count": 3, "hash": last.hash}
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    assert [p.name for p in head.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert log.verify().ok


def test_head_file_detects_deleted_tail_rows(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 6)
    _attacker(db)
    db.execute("DELETE FROM audit_log WHERE seq >= 5")
    result = log.verify()
    assert not result.ok
    assert result.problems == ["the last 2 rows were removed (head file says count 6)"]


def test_head_file_detects_a_rewritten_chain(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 4)
    _attacker(db)
    db.execute("UPDATE audit_log SET actor = 'nobody' WHERE seq = 2")
    prev = str(_row(db, 1)["hash"])
    for seq in (2, 3, 4):
        prev = _rehash(db, seq, prev)
    assert log.verify().problems == ["head hash mismatch: row 4 does not match the head file"]


def test_appending_after_tampering_keeps_the_evidence(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 6)
    _attacker(db)
    db.execute("DELETE FROM audit_log WHERE seq >= 4")
    log.append("admin", "login", "panel")  # would re-anchor the head if we let it
    assert json.loads(head.read_text())["count"] == 6
    assert not log.verify().ok

    entry = log.reseal("admin", "investigated: restored from backup")
    assert entry.action == "audit.reseal"
    assert entry.details["old_head_count"] == 6
    result = log.verify()
    assert result.ok, result.problems
    assert json.loads(head.read_text()) == {"count": entry.seq, "hash": entry.hash}


def test_a_missing_head_file_is_reported(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 2)
    head.unlink()
    assert log.verify().problems == [f"head file {head} is missing (the log has 2 rows)"]


def test_threads_sharing_one_connection_keep_one_chain(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(50):
                log.append(f"thread-{worker}", "tick", "t", {"i": i})
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = log.verify()
    assert (result.ok, result.count) == (True, 200)


def _append_many(db_path: str, head_path: str, worker: int, n: int) -> None:
    db = open_db(db_path)
    try:
        log = AuditLog(db, head_file=Path(head_path))
        for i in range(n):
            log.append(f"proc-{worker}", "tick", "t", {"i": i})
    finally:
        db.close()


def test_two_processes_appending_at_once_keep_one_chain(tmp_path: Path, head: Path) -> None:
    path = tmp_path / "clawden.db"
    open_db(path).close()  # migrate once up front; the workers only append
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), str(head), w, 200)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]

    db = open_db(path)
    try:
        log = AuditLog(db, head_file=head)
        result = log.verify()
        assert (result.ok, result.count, result.problems) == (True, 400, [])
        entries = log.entries()
        assert [e.seq for e in entries] == list(range(1, 401))
        assert {e.actor for e in entries} == {"proc-1", "proc-2"}
    finally:
        db.close()


# ---- tampering the chain alone cannot see, and damage to the head itself ------
def _forge_tail(db: Database, action: str) -> None:
    """Append a row the way ``append`` would — right seq, right link, right
    hash — but straight into the table, so the head file never hears of it."""
    tail = _row(db, int(db.execute("SELECT max(seq) FROM audit_log").fetchone()[0]))
    payload = {
        "seq": int(str(tail["seq"])) + 1,
        "ts": str(tail["ts"]),
        "actor": "admin",
        "action": action,
        "target": "alice",
        "details": {},
        "prev_hash": str(tail["hash"]),
    }
    digest = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    db.execute(
        "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash)"
        " VALUES (:seq, :ts, :actor, :action, :target, '{}', :prev_hash, :hash)",
        {**{k: v for k, v in payload.items() if k != "details"}, "hash": digest},
    )


def test_head_file_detects_a_forged_row_appended_at_the_tail(db: Database, head: Path) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 4)
    _forge_tail(db, "approval.approve")  # INSERT is allowed: no trigger to drop
    # The forgery is a perfect link: the chain alone finds nothing wrong.
    assert AuditLog(db).verify().ok
    result = log.verify()
    assert (result.ok, result.count) == (False, 5)
    assert result.problems == [
        "1 rows were added without updating the head file (head file says count 4)"
    ]
    # A genuine append afterwards does not launder it: the head stays as evidence.
    log.append("admin", "login", "panel")
    assert json.loads(head.read_text())["count"] == 4
    assert log.verify().problems == [
        "2 rows were added without updating the head file (head file says count 4)"
    ]


@pytest.mark.parametrize(
    "damage",
    ["garbage", "empty", "missing-keys", "wrong-types", "a-folder"],
)
def test_an_unreadable_head_file_is_reported_and_kept(
    db: Database, head: Path, damage: str
) -> None:
    log = AuditLog(db, head_file=head)
    _fill(log, 3)
    head.unlink()
    if damage == "a-folder":
        head.mkdir()
    else:
        head.write_text(
            {
                "garbage": "\x00\x01 not json at all",
                "empty": "",
                "missing-keys": '{"count": 3}',
                "wrong-types": '{"count": "three", "hash": "x"}',
            }[damage]
        )
    result = log.verify()
    assert (result.ok, result.count) == (False, 3)
    assert result.problems == [f"head file {head} is unreadable"]
    # Appending goes on, but never overwrites what is there: it is evidence.
    before = None if head.is_dir() else head.read_bytes()
    log.append("admin", "login", "panel")
    assert (None if head.is_dir() else head.read_bytes()) == before
    assert log.verify().problems == [f"head file {head} is unreadable"]


def test_detects_a_first_row_that_does_not_start_from_genesis(db: Database) -> None:
    # The log was cut at the front and what is left renumbered and rehashed:
    # every row is self-consistent and linked, but the first one claims a
    # predecessor that no longer exists.
    log = AuditLog(db)
    _fill(log, 4)
    _attacker(db)
    prev = hashlib.sha256(b"the row that was cut away").hexdigest()
    for seq in (1, 2, 3, 4):
        prev = _rehash(db, seq, prev)
    result = log.verify()
    assert (result.ok, result.count) == (False, 4)
    assert result.problems == ["chain broken at 1 (prev_hash is not the genesis value)"]


def test_detects_a_first_row_whose_link_alone_was_edited(db: Database) -> None:
    log = AuditLog(db)
    _fill(log, 3)
    _attacker(db)
    db.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = 1", ["f" * 64])
    assert log.verify().problems == [
        "row 1 was edited (hash mismatch, and its prev_hash does not match the genesis value)"
    ]
