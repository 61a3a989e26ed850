"""The one exception type the CLI turns into a one-line, actionable message.

Every error a user can meet says *what* went wrong and *what to do*; it never
carries a secret (keys, tokens) because it may end up on a screen or a log.
"""

from __future__ import annotations


class ClawdenError(Exception):
    """An expected failure with a fix the operator can apply."""

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class NotFound(ClawdenError):
    exit_code = 2


class InvalidInput(ClawdenError):
    exit_code = 2


class Conflict(ClawdenError):
    exit_code = 3


class OverQuota(ClawdenError):
    """A claw asked for more than its quota allows (``appliance.core.quotas``);
    ``retry_after_s`` is how long until asking again can succeed, and
    ``quota`` names the limit (``messages.rate``, ``approvals.per_hour``, …)."""

    exit_code = 3

    def __init__(self, what: str, fix: str, *, quota: str, retry_after_s: int) -> None:
        super().__init__(what, fix)
        self.quota = quota
        self.retry_after_s = max(1, int(retry_after_s))


class Unavailable(ClawdenError):
    """A dependency (libvirtd, the controller, a VM's channel) is not reachable."""

    exit_code = 4


class IntegrityError(ClawdenError):
    """Something that must not change did (golden image, pinned host key, audit chain)."""

    exit_code = 5


class HypervisorError(ClawdenError):
    """libvirt or QEMU refused an operation on a reachable hypervisor (a bad
    definition, QEMU failing to start, a name clash). Distinct from
    ``Unavailable``, which means libvirt itself cannot be reached."""
