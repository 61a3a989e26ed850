"""The schema, as an ordered list of numbered migrations.

Policy (see docs/store.md): a migration, once released, is never edited or
renumbered; schema changes are new migrations appended at the end. Each one is
plain SQL rather than sqlite-utils' table helpers, so that what a migration
does cannot change when the library is upgraded. Migrations run inside the
caller's write transaction, so they must not change ``PRAGMA foreign_keys``
or ``journal_mode`` (both are no-ops inside a transaction).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

Migration = tuple[int, str, Callable[[Database], None]]


def _script(db: Database, sql: str) -> None:
    # Database.executescript() runs statement by statement when a transaction
    # is open, instead of sqlite3's executescript(), which would COMMIT first.
    db.executescript(sql)


def m001_claws(db: Database) -> None:
    # No CHECK on state: adding a lifecycle state later should not require
    # rebuilding the table; the Python enum validates on read and write.
    _script(
        db,
        """
        CREATE TABLE claws (
            name TEXT PRIMARY KEY,
            member TEXT NOT NULL,
            state TEXT NOT NULL,
            image_version TEXT NOT NULL,
            vcpus INTEGER NOT NULL,
            memory_mib INTEGER NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT;
        """,
    )


def m002_keys(db: Database) -> None:
    # No foreign key to claws: create may mint keys before or after recording
    # the claw. ClawRepository.delete() removes a claw's keys itself so no
    # private key outlives its claw.
    _script(
        db,
        """
        CREATE TABLE keys (
            claw TEXT NOT NULL,
            kind TEXT NOT NULL,
            public_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            private_key TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (claw, kind)
        ) STRICT;
        """,
    )


def m003_operations(db: Database) -> None:
    # AUTOINCREMENT so an operation id is never reused, even after deletes:
    # ids appear in logs and audit entries. No foreign key to claws: the
    # history of a destroyed claw must survive it.
    _script(
        db,
        """
        CREATE TABLE operations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            claw TEXT NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('running', 'done', 'failed', 'rolled_back')),
            params TEXT NOT NULL DEFAULT '{}',
            owner_pid INTEGER,
            error TEXT,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX operations_status ON operations (status, id);
        CREATE INDEX operations_claw ON operations (claw, id);
        """,
    )


def m004_audit_log(db: Database) -> None:
    # The triggers stop accidental writes (a stray UPDATE in a migration or a
    # debugging session); the hash chain is what catches deliberate edits.
    _script(
        db,
        """
        CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            details TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX audit_log_hash ON audit_log (hash);
        CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN
            SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be updated');
        END;
        CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN
            SELECT RAISE(ABORT, 'audit_log is append-only: rows cannot be deleted');
        END;
        """,
    )


MIGRATIONS: list[Migration] = [
    (1, "claws", m001_claws),
    (2, "keys", m002_keys),
    (3, "operations", m003_operations),
    (4, "audit_log", m004_audit_log),
]
