"""A claw boots without its CPU cap, and gets it back once it is ready.

Why: the per-claw cap (``<cputune>``, 50 % of a core per vCPU by default)
answers "one claw takes a whole core from the others" — a claw at work. A
boot under TCG is nothing but CPU, so the cap doubled every create and start
(measured: docs/performance.md "A lean boot"). During a boot the guest runs
only the image's own units: the agent takes no delivery and no host command
runs until the channel is up.

So the controller lifts the live cap when it first sees a claw running (a new
channel connection: a start, or the controller's own restart) and puts the
defined cap back when that channel is first ready, or after ``MAX_BURST_S``
if it never gets there, so a guest that never answers cannot keep a core.
The domain's definition always holds the cap: if the controller dies
mid-burst, the next boot starts capped, and the next controller's first
channel to the claw ends the burst it begins.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from appliance.controller.context import Context
from appliance.controller.domains import find_domain
from appliance.core.domain import cpu_quota
from appliance.core.errors import ClawdenError
from appliance.core.ports import DomainState

log = logging.getLogger(__name__)

MAX_BURST_S = 120.0


class BootBurst:
    """Which claws run uncapped right now, and since when (monotonic)."""

    def __init__(
        self,
        ctx: Context,
        clock: Callable[[], float] = time.monotonic,
        max_burst_s: float = MAX_BURST_S,
        report: Callable[[str], None] = log.info,
    ) -> None:
        self._ctx = ctx
        self._report = report
        self._clock = clock
        self._max = max_burst_s
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def uncapped(self) -> list[str]:
        with self._lock:
            return sorted(self._since)

    def begin(self, claw: str) -> None:
        """Lift the cap of a claw that is booting (no-op without a cap)."""
        if self._ctx.settings.cpu_percent == 0:
            return
        if self._apply(claw, capped=False):
            with self._lock:
                self._since[claw] = self._clock()
            self._report(f"{claw}: CPU cap lifted while it boots")

    def end(self, claw: str) -> None:
        """Put the defined cap back, if this controller lifted it."""
        with self._lock:
            since = self._since.pop(claw, None)
        if since is not None and self._apply(claw, capped=True):
            self._report(f"{claw}: CPU cap back after {self._clock() - since:.1f} s")

    def end_overdue(self) -> None:
        """Cap every claw whose burst has lasted ``max_burst_s``."""
        now = self._clock()
        with self._lock:
            overdue = [c for c, since in self._since.items() if now - since >= self._max]
        for claw in overdue:
            self._report(f"{claw}: not ready {self._max:.0f} s after boot; capping it")
            self.end(claw)

    def _apply(self, claw: str, capped: bool) -> bool:
        # Runs on channel and main-loop threads: a failure is logged, never
        # raised into the channel's supervisor.
        try:
            record = self._ctx.claws.get(claw)
            domain = find_domain(self._ctx, claw)
            if record is None or domain.state not in (DomainState.RUNNING, DomainState.PAUSED):
                return False
            quota = cpu_quota(record.vcpus, self._ctx.settings.cpu_percent) if capped else None
            self._ctx.hypervisor.set_live_cpu_cap(domain.name, quota)
            return True
        except ClawdenError as exc:
            log.warning("%s: cannot %s its CPU cap: %s", claw, "restore" if capped else "lift", exc)
            return False
