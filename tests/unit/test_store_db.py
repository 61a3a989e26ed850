"""open_db and the numbered migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.store import ClawRepository, SchemaTooNew, migrate, open_db
from appliance.store.db import applied_migrations
from appliance.store.migrations import MIGRATIONS
from appliance.store.tx import transaction


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_open_db_creates_parent_and_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "clawden.db"
    old_umask = os.umask(0)  # the mode must not depend on a lenient umask
    try:
        db = open_db(path)
    finally:
        os.umask(old_umask)
    try:
        ClawRepository(db).list()  # touch the file so -wal/-shm exist
        assert _mode(path) == 0o600
        for side in ("clawden.db-wal", "clawden.db-shm"):
            side_path = path.with_name(side)
            if side_path.exists():
                assert _mode(side_path) == 0o600
    finally:
        db.close()


def test_open_db_tightens_an_existing_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "clawden.db"
    path.touch()
    path.chmod(0o644)
    open_db(path).close()
    assert _mode(path) == 0o600


def test_connection_settings(db: Database) -> None:
    assert db.journal_mode == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_connection_is_usable_from_another_thread(db: Database) -> None:
    results: list[object] = []

    def work() -> None:
        try:
            results.append(ClawRepository(db).list())
        except Exception as exc:  # noqa: BLE001 - reported through results
            results.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == [[]]


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    numbers = [number for number, _, _ in MIGRATIONS]
    assert numbers == list(range(1, len(MIGRATIONS) + 1))
    names = [name for _, name, _ in MIGRATIONS]
    assert len(set(names)) == len(names)


def test_migrations_are_recorded_and_idempotent(db: Database, tmp_path: Path) -> None:
    assert applied_migrations(db) == [number for number, _, _ in MIGRATIONS]
    assert migrate(db) == []
    rows = list(db.query("SELECT number, name FROM _migrations ORDER BY number"))
    assert [(r["number"], r["name"]) for r in rows] == [(n, name) for n, name, _ in MIGRATIONS]
    assert {"claws", "keys", "operations", "audit_log"} <= set(db.table_names())
    # Reopening the same file applies nothing new and does not fail.
    again = open_db(tmp_path / "clawden.db")
    try:
        assert migrate(again) == []
    finally:
        again.close()


def test_fresh_database_gets_every_migration_in_order() -> None:
    db = Database(memory=True)
    try:
        assert applied_migrations(db) == []
        assert migrate(db) == [number for number, _, _ in MIGRATIONS]
    finally:
        db.close()


def test_only_missing_migrations_are_applied() -> None:
    db = Database(memory=True)
    try:
        assert migrate(db, MIGRATIONS[:2]) == [1, 2]
        assert migrate(db) == [n for n, _, _ in MIGRATIONS[2:]]
    finally:
        db.close()


def test_a_failing_migration_leaves_the_schema_untouched() -> None:
    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    db = Database(memory=True)
    try:
        migrate(db)
        with pytest.raises(RuntimeError, match="boom"):
            migrate(db, [*MIGRATIONS, (len(MIGRATIONS) + 1, "broken", broken)])
        assert "half_done" not in db.table_names()
        assert applied_migrations(db) == [number for number, _, _ in MIGRATIONS]
    finally:
        db.close()


def test_misnumbered_migrations_are_a_programming_error() -> None:
    db = Database(memory=True)
    try:
        with pytest.raises(ValueError, match="numbered"):
            migrate(db, [MIGRATIONS[0], MIGRATIONS[2]])
    finally:
        db.close()


def test_newer_schema_is_refused_with_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "clawden.db"
    open_db(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO _migrations (number, name, applied_at) VALUES (99, 'future', 'x')"
        )
    conn.close()

    with pytest.raises(SchemaTooNew) as info:
        open_db(path)
    assert "99" in info.value.what
    assert "upgrade clawden" in info.value.fix


def test_nested_transactions_roll_back_only_the_inner_part(db: Database) -> None:
    with transaction(db):
        db.execute("INSERT INTO keys VALUES ('a', 'k', 'pub', 'fp', NULL, 'now')")
        with pytest.raises(RuntimeError):
            with transaction(db):
                db.execute("INSERT INTO keys VALUES ('b', 'k', 'pub', 'fp', NULL, 'now')")
                raise RuntimeError("inner fails")
    assert [r["claw"] for r in db.query("SELECT claw FROM keys")] == ["a"]


def test_reopening_never_opens_a_raw_descriptor_on_a_live_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closing any fd on a SQLite file drops all of this process's POSIX locks
    # on it, which corrupted the controller's reads while a CLI wrote. A second
    # open_db in the same process must therefore not os.open() the file.
    path = tmp_path / "c.db"
    first = open_db(path)
    opened: list[str] = []
    real_open = os.open

    def spy(file: str | os.PathLike[str], *args: object, **kw: object) -> int:
        fd = real_open(file, *args, **kw)  # type: ignore[arg-type]
        opened.append(str(file))  # only descriptors that were really opened
        return fd

    monkeypatch.setattr(os, "open", spy)
    second = open_db(path)
    try:
        assert str(path) not in opened
    finally:
        second.close()
        first.close()
