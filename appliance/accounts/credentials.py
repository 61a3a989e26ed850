"""Password hashing (argon2id through argon2-cffi) and recovery codes.

Passwords are slow-hashed, because people choose guessable ones. Recovery
codes and session tokens are random (80 and 256 bits), so SHA-256 is enough
to make a stolen database useless, and lets the store look a code up by its
hash in one atomic UPDATE instead of trying ten slow hashes.
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.core.accounts import RECOVERY_CODES

_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
_CODE_GROUPS, _GROUP_CHARS = 4, 4  # 16 chars of 31: ~79 bits


class Passwords:
    """argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile);
    tests pass a cheaper ``PasswordHasher``. An unknown user is checked
    against the hash of a random string, so the answer's timing does not
    tell which names exist."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None and self._dummy is None:
            self._dummy = self.hasher.hash(secrets.token_hex(16))
        try:
            return self.hasher.verify(password_hash or self._dummy or "", password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``abcd-efgh-jkmn-pqrs``: shown once, stored only as ``code_digest``."""
    return [
        "-".join(
            "".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_CHARS))
            for _ in range(_CODE_GROUPS)
        )
        for _ in range(count)
    ]


def normalise_code(code: str) -> str:
    """What the user typed, as it was printed (case, spaces and dashes forgiven)."""
    flat = "".join(ch for ch in code.lower() if ch.isalnum())
    return "-".join(flat[i : i + _GROUP_CHARS] for i in range(0, len(flat), _GROUP_CHARS))


def code_digest(code: str) -> str:
    return hashlib.sha256(normalise_code(code).encode("ascii", "replace")).hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    return len(normalise_code(code).replace("-", "")) == _CODE_GROUPS * _GROUP_CHARS
