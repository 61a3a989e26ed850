"""The desired state of every claw: one row per claw in ``claws``."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlite_utils import Database

from appliance.core.errors import Conflict, NotFound
from appliance.core.model import Claw, ClawState
from appliance.store.tx import locked, transaction


def _not_found(name: str) -> NotFound:
    return NotFound(f"no claw named {name!r}", "see `clawden claw list`")


def _to_claw(row: dict[str, Any]) -> Claw:
    return Claw(
        name=row["name"],
        member=row["member"],
        state=ClawState(row["state"]),
        image_version=row["image_version"],
        vcpus=int(row["vcpus"]),
        memory_mib=int(row["memory_mib"]),
        created_at=row["created_at"],
    )


class ClawRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, claw: Claw) -> None:
        """Record a new claw; an existing claw of that name is left untouched."""
        try:
            with transaction(self.db):
                self.db.execute(
                    "INSERT INTO claws"
                    " (name, member, state, image_version, vcpus, memory_mib, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        claw.name,
                        claw.member,
                        ClawState(claw.state).value,
                        claw.image_version,
                        claw.vcpus,
                        claw.memory_mib,
                        claw.created_at,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            # Only a name clash is the operator's problem; anything else (a
            # NOT NULL violation) is a bug and must not pass as a clash.
            if "UNIQUE" not in str(exc):
                raise
            raise Conflict(
                f"a claw named {claw.name!r} already exists",
                "pick another name (see `clawden claw list`)",
            ) from None

    def get(self, name: str) -> Claw | None:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM claws WHERE name = ?", [name]))
        return _to_claw(rows[0]) if rows else None

    def require(self, name: str) -> Claw:
        claw = self.get(name)
        if claw is None:
            raise _not_found(name)
        return claw

    def list(self) -> list[Claw]:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM claws ORDER BY name"))
        return [_to_claw(row) for row in rows]

    def set_state(self, name: str, state: ClawState) -> None:
        self._update(name, "state", ClawState(state).value)

    def set_image_version(self, name: str, version: str) -> None:
        self._update(name, "image_version", version)

    def delete(self, name: str) -> None:
        """Forget a claw and its keys, atomically. Deleting a claw that is not
        there is a no-op, so a resumed destroy operation can repeat this step."""
        with transaction(self.db):
            self.db.execute("DELETE FROM keys WHERE claw = ?", [name])
            self.db.execute("DELETE FROM claws WHERE name = ?", [name])

    def _update(self, name: str, column: str, value: str) -> None:
        # ``column`` is one of our own literals, never user input.
        with transaction(self.db):
            cursor = self.db.execute(
                f"UPDATE claws SET {column} = ? WHERE name = ?",  # noqa: S608
                [value, name],
            )
            if cursor.rowcount == 0:
                raise _not_found(name)
