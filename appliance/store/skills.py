"""Which skills the owner installed on which claw (``skills`` table).

A claw can write its own workspace, so a ``skills/<name>/SKILL.md`` on its
disk proves nothing. The host's record does: ``clawden skill add`` writes a
row here only after the copy succeeded, and the guest asks the host API for
its rows before indexing a skill (docs/security.md, "Skills").
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from appliance.store.tx import locked, transaction, utc_now


@dataclass(frozen=True)
class InstalledSkill:
    claw: str
    name: str
    content_hash: str
    installed_at: str
    source: str


class SkillRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, claw: str, name: str, content_hash: str, source: str) -> InstalledSkill:
        """Record (or replace: a reinstall) one installed skill."""
        skill = InstalledSkill(claw, name, content_hash, utc_now(), source[:500])
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO skills (claw, name, content_hash, installed_at, source)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (claw, name) DO UPDATE SET content_hash = excluded.content_hash,"
                " installed_at = excluded.installed_at, source = excluded.source",
                [skill.claw, skill.name, skill.content_hash, skill.installed_at, skill.source],
            )
        return skill

    def list(self, claw: str | None = None) -> list[InstalledSkill]:
        """Ordered by claw, then name; every claw's when ``claw`` is None."""
        sql = "SELECT claw, name, content_hash, installed_at, source FROM skills"
        params: list[str] = []
        if claw is not None:
            sql += " WHERE claw = ?"
            params.append(claw)
        with locked(self.db):
            rows = list(self.db.query(sql + " ORDER BY claw, name", params))
        return [InstalledSkill(**row) for row in rows]

    def get(self, claw: str, name: str) -> InstalledSkill | None:
        return next((s for s in self.list(claw) if s.name == name), None)

    def remove(self, claw: str, name: str) -> bool:
        with transaction(self.db):
            cursor = self.db.execute("DELETE FROM skills WHERE claw = ? AND name = ?", [claw, name])
        return cursor.rowcount > 0

    def delete_claw(self, claw: str) -> int:
        """Forget a destroyed claw's skills (a new claw of that name starts with none)."""
        with transaction(self.db):
            return int(self.db.execute("DELETE FROM skills WHERE claw = ?", [claw]).rowcount)

    def allowed(self, claw: str) -> dict[str, str]:
        """Name -> content hash, what the guest may index."""
        return {s.name: s.content_hash for s in self.list(claw)}
