"""The ``approval_policy`` and ``approval_grants`` tables: per-claw rules
and time-boxed grants (rules in ``appliance.core.policy``)."""

from __future__ import annotations

import builtins
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import Conflict, NotFound
from appliance.core.policy import DEFAULT_RULE, Grant, check_capability, check_rule
from appliance.store.tx import from_iso, locked, to_iso, transaction


class PolicyRepository:
    """A rule per (claw, capability); no row means ``ask``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def rules(self, claw: str) -> dict[str, str]:
        with locked(self.db):
            rows = self.db.execute(
                "SELECT capability, rule FROM approval_policy WHERE claw = ?", [claw]
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def all_rules(self) -> dict[str, dict[str, str]]:
        with locked(self.db):
            rows = self.db.execute(
                "SELECT claw, capability, rule FROM approval_policy ORDER BY claw, capability"
            ).fetchall()
        out: dict[str, dict[str, str]] = {}
        for claw, capability, rule in rows:
            out.setdefault(claw, {})[capability] = rule
        return out

    def set(self, claw: str, capability: str, rule: str, by: str, now: datetime) -> str:
        """Set the rule; returns the one it replaces (``ask`` if none)."""
        check_capability(capability)
        check_rule(rule)
        with transaction(self.db):
            row = self.db.execute(
                "SELECT rule FROM approval_policy WHERE claw = ? AND capability = ?",
                [claw, capability],
            ).fetchone()
            self.db.execute(
                "INSERT INTO approval_policy (claw, capability, rule, set_by, set_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (claw, capability) DO UPDATE"
                " SET rule = excluded.rule, set_by = excluded.set_by, set_at = excluded.set_at",
                [claw, capability, rule, by, to_iso(now)],
            )
        return str(row[0]) if row else DEFAULT_RULE

    def delete_claw(self, claw: str) -> int:
        with transaction(self.db):
            cur = self.db.execute("DELETE FROM approval_policy WHERE claw = ?", [claw])
            return int(cur.rowcount)


def _to_grant(row: dict[str, Any]) -> Grant:
    return Grant(
        id=row["id"],
        claw=row["claw"],
        action=row["action"],
        approval_id=row["approval_id"],
        created_by=row["created_by"],
        created_at=from_iso(row["created_at"]),
        expires_at=from_iso(row["expires_at"]),
        revoked_at=None if row["revoked_at"] is None else from_iso(row["revoked_at"]),
        revoked_by=row["revoked_by"],
    )


class GrantRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, claw: str, action: str, approval_id: str, by: str, now: datetime, minutes: int
    ) -> Grant:
        grant_id = f"gr-{secrets.token_hex(6)}"
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO approval_grants (id, claw, action, approval_id, created_by,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    grant_id,
                    claw,
                    action,
                    approval_id,
                    by,
                    to_iso(now),
                    to_iso(now + timedelta(minutes=minutes)),
                ],
            )
        return self.require(grant_id)

    def get(self, grant_id: str) -> Grant | None:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM approval_grants WHERE id = ?", [grant_id]))
        return _to_grant(rows[0]) if rows else None

    def require(self, grant_id: str) -> Grant:
        grant = self.get(grant_id)
        if grant is None:
            raise NotFound(f"no grant {grant_id[:40]!r}", "reload the approvals page")
        return grant

    def active_for(self, claw: str, action: str, now: datetime) -> Grant | None:
        """The live grant for this claw and action that lasts longest, if any."""
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM approval_grants WHERE claw = ? AND action = ?"
                    " AND revoked_at IS NULL AND expires_at > ?"
                    " ORDER BY expires_at DESC LIMIT 1",
                    [claw, action, to_iso(now)],
                )
            )
        return _to_grant(rows[0]) if rows else None

    def active(self, now: datetime) -> builtins.list[Grant]:
        with locked(self.db):
            rows = list(
                self.db.query(
                    "SELECT * FROM approval_grants WHERE revoked_at IS NULL AND expires_at > ?"
                    " ORDER BY expires_at",
                    [to_iso(now)],
                )
            )
        return [_to_grant(row) for row in rows]

    def revoke(self, grant_id: str, by: str, now: datetime) -> Grant:
        """End a live grant now; Conflict if it already ended."""
        with transaction(self.db):
            grant = self.require(grant_id)
            if not grant.active(now):
                raise Conflict(f"grant {grant.id} has already ended", "nothing to revoke")
            self.db.execute(
                "UPDATE approval_grants SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                [to_iso(now), by, grant_id],
            )
        return self.require(grant_id)

    def delete_claw(self, claw: str) -> int:
        with transaction(self.db):
            cur = self.db.execute("DELETE FROM approval_grants WHERE claw = ?", [claw])
            return int(cur.rowcount)
