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


def m005_llm_usage(db: Database) -> None:
    # One row per call the LLM gateway forwarded. No foreign key to claws: a
    # destroyed claw's spending stays on record. The (claw, ts) index serves
    # the budget check the gateway runs before every call.
    _script(
        db,
        """
        CREATE TABLE llm_calls (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            claw TEXT NOT NULL,
            ts TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            note TEXT
        ) STRICT;
        CREATE INDEX llm_calls_claw_ts ON llm_calls (claw, ts);
        CREATE INDEX llm_calls_ts ON llm_calls (ts);
        """,
    )


def m006_schedules_and_messages(db: Database) -> None:
    # Host-side, so schedules and conversations survive a wipe or rebuild of
    # the VM. No foreign key to claws: `claw destroy` removes a claw's rows
    # itself, and message history may outlive the claw if an admin wants it.
    # The partial unique index is what guarantees one heartbeat per claw.
    _script(
        db,
        """
        CREATE TABLE schedules (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            claw TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('heartbeat', 'cron', 'every', 'at')),
            spec TEXT NOT NULL,
            tz TEXT NOT NULL,
            text TEXT NOT NULL,
            created_by TEXT NOT NULL CHECK (created_by IN ('operator', 'claw')),
            enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
            next_run_at TEXT,
            last_run_at TEXT,
            last_status TEXT,
            created_at TEXT NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX schedules_one_heartbeat ON schedules (claw)
            WHERE kind = 'heartbeat';
        CREATE INDEX schedules_claw ON schedules (claw, id);
        CREATE INDEX schedules_due ON schedules (next_run_at)
            WHERE enabled = 1 AND next_run_at IS NOT NULL;
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            claw TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            channel TEXT NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL,
            delivered INTEGER NOT NULL CHECK (delivered IN (0, 1))
        ) STRICT;
        CREATE INDEX messages_claw ON messages (claw, id);
        CREATE INDEX messages_undelivered ON messages (claw, id) WHERE delivered = 0;
        """,
    )


def m007_skills(db: Database) -> None:
    # What the owner installed on each claw, with the content hash shown at
    # install time: the guest indexes only skills whose files still hash to
    # this, so a skill the claw wrote or edited itself is never loaded.
    _script(
        db,
        """
        CREATE TABLE skills (
            claw TEXT NOT NULL,
            name TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            installed_at TEXT NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (claw, name)
        ) STRICT;
        """,
    )


def m008_approvals(db: Database) -> None:
    # What a claw asked its admin to approve (appliance/core/approvals.py). The
    # action and details are untrusted text, stored exactly as received;
    # sha256 pins them (with the claw) so the operator decides on exactly
    # what was shown. No foreign key to claws: `claw destroy` removes them.
    _script(
        db,
        """
        CREATE TABLE approvals (
            id TEXT PRIMARY KEY,
            claw TEXT NOT NULL,
            action TEXT NOT NULL,
            details TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
            reason TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            decided_at TEXT,
            decided_by TEXT
        ) STRICT;
        CREATE INDEX approvals_claw ON approvals (claw, status, created_at);
        CREATE INDEX approvals_pending ON approvals (expires_at) WHERE status = 'pending';
        """,
    )


def m009_quota_indexes(db: Database) -> None:
    # The quotas (appliance/core/quotas.py) count a claw's messages since
    # 00:00 UTC and its approval requests of the last hour before every
    # insert; these keep that a range scan over the claw's recent rows, not
    # over its whole history. The first also serves `claw messages --purge-before`.
    _script(
        db,
        """
        CREATE INDEX messages_claw_created ON messages (claw, created_at);
        CREATE INDEX approvals_claw_created ON approvals (claw, created_at);
        """,
    )


