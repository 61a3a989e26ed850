"""Login sessions (``sessions``) and failed attempts (``login_attempts``).

A session token is handed to the browser once; only its SHA-256 is stored,
so a copy of the database lets nobody in. A session ends at ``expires_at``,
at logout (``revoke``), or for all of a user's sessions at a password change
(``revoke_user``). Failed logins and failed TOTP codes are rows here; the
lockout rule over them is ``appliance.core.accounts.locked_until``.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlite_utils import Database

from appliance.core.accounts import FAILURE_WINDOW
from appliance.store.tx import from_iso, locked, to_iso, transaction

LOGIN, TOTP = "login", "totp"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, user: str, now: datetime, ttl: timedelta) -> str:
        """A new session for ``user``; returns the token (never stored)."""
        token = secrets.token_urlsafe(32)
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO sessions (token_sha256, user, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                [token_digest(token), user, to_iso(now), to_iso(now + ttl)],
            )
        return token

    def user_of(self, token: str, now: datetime) -> str | None:
        """Whose live session ``token`` is, or None (unknown, expired, revoked)."""
        with locked(self.db):
            row = self.db.execute(
                "SELECT user FROM sessions WHERE token_sha256 = ? AND revoked_at IS NULL"
                " AND expires_at > ?",
                [token_digest(token), to_iso(now)],
            ).fetchone()
            return None if row is None else str(row[0])

    def revoke(self, token: str, now: datetime) -> str | None:
        """End one session; returns its user if it was live."""
        with transaction(self.db):
            user = self.user_of(token, now)
            self.db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE token_sha256 = ? AND revoked_at IS NULL",
                [to_iso(now), token_digest(token)],
            )
            return user

    def revoke_user(self, user: str, now: datetime) -> int:
        """End every live session of ``user``; returns how many."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL"
                " AND expires_at > ?",
                [to_iso(now), user, to_iso(now)],
            )
            return int(cur.rowcount)

    # ---- failed attempts --------------------------------------------------------
    def record_failure(self, kind: str, user: str, address: str, now: datetime) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO login_attempts (kind, user, address, at) VALUES (?, ?, ?, ?)",
                [kind, user, address[:100], to_iso(now)],
            )
            # Old rows only ever age out of the window; drop them as we go.
            self.db.execute(
                "DELETE FROM login_attempts WHERE at < ?", [to_iso(now - 2 * FAILURE_WINDOW)]
            )

    def failures(
        self, kind: str, now: datetime, *, user: str = "", address: str = ""
    ) -> list[datetime]:
        """Failures of ``kind`` in the window, by user or by address."""
        column, value = ("user", user) if user else ("address", address)
        with locked(self.db):
            rows = self.db.execute(
                f"SELECT at FROM login_attempts WHERE kind = ? AND {column} = ? AND at > ?",  # noqa: S608
                [kind, value, to_iso(now - FAILURE_WINDOW)],
            ).fetchall()
        return [from_iso(r[0]) for r in rows]

    def clear_failures(self, kind: str, user: str) -> None:
        """A success forgives the account's earlier typos (not the address's)."""
        with transaction(self.db):
            self.db.execute("DELETE FROM login_attempts WHERE kind = ? AND user = ?", [kind, user])
