"""Bring libvirt and the disk back in line with what the store says.

Run by ``clawden reconcile`` and at every controller start, then periodically
by the controller. Four passes, in this order:

1. unfinished operations whose owner process is gone are resumed (and a
   failing create is rolled back) — so a CLI killed half-way never leaves a
   half-made claw;
2. renames: a claw's domain from before installation tags (``clawden-<claw>``,
   with our UUID) gets its tagged name ``clawden-<tag>-<claw>`` once it is not
   running (audited ``claw.domain_renamed``); a running one is left running
   under its old name (see ``controller/domains.py``);
3. drift: a claw that should run but does not is started again (a crashed
   guest comes back); one that should be stopped but runs is shut down;
4. orphans: this installation's domains (``clawden-<tag>-*``, and pre-tag
   ``clawden-*`` ones, each only if its UUID is ours) that no claw and no
   operation accounts for are removed; claw directories nobody accounts for
   are *moved aside* to ``$CLAWDEN_HOME/orphans/`` — they may hold a data disk
   (say, after an older database was restored), and only an explicit destroy
   deletes data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from appliance.controller.context import Context, Progress, silent
from appliance.controller.domains import find_domain, rename_legacy_domain
from appliance.controller.guestfiles import domain_uuid
from appliance.controller.lifecycle import Lifecycle
from appliance.core.errors import ClawdenError
from appliance.core.model import (
    DOMAIN_PREFIX,
    ClawState,
    domain_prefix,
    is_claw_name,
    legacy_domain_name,
)
from appliance.core.ports import DomainState


@dataclass
class ReconcileReport:
    resumed: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.resumed or self.renamed or self.restarted or self.stopped or self.orphans_removed
        )


class RetryGate:
    """Spaces out automatic restarts of a claw that keeps failing to start
    (30 s, doubling, at most every 30 min), so a broken claw does not retry —
    and write to the audit log — every reconcile pass."""

    def __init__(
        self, first: float = 30.0, cap: float = 1800.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._first, self._cap, self._clock = first, cap, clock
        self._next: dict[str, tuple[float, float]] = {}  # claw -> (not before, delay)

    def allowed(self, claw: str) -> bool:
        entry = self._next.get(claw)
        return entry is None or self._clock() >= entry[0]

    def failed(self, claw: str) -> None:
        delay = min(self._next.get(claw, (0.0, self._first / 2))[1] * 2, self._cap)
        self._next[claw] = (self._clock() + delay, delay)

    def succeeded(self, claw: str) -> None:
        self._next.pop(claw, None)


def reconcile(
    ctx: Context, progress: Progress = silent, gate: RetryGate | None = None
) -> ReconcileReport:
    report = ReconcileReport()
    ctx.hypervisor.ping()
    lifecycle = Lifecycle(ctx)
    _resume_operations(ctx, lifecycle, report, progress)
    _rename_legacy_domains(ctx, report, progress)
    _fix_drift(ctx, lifecycle, report, progress, gate or RetryGate(first=0.0))
    _remove_orphans(ctx, report, progress)
    return report


def _resume_operations(
    ctx: Context, lifecycle: Lifecycle, report: ReconcileReport, progress: Progress
) -> None:
    for op in ctx.ops.unfinished():
        if not ctx.ops.claim(op.id, os.getpid()):
            continue  # its owner is alive and still working on it
        claimed = ctx.ops.get(op.id)
        if claimed is None:
            continue
        progress(f"resuming {op.kind} of {op.claw} at step {op.step}")
        label = f"{op.kind} {op.claw} (#{op.id})"
        try:
            lifecycle.run(claimed, progress)
        except ClawdenError as exc:
            report.errors.append(f"{label}: {exc}")
        except Exception as exc:  # noqa: BLE001 — keep reconciling the others
            report.errors.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            report.resumed.append(label)
            details = {"op": op.id, "kind": op.kind}
            ctx.audit.append(ctx.actor, "reconcile.resumed", op.claw, details)


def _fix_drift(
    ctx: Context,
    lifecycle: Lifecycle,
    report: ReconcileReport,
    progress: Progress,
    gate: RetryGate,
) -> None:
    for claw in ctx.claws.list():
        if ctx.ops.running_for(claw.name) is not None or not gate.allowed(claw.name):
            continue  # someone is changing it right now, or it failed recently
        state = find_domain(ctx, claw.name).state
        try:
            if claw.state is ClawState.RUNNING and state not in (
                DomainState.RUNNING,
                DomainState.PAUSED,
            ):
                progress(f"{claw.name} should be running but is {state or 'undefined'}; starting")
                lifecycle.start(claw.name, progress)
                report.restarted.append(claw.name)
                gate.succeeded(claw.name)
            elif claw.state is ClawState.STOPPED and state is DomainState.RUNNING:
                progress(f"{claw.name} should be stopped but is running; shutting down")
                lifecycle.stop(claw.name, progress)
                report.stopped.append(claw.name)
        except ClawdenError as exc:
            gate.failed(claw.name)
            report.errors.append(f"{claw.name}: {exc}")


def _rename_legacy_domains(ctx: Context, report: ReconcileReport, progress: Progress) -> None:
    """Pass 2: one listing; only claws with a ``clawden-<claw>`` domain cost more."""
    present = set(ctx.hypervisor.list_domains(DOMAIN_PREFIX))
    for claw in ctx.claws.list():
        legacy = legacy_domain_name(claw.name)
        if legacy not in present or ctx.ops.running_for(claw.name) is not None:
            continue  # nothing to rename, or its operation renames it
        try:
            new = rename_legacy_domain(ctx, claw.name)
        except ClawdenError as exc:
            report.errors.append(f"{claw.name}: renaming domain {legacy}: {exc}")
            continue
        if new is not None:
            progress(f"renamed {claw.name}'s domain {legacy} to {new}")
            report.renamed.append(claw.name)


def _claw_names(ctx: Context, dom: str) -> list[str]:
    """The claws of ours ``dom`` could be the domain of, going by its name:
    ``clawden-<tag>-<claw>`` with our tag, or (from before tags)
    ``clawden-<claw>``. Only its UUID says whether it really is ours."""
    names = []
    ours = domain_prefix(ctx.settings.installation_tag)
    if dom.startswith(ours):
        names.append(dom[len(ours) :])
    names.append(dom[len(DOMAIN_PREFIX) :])
    return [n for n in names if is_claw_name(n)]


def _remove_orphans(ctx: Context, report: ReconcileReport, progress: Progress) -> None:
    known = {c.name for c in ctx.claws.list()}
    busy = {op.claw for op in ctx.ops.unfinished()}
    for dom in ctx.hypervisor.list_domains(DOMAIN_PREFIX):
        names = _claw_names(ctx, dom)
        if not names or any(n in known or n in busy for n in names):
            continue  # accounted for (when in doubt, kept)
        found = ctx.hypervisor.uuid(dom)
        claw = next((n for n in names if found == domain_uuid(ctx.settings, n)), None)
        if claw is None:
            continue  # another installation's claw on the same libvirt: not ours
        progress(f"removing orphaned domain {dom}")
        ctx.hypervisor.force_off(dom)
        ctx.hypervisor.undefine(dom)
        report.orphans_removed.append(dom)
        ctx.audit.append(ctx.actor, "reconcile.orphan_removed", claw, {"domain": dom})
    if not ctx.settings.claws_dir.is_dir():
        return
    for path in sorted(ctx.settings.claws_dir.iterdir()):
        if path.name in known or path.name in busy or not path.is_dir():
            continue
        aside = ctx.settings.home / "orphans" / f"{path.name}-{_stamp()}"
        progress(f"moving unaccounted-for files {path} to {aside}")
        aside.parent.mkdir(mode=0o700, exist_ok=True)
        path.rename(aside)
        report.orphans_removed.append(str(path))
        details = {"path": str(path), "moved_to": str(aside)}
        ctx.audit.append(ctx.actor, "reconcile.orphan_moved", path.name, details)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
