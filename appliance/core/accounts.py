"""Family accounts: who may log in, what each may see, and when logins stop.

An *admin* (a parent) sees every claw and is the only one who decides
approvals, with a fresh TOTP code. A *member* owns one or more claws (linked
explicitly with ``clawden user add NAME --member-of CLAW``; a claw's
free-text ``member`` stays a display name and is never matched against
account names, since "Alice" and "alice" are not an identity) and sees those
claws only.

Login limiting is a pure rule over recent failures: the store counts them,
this decides. A locked account is refused *before* its password is checked,
so a locked-out guesser learns nothing from the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.core.errors import ClawdenError, InvalidInput, NotFound

ADMIN, MEMBER = "admin", "member"
ROLES = (ADMIN, MEMBER)
# Who decided: root at the host's terminal owns the host and needs no TOTP;
# everyone else is an account, named in every decision and audit entry.
ROOT_CLI_ACTOR = "root@cli"

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 would hash a megabyte; nobody types one
SESSION_TTL = timedelta(hours=12)
RECOVERY_CODES = 10

# Per account: a few typos are fine, a guesser is stopped for a while. Per
# address: one machine trying many accounts is stopped too.
FAILURE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
LOCKOUT = timedelta(minutes=15)

_USER_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")


class Forbidden(ClawdenError):
    """The account exists but may not do this (a member deciding approvals)."""

    exit_code = 3


@dataclass(frozen=True)
class User:
    name: str
    role: str
    claws: tuple[str, ...]
    totp_active: bool
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def actor(self) -> str:
        return user_actor(self.name)


def user_actor(name: str) -> str:
    return f"user:{name}"


def validate_user_name(name: str) -> str:
    if not _USER_RE.match(name):
        raise InvalidInput(
            f"invalid user name {name!r}",
            "use 1-24 characters: lowercase letters, digits and '-', starting with a letter "
            "(e.g. 'mum' or 'kid-2')",
        )
    return name


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"invalid role {role!r}", "use 'admin' or 'member'")
    return role


def check_password(password: str) -> str:
    """Length only (NIST 800-63B): composition rules make worse passwords.
    The message never repeats the password."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput(
            f"the password is {len(password)} characters; at least {MIN_PASSWORD_CHARS} needed",
            "choose a longer one (a few words make a good one)",
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput(
            f"the password is longer than {MAX_PASSWORD_CHARS} characters",
            "choose a shorter one",
        )
    if "\n" in password or "\r" in password or "\x00" in password:
        raise InvalidInput(
            "the password contains a line break or NUL", "use one line without control characters"
        )
    return password


def may_see_claw(user: User, claw: str) -> bool:
    return user.is_admin or claw in user.claws


def check_may_decide(user: User) -> None:
    if not user.is_admin:
        raise Forbidden(
            f"{user.name} is a member; only an admin decides approvals",
            "ask an admin to decide it",
        )


def unknown_claw_for(user: User, claw: str) -> NotFound:
    # A member learns nothing about another member's claw, not even that it exists.
    return NotFound(f"you have no claw {claw[:40]!r}", "pick one of your own claws")


def locked_until(failures: list[datetime], limit: int, now: datetime) -> datetime | None:
    """When a lockout ends, if ``failures`` (times of recent failed attempts,
    any order) hold ``limit`` or more inside the window ending now."""
    recent = sorted(t for t in failures if now - t < FAILURE_WINDOW)
    if len(recent) < limit:
        return None
    until = recent[-1] + LOCKOUT
    return until if until > now else None


def refuse_while_locked(what: str, until: datetime) -> ClawdenError:
    return Forbidden(
        f"{what} is locked after too many failed attempts",
        f"wait until {until.strftime('%H:%M')} UTC and try again",
    )
