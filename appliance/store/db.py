"""Opening the store and bringing its schema up to date."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from appliance.core.errors import ClawdenError
from appliance.store.migrations import MIGRATIONS, Migration
from appliance.store.tx import transaction, utc_now

# The CLI and the controller daemon hold the file at the same time; a writer
# waits up to this long for the other before giving up with "database is locked".
BUSY_TIMEOUT_S = 10.0


class SchemaTooNew(ClawdenError):
    """The database was written by a newer clawden than the one running."""

    exit_code = 5


def open_db(path: Path | str) -> Database:
    """Open (creating if needed) the store at ``path`` and migrate it.

    The file holds host secrets (per-claw client keys), so it is created 0600
    before SQLite touches it; SQLite gives its -wal and -shm files the same
    mode as the database file.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    # Never open and close a descriptor on an existing database: closing *any*
    # fd on the file drops every POSIX lock this process holds on it, silently
    # breaking its other open connections (stale reads, "malformed" errors).
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        os.chmod(path, 0o600)  # an existing file may predate this rule

    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        # No sqlite-utils plugins: nothing outside clawden gets to hook a
        # connection that holds keys and the audit log.
        db = Database(conn, execute_plugins=False)
        db.enable_wal()
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db)
    except BaseException:
        conn.close()
        raise
    return db


def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the migrations ``db`` has not seen yet, in order; return their numbers.

    Everything happens in one ``BEGIN IMMEDIATE`` transaction, so two processes
    starting at once cannot both apply a migration, and a failing migration
    leaves the schema as it was.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    _check_numbering(migrations)
    known = {number for number, _, _ in migrations}
    applied_now: list[int] = []
    with transaction(db):
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = {int(row["number"]) for row in db.query("SELECT number FROM _migrations")}
        unknown = sorted(applied - known)
        if unknown:
            newest = max(known, default=0)
            raise SchemaTooNew(
                f"the database schema is newer than this clawden "
                f"(it has migration {unknown[-1]}, this version knows up to {newest})",
                "upgrade clawden to the version that wrote this database, "
                "or restore the database backup taken before the upgrade",
            )
        for number, name, fn in migrations:
            if number in applied:
                continue
            fn(db)
            db.execute(
                "INSERT INTO _migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (number, name, utc_now()),
            )
            applied_now.append(number)
    return applied_now


def applied_migrations(db: Database) -> list[int]:
    """Numbers of the migrations recorded in ``db`` (empty for a fresh file)."""
    if not db["_migrations"].exists():
        return []
    return [int(r["number"]) for r in db.query("SELECT number FROM _migrations ORDER BY number")]


def _check_numbering(migrations: list[Migration]) -> None:
    # A programming error, not an operator one: numbers must be 1, 2, 3, ...
    numbers = [number for number, _, _ in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migrations must be numbered 1..n without gaps, got {numbers}")
