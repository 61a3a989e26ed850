"""Bring libvirt and the disk back in line with what the store says.

Run by ``clawden reconcile`` and at every controller start, then periodically
by the controller. Three passes, in this order:

1. unfinished operations whose owner process is gone are resumed (and a
   failing create is rolled back) — so a CLI killed half-way never leaves a
   half-made claw;
2. drift: a claw that should run but does not is started again (a crashed
   guest comes back); one that should be stopped but runs is shut down;
3. orphans: ``clawden-*`` domains and claw directories that no claw and no
   operation accounts for are removed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from appliance.controller.context import Context, Progress, silent
from appliance.controller.lifecycle import Lifecycle
from appliance.core.model import DOMAIN_PREFIX, ClawState, domain_name
from appliance.core.ports import DomainState
from appliance.errors import ClawdenError


@dataclass
class ReconcileReport:
    resumed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.resumed or self.restarted or self.stopped or self.orphans_removed)


def reconcile(ctx: Context, progress: Progress = silent) -> ReconcileReport:
    report = ReconcileReport()
    ctx.hypervisor.ping()
    lifecycle = Lifecycle(ctx)
    _resume_operations(ctx, lifecycle, report, progress)
    _fix_drift(ctx, lifecycle, report, progress)
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
    ctx: Context, lifecycle: Lifecycle, report: ReconcileReport, progress: Progress
) -> None:
    for claw in ctx.claws.list():
        if ctx.ops.running_for(claw.name) is not None:
            continue  # someone is changing it right now
        state = ctx.hypervisor.state(domain_name(claw.name))
        try:
            if claw.state is ClawState.RUNNING and state not in (
                DomainState.RUNNING,
                DomainState.PAUSED,
            ):
                progress(f"{claw.name} should be running but is {state or 'undefined'}; starting")
                lifecycle.start(claw.name, progress)
                report.restarted.append(claw.name)
            elif claw.state is ClawState.STOPPED and state is DomainState.RUNNING:
                progress(f"{claw.name} should be stopped but is running; shutting down")
                lifecycle.stop(claw.name, progress)
                report.stopped.append(claw.name)
        except ClawdenError as exc:
            report.errors.append(f"{claw.name}: {exc}")


def _remove_orphans(ctx: Context, report: ReconcileReport, progress: Progress) -> None:
    known = {c.name for c in ctx.claws.list()}
    busy = {op.claw for op in ctx.ops.unfinished()}
    for dom in ctx.hypervisor.list_domains(DOMAIN_PREFIX):
        claw = dom[len(DOMAIN_PREFIX) :]
        if claw in known or claw in busy:
            continue
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
        progress(f"removing orphaned files {path}")
        shutil.rmtree(path, ignore_errors=True)
        report.orphans_removed.append(str(path))
        ctx.audit.append(ctx.actor, "reconcile.orphan_removed", path.name, {"path": str(path)})
