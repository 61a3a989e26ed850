"""The SQLite store: claws, keys, operations and the audit log.

Every repository takes an injected ``sqlite_utils.Database`` (``open_db`` for
the real file, ``Database(memory=True)`` plus ``migrate`` in tests).
"""

from appliance.store.audit import AuditEntry, AuditLog, AuditVerification
from appliance.store.claws import ClawRepository
from appliance.store.db import SchemaTooNew, migrate, open_db
from appliance.store.keys import GUEST_HOST, HOST_CLIENT, KeyRepository, StoredKey
from appliance.store.operations import (
    DONE,
    FAILED,
    ROLLED_BACK,
    RUNNING,
    Operation,
    OperationLog,
)
from appliance.store.tx import transaction

__all__ = [
    "DONE",
    "FAILED",
    "GUEST_HOST",
    "HOST_CLIENT",
    "ROLLED_BACK",
    "RUNNING",
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "ClawRepository",
    "KeyRepository",
    "Operation",
    "OperationLog",
    "SchemaTooNew",
    "StoredKey",
    "migrate",
    "open_db",
    "transaction",
]