def m010_llm_reservations(db: Database) -> None:
    # The worst case of each LLM call in flight, reserved against the claw's
    # budgets before the call is forwarded and deleted when its real usage is
    # recorded (store/usage.py). expires_at bounds what a crashed controller
    # leaves behind; owner is the pid of the process that made it, so a
    # restarted controller can drop a dead one's rows at once.
    _script(
        db,
        """
        CREATE TABLE llm_reservations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            claw TEXT NOT NULL,
            model TEXT NOT NULL,
            tokens INTEGER NOT NULL CHECK (tokens >= 0),
            cost_usd REAL NOT NULL CHECK (cost_usd >= 0),
            owner INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX llm_reservations_claw ON llm_reservations (claw, expires_at);
        CREATE INDEX llm_reservations_expires ON llm_reservations (expires_at);
        """,
    )


def m011_accounts(db: Database) -> None:
    # Family accounts (appliance/core/accounts.py). Secrets at rest: the
    # password as an argon2id hash; recovery codes and session tokens as
    # SHA-256 (they are 80+ random bits, so a fast hash cannot be guessed
    # backwards); the TOTP secret in clear, because verifying a code needs it
    # (the file is 0600 and already holds the claws' client keys).
    # totp.last_step is the newest time step used: a code is accepted only
    # for a later step, consumed in one atomic UPDATE (store/users.py).
    # login_attempts keeps failures only; they age out of the lockout window.
    _script(
        db,
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('admin', 'member')),
            password_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            password_changed_at TEXT NOT NULL
        ) STRICT;
        CREATE TABLE user_claws (
            claw TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE
        ) STRICT;
        CREATE INDEX user_claws_user ON user_claws (user);
        CREATE TABLE totp (
            user TEXT PRIMARY KEY REFERENCES users (name) ON DELETE CASCADE,
            secret TEXT,
            pending_secret TEXT,
            last_step INTEGER NOT NULL DEFAULT -1
        ) STRICT;
        CREATE TABLE recovery_codes (
            user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            code_sha256 TEXT NOT NULL,
            used_at TEXT,
            PRIMARY KEY (user, code_sha256)
        ) STRICT;
        CREATE TABLE sessions (
            token_sha256 TEXT PRIMARY KEY,
            user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT
        ) STRICT;
        CREATE INDEX sessions_user ON sessions (user);
        CREATE TABLE login_attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('login', 'totp')),
            user TEXT NOT NULL,
            address TEXT NOT NULL,
            at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX login_attempts_user ON login_attempts (kind, user, at);
        CREATE INDEX login_attempts_address ON login_attempts (kind, address, at);
        """,
    )


def m012_approval_policy(db: Database) -> None:
    # The panel's approvals inbox (appliance/core/policy.py). seen_at: when
    # the inbox first showed a pending request, so one that expired before
    # anyone looked is told apart ("expired unseen"). approval_policy: a rule
    # per claw and capability; a missing row is "ask". approval_grants: a
    # time-boxed "allow this action" from an approved request; revoking one
    # sets revoked_at (the row stays, for the record).
    _script(
        db,
        """
        ALTER TABLE approvals ADD COLUMN seen_at TEXT;
        CREATE TABLE approval_policy (
            claw TEXT NOT NULL,
            capability TEXT NOT NULL,
            rule TEXT NOT NULL CHECK (rule IN ('allow', 'deny', 'ask')),
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            PRIMARY KEY (claw, capability)
        ) STRICT;
        CREATE TABLE approval_grants (
            id TEXT PRIMARY KEY,
            claw TEXT NOT NULL,
            action TEXT NOT NULL,
            approval_id TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT,
            revoked_by TEXT
        ) STRICT;
        CREATE INDEX approval_grants_claw ON approval_grants (claw, action, expires_at);
        """,
    )


MIGRATIONS: list[Migration] = [
    (1, "claws", m001_claws),
    (2, "keys", m002_keys),
    (3, "operations", m003_operations),
    (4, "audit_log", m004_audit_log),
    (5, "llm_usage", m005_llm_usage),
    (6, "schedules_and_messages", m006_schedules_and_messages),
    (7, "skills", m007_skills),
    (8, "approvals", m008_approvals),
    (9, "quota_indexes", m009_quota_indexes),
    (10, "llm_reservations", m010_llm_reservations),
    (11, "accounts", m011_accounts),
    (12, "approval_policy", m012_approval_policy),
]
