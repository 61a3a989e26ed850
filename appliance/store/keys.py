"""SSH keys the host holds for each claw.

Two kinds are stored per claw:

* ``guest_host`` — the guest's SSH host key, *public only*: the host pins it
  and refuses a guest presenting anything else;
* ``host_client`` — the host's client key for that claw, *private and public*.

Private keys live only here (the database file is 0600) and never in reprs,
logs or error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from appliance.store.tx import locked, transaction, utc_now

GUEST_HOST = "guest_host"
HOST_CLIENT = "host_client"


@dataclass(frozen=True, repr=False)
class StoredKey:
    claw: str
    kind: str
    public_key: str
    fingerprint: str
    private_key: str | None
    created_at: str

    def __repr__(self) -> str:
        # Dataclass reprs end up in tracebacks and debug logs; say whether a
        # private key is held, never what it is.
        secret = "<redacted>" if self.private_key is not None else "None"
        return (
            f"StoredKey(claw={self.claw!r}, kind={self.kind!r}, "
            f"fingerprint={self.fingerprint!r}, private_key={secret}, "
            f"created_at={self.created_at!r})"
        )

    __str__ = __repr__


def _to_key(row: dict[str, Any]) -> StoredKey:
    return StoredKey(
        claw=row["claw"],
        kind=row["kind"],
        public_key=row["public_key"],
        fingerprint=row["fingerprint"],
        private_key=row["private_key"],
        created_at=row["created_at"],
    )


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(
        self,
        claw: str,
        kind: str,
        public_key: str,
        fingerprint: str,
        private_key: str | None = None,
    ) -> None:
        """Store a key, replacing any key of the same claw and kind (rotation)."""
        with transaction(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO keys"
                " (claw, kind, public_key, fingerprint, private_key, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (claw, kind, public_key, fingerprint, private_key, utc_now()),
            )

    def get(self, claw: str, kind: str) -> StoredKey | None:
        with locked(self.db):
            rows = list(
                self.db.query("SELECT * FROM keys WHERE claw = ? AND kind = ?", [claw, kind])
            )
        return _to_key(rows[0]) if rows else None

    def delete_for(self, claw: str) -> int:
        """Delete every key of ``claw``; return how many there were."""
        with transaction(self.db):
            return self.db.execute("DELETE FROM keys WHERE claw = ?", [claw]).rowcount
