"""TOTP (RFC 6238) through pyotp, reporting *which* time step a code matched.

pyotp's ``verify`` answers yes or no, which cannot stop a replay: the caller
needs the step, to consume it once in the store
(``UserRepository.consume_step``). A code is accepted for the current step
and one either side (±30 s of clock drift), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pyotp

ISSUER = "clawden"
DIGITS = 6
INTERVAL_S = 30
WINDOW = 1  # steps either side


def new_secret() -> str:
    """160 random bits, base32 (RFC 4226's recommended length)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, user: str) -> str:
    """``otpauth://totp/clawden:NAME?secret=…&issuer=clawden``: a secret itself."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_S).provisioning_uri(
        name=user, issuer_name=ISSUER
    )


def matching_step(
    secret: str,
    code: str,
    now: datetime,
    *,
    digits: int = DIGITS,
    digest: Callable[..., Any] = hashlib.sha1,
    interval: int = INTERVAL_S,
) -> int | None:
    """The time step ``code`` is valid for at ``now`` (±``WINDOW``), or None."""
    code = code.strip()
    if len(code) != digits or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=digits, digest=digest, interval=interval)
    current = step_at(now, interval)
    for step in range(max(0, current - WINDOW), current + WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def code_at(secret: str, now: datetime) -> str:
    """The code an authenticator shows at ``now`` (for enrolment tests and tools)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_S).generate_otp(step_at(now))


def step_at(now: datetime, interval: int = INTERVAL_S) -> int:
    # Our own arithmetic on the epoch: pyotp's timecode() goes through
    # local time for naive datetimes.
    return int(now.timestamp()) // interval
