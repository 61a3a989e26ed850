"""The one-time setup link: who may create the first admin account.

Until an admin exists, ``clawden serve`` mints a random token, keeps only
its digest in ``CLAWDEN_HOME/panel/setup-token`` (0600) and prints the link
to the terminal that started it. Whoever holds the link creates the admin;
the token is then deleted, so nobody else on the LAN can claim the home
first, and the link is dead once used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def _path(home: Path) -> Path:
    return home / "panel" / "setup-token"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint(home: Path) -> str:
    """A new setup token (any earlier one stops working)."""
    path = _path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_digest(token) + "\n")
    return token


def matches(home: Path, token: str) -> bool:
    try:
        stored = _path(home).read_text().strip()
    except FileNotFoundError:
        return False
    return bool(stored) and hmac.compare_digest(stored, _digest(token))


def spend(home: Path) -> None:
    _path(home).unlink(missing_ok=True)
