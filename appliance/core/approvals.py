"""Approvals: a claw asks its admin before a named action and waits for the answer.

A claw's ``request_approval`` tool reaches the host API (``POST
/v1/approvals``), which records a *pending* request here; the admin — for now
root at the host's CLI (``clawden approval approve|deny``); the panel with a
TOTP code comes later — decides it, and the claw's long poll (``POST
/v1/approvals/wait``) sees the decision within a poll interval. A request
nobody decides expires at ``expires_at`` (the claw's timeout, clamped to
10..900 s); expiry happens on read, so no timer thread is needed.

The action and details come from the claw and are untrusted: they are stored
exactly as received (after validation) and escaped wherever they are shown.
``sha256`` pins what the claw asked (its name, the action and the details), so
the operator approves exactly the text that was shown. A row never changes
after its decision.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from appliance.core.errors import InvalidInput, NotFound

MAX_ACTION_CHARS = 100
MAX_DETAILS_CHARS = 4000
MAX_REASON_CHARS = 500
MIN_TIMEOUT_S, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S = 10, 900, 300
# A claw asking faster than its admin can read is refused: the queue is for a
# human, and a runaway loop must not bury the one request that matters.
MAX_PENDING_PER_CLAW = 5
MAX_WAIT_S = 25.0  # one long poll; the guest's HTTP timeout is this plus slack
POLL_S = 0.25
STATUSES = ("pending", "approved", "denied", "expired")
# Text that could rewrite a terminal or read differently from what it is.
_UNPRINTABLE = {"Cc", "Cf", "Zl", "Zp", "Cs"}

Clock = Callable[[], datetime]


def utc_clock() -> datetime:
    return datetime.now(UTC)


def request_hash(claw: str, action: str, details: str) -> str:
    """sha256 of exactly what was asked (a JSON array, so fields cannot blur)."""
    canonical = json.dumps([claw, action, details], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Approval:
    id: str
    claw: str
    action: str
    details: str
    sha256: str
    status: str
    reason: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    # When the panel's inbox first showed it while pending (None: never).
    seen_at: datetime | None = None

    @property
    def unseen_expiry(self) -> bool:
        """It expired before anyone opened the inbox."""
        return self.status == "expired" and self.seen_at is None

    @property
    def pending(self) -> bool:
        return self.status == "pending"


def check_action(action: str) -> str:
    """A short name for what the claw wants to do: one printable line."""
    if not action.strip():
        raise InvalidInput("the approval has no action", "name the action, e.g. 'email.send'")
    if len(action) > MAX_ACTION_CHARS:
        raise InvalidInput(
            f"the action is {len(action)} characters; the limit is {MAX_ACTION_CHARS}",
            "give a short action name and put the rest in the details",
        )
    if any(unicodedata.category(ch) in _UNPRINTABLE for ch in action):
        raise InvalidInput(
            "the action contains a newline or other control character",
            "use one plain line for the action and put the rest in the details",
        )
    return action


def check_details(details: str) -> str:
    if len(details) > MAX_DETAILS_CHARS:
        raise InvalidInput(
            f"the details are {len(details)} characters; the limit is {MAX_DETAILS_CHARS}",
            "say exactly what will be done, more briefly",
        )
    if any(unicodedata.category(ch) == "Cs" for ch in details):
        raise InvalidInput("the details contain invalid Unicode", "send plain UTF-8 text")
    return details


def clamp_timeout(timeout_s: float) -> int:
    return int(min(max(timeout_s, MIN_TIMEOUT_S), MAX_TIMEOUT_S))


def not_found(approval_id: str, claw: str | None) -> NotFound:
    shown = approval_id[:40]
    if claw is not None:
        # A claw learns nothing about another claw's requests, not even that they exist.
        return NotFound(f"you have no approval request {shown!r}", "use the id you were given")
    return NotFound(f"no approval request {shown!r}", "see `clawden approval list --all`")
