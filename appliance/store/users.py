"""Family accounts: ``users``, the claws each member owns (``user_claws``),
TOTP secrets (``totp``) and recovery codes (``recovery_codes``).

Hashing is not done here: callers pass the argon2 hash of a password and the
SHA-256 of a recovery code (``appliance/accounts/``), so this module never
sees a password. The two one-time checks — a TOTP time step and a recovery
code — are each one conditional UPDATE whose rowcount says whether this
caller won: two connections racing with the same code cannot both succeed.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from appliance.core.accounts import User
from appliance.core.errors import Conflict, NotFound
from appliance.store.tx import from_iso, locked, to_iso, transaction


def not_found(name: str) -> NotFound:
    return NotFound(f"no user named {name[:40]!r}", "see `clawden user list`")


class UserRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, name: str, role: str, password_hash: str, claws: tuple[str, ...], now: datetime
    ) -> User:
        """A new account owning ``claws`` (each must exist and have no owner yet)."""
        with transaction(self.db):
            if self.get(name) is not None:
                raise Conflict(f"a user named {name!r} already exists", "pick another name")
            for claw in claws:
                if not self.db.execute("SELECT 1 FROM claws WHERE name = ?", [claw]).fetchone():
                    raise NotFound(f"no claw named {claw!r}", "see `clawden claw list`")
                owner = self.owner_of(claw)
                if owner is not None:
                    raise Conflict(
                        f"claw {claw!r} already belongs to {owner!r}",
                        f"remove it from {owner!r} first (`clawden user rm {owner}`)",
                    )
            self.db.execute(
                "INSERT INTO users (name, role, password_hash, created_at, password_changed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [name, role, password_hash, to_iso(now), to_iso(now)],
            )
            self.db.execute("INSERT INTO totp (user) VALUES (?)", [name])
            for claw in claws:
                self.db.execute("INSERT INTO user_claws (claw, user) VALUES (?, ?)", [claw, name])
            return self.require(name)

    def get(self, name: str) -> User | None:
        with locked(self.db):
            rows = list(self.db.query("SELECT * FROM users WHERE name = ?", [name]))
            return self._to_user(rows[0]) if rows else None

    def require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise not_found(name)
        return user

    def list(self) -> builtins.list[User]:
        with locked(self.db):
            return [self._to_user(r) for r in self.db.query("SELECT * FROM users ORDER BY name")]

    def remove(self, name: str) -> None:
        """The account, its claws' links, TOTP, codes and sessions (cascade)."""
        with transaction(self.db):
            self.require(name)
            self.db.execute("DELETE FROM user_claws WHERE user = ?", [name])
            self.db.execute("DELETE FROM totp WHERE user = ?", [name])
            self.db.execute("DELETE FROM recovery_codes WHERE user = ?", [name])
            self.db.execute("DELETE FROM sessions WHERE user = ?", [name])
            self.db.execute("DELETE FROM users WHERE name = ?", [name])

    def delete_claw(self, claw: str) -> None:
        """A destroyed claw has no owner: a new claw of that name starts unowned."""
        with transaction(self.db):
            self.db.execute("DELETE FROM user_claws WHERE claw = ?", [claw])

    def owner_of(self, claw: str) -> str | None:
        with locked(self.db):
            row = self.db.execute("SELECT user FROM user_claws WHERE claw = ?", [claw]).fetchone()
            return None if row is None else str(row[0])

    def admin_count(self) -> int:
        with locked(self.db):
            row = self.db.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()
            return int(row[0])

    # ---- passwords ------------------------------------------------------------
    def password_hash(self, name: str) -> str | None:
        with locked(self.db):
            row = self.db.execute(
                "SELECT password_hash FROM users WHERE name = ?", [name]
            ).fetchone()
            return None if row is None else str(row[0])

    def set_password_hash(self, name: str, password_hash: str, now: datetime) -> None:
        """A new password; the caller revokes the sessions in the same transaction."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE users SET password_hash = ?, password_changed_at = ? WHERE name = ?",
                [password_hash, to_iso(now), name],
            )
            if cur.rowcount != 1:
                raise not_found(name)

    # ---- TOTP -----------------------------------------------------------------
    def set_pending_totp(self, name: str, secret: str) -> None:
        """Enrolment starts: the new secret works only after ``confirm_totp``;
        an active secret keeps working until then."""
        with transaction(self.db):
            self.require(name)
            self.db.execute("UPDATE totp SET pending_secret = ? WHERE user = ?", [secret, name])

    def pending_totp(self, name: str) -> str | None:
        return self._totp_field(name, "pending_secret")

    def active_totp(self, name: str) -> str | None:
        return self._totp_field(name, "secret")

    def confirm_totp(self, name: str, step: int) -> bool:
        """Make the pending secret the active one, its confirming step used.
        False if nothing was pending (or another process confirmed first)."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE totp SET secret = pending_secret, pending_secret = NULL, last_step = ?"
                " WHERE user = ? AND pending_secret IS NOT NULL",
                [step, name],
            )
            return cur.rowcount == 1

    def consume_step(self, name: str, step: int) -> bool:
        """Use TOTP time step ``step`` for ``name``: True exactly once per
        step, and never for a step at or before the last one used. One
        statement, so two connections racing for it cannot both win."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE totp SET last_step = ? WHERE user = ? AND secret IS NOT NULL"
                " AND last_step < ?",
                [step, name, step],
            )
            return cur.rowcount == 1

    # ---- recovery codes -------------------------------------------------------
    def replace_recovery_codes(self, name: str, code_hashes: builtins.list[str]) -> None:
        with transaction(self.db):
            self.db.execute("DELETE FROM recovery_codes WHERE user = ?", [name])
            for digest in code_hashes:
                self.db.execute(
                    "INSERT INTO recovery_codes (user, code_sha256) VALUES (?, ?)", [name, digest]
                )

    def use_recovery_code(self, name: str, code_hash: str, now: datetime) -> bool:
        """Spend one unused code: True once, False if unknown or already spent."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE recovery_codes SET used_at = ?"
                " WHERE user = ? AND code_sha256 = ? AND used_at IS NULL",
                [to_iso(now), name, code_hash],
            )
            return cur.rowcount == 1

    def recovery_codes_left(self, name: str) -> int:
        with locked(self.db):
            row = self.db.execute(
                "SELECT count(*) FROM recovery_codes WHERE user = ? AND used_at IS NULL", [name]
            ).fetchone()
            return int(row[0])

    # ---- helpers --------------------------------------------------------------
    def _totp_field(self, name: str, column: str) -> str | None:
        assert column in ("secret", "pending_secret")
        with locked(self.db):
            row = self.db.execute(f"SELECT {column} FROM totp WHERE user = ?", [name]).fetchone()  # noqa: S608
            return None if row is None or row[0] is None else str(row[0])

    def _to_user(self, row: dict[str, Any]) -> User:
        claws = tuple(
            str(r[0])
            for r in self.db.execute(
                "SELECT claw FROM user_claws WHERE user = ? ORDER BY claw", [row["name"]]
            ).fetchall()
        )
        active = self.db.execute(
            "SELECT secret IS NOT NULL FROM totp WHERE user = ?", [row["name"]]
        ).fetchone()
        return User(
            name=row["name"],
            role=row["role"],
            claws=claws,
            totp_active=bool(active and active[0]),
            created_at=from_iso(row["created_at"]),
        )
