"""The audit chain's verification as the audit page shows it.

Verifying is a full pass over the log under the store's write lock: about
2.3 s for 100k rows on the development machine (measured with
``AuditLog.verify`` on a filled store), too slow for every page view. So a
small log (up to ``AUTO_VERIFY_ROWS``) is re-verified on every view, and a
bigger one shows the last result — when it was taken and how many rows it
covered — with a button to verify again. A cached "ok" is never presented
as current: tampering with old rows does not change the last seq, so only a
new pass can tell.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

from appliance.core.approvals import Clock
from appliance.store import AuditLog, AuditVerification

AUTO_VERIFY_ROWS = 20_000


@dataclass(frozen=True)
class CheckedChain:
    verification: AuditVerification
    at: datetime
    seconds: float


class AuditCheck:
    def __init__(self) -> None:
        self._last: CheckedChain | None = None
        # One pass at a time: a second click waits for the first's answer.
        self._lock = threading.Lock()

    def last(self) -> CheckedChain | None:
        return self._last

    def run(self, audit: AuditLog, clock: Clock) -> CheckedChain:
        with self._lock:
            started = time.monotonic()
            verification = audit.verify()
            self._last = CheckedChain(verification, clock(), time.monotonic() - started)
            return self._last

    def for_page(self, audit: AuditLog, clock: Clock) -> CheckedChain | None:
        """A fresh pass for a small log, else the last one (None: not yet)."""
        if audit.last_seq() <= AUTO_VERIFY_ROWS:
            return self.run(audit, clock)
        return self._last
