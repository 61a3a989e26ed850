"""The SQLite store: every table of the host's database, and the only code
that speaks SQL (``sqlite_utils``/``sqlite3`` are imported nowhere else).

``Store`` is the unit of work: one database connection and one repository per
table, built once by the composition root (``appliance.app``) and passed
down. Repositories take an injected ``sqlite_utils.Database``, so tests build
a ``Store`` on an in-memory database (``Store.memory()``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from appliance.core.approvals import Clock, utc_clock
from appliance.store.approvals import ApprovalRepository
from appliance.store.audit import AuditEntry, AuditLog, AuditQuery, AuditVerification
from appliance.store.claws import ClawRepository
from appliance.store.db import SchemaTooNew, migrate, open_db
from appliance.store.keys import GUEST_HOST, HOST_CLIENT, KeyRepository, StoredKey
from appliance.store.messages import MessageRepository
from appliance.store.operations import (
    DONE,
    FAILED,
    ROLLED_BACK,
    RUNNING,
    Operation,
    OperationLog,
)
from appliance.store.policy import GrantRepository, PolicyRepository
from appliance.store.schedules import ScheduleRepository
from appliance.store.sessions import SessionRepository
from appliance.store.skills import SkillRepository
from appliance.store.tx import transaction
from appliance.store.usage import UsageRepository
from appliance.store.users import UserRepository


class Store:
    """One database and a repository per table.

    ``audit_head`` is the file outside the database that pins the audit
    chain's tail; every append goes through this store's one ``AuditLog`` so
    the head file always follows, whoever appends (CLI, controller, host API).

    ``clock`` is the time the repositories that count by time (approvals,
    messages, LLM usage) go by, and the host API's quotas with them; tests
    inject a fake one.
    """

    def __init__(
        self, db: Database, audit_head: Path | None = None, clock: Clock = utc_clock
    ) -> None:
        self.db = db
        self.clock = clock
        self.claws = ClawRepository(db)
        self.keys = KeyRepository(db)
        self.ops = OperationLog(db)
        self.audit = AuditLog(db, head_file=audit_head)
        self.skills = SkillRepository(db)
        self.approvals = ApprovalRepository(db, clock=clock)
        self.messages = MessageRepository(db, clock=clock)
        self.schedules = ScheduleRepository(db)
        self.usage = UsageRepository(db, clock=clock)
        self.users = UserRepository(db)
        self.sessions = SessionRepository(db)
        self.policy = PolicyRepository(db)
        self.grants = GrantRepository(db)

    @classmethod
    def open(cls, path: Path, audit_head: Path | None = None) -> Store:
        """The real file (0600, WAL, migrated to the current schema)."""
        return cls(open_db(path), audit_head)

    @classmethod
    def memory(cls, audit_head: Path | None = None) -> Store:
        """A migrated in-memory database, for tests and throwaway tools."""
        db = Database(memory=True)
        migrate(db)
        return cls(db, audit_head)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together (``BEGIN IMMEDIATE``; nested
        calls are savepoints), e.g. a decision and its audit entry."""
        with transaction(self.db):
            yield


__all__ = [
    "DONE",
    "FAILED",
    "GUEST_HOST",
    "HOST_CLIENT",
    "ROLLED_BACK",
    "RUNNING",
    "ApprovalRepository",
    "AuditEntry",
    "AuditLog",
    "AuditQuery",
    "AuditVerification",
    "ClawRepository",
    "GrantRepository",
    "KeyRepository",
    "MessageRepository",
    "Operation",
    "OperationLog",
    "PolicyRepository",
    "ScheduleRepository",
    "SchemaTooNew",
    "SessionRepository",
    "SkillRepository",
    "Store",
    "StoredKey",
    "UsageRepository",
    "UserRepository",
    "migrate",
    "open_db",
    "transaction",
]
