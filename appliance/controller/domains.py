"""Which libvirt domain runs a claw of this installation.

A claw's domain is ``domain_name(settings.installation_tag, claw)``
(``clawden-<tag>-<claw>``). Claws created before installation tags have a
domain called ``clawden-<claw>``; it is still theirs (its UUID is, derived the
same way as ever) until it is renamed. libvirt renames only inactive domains,
so a pre-tag domain that was running at the upgrade keeps its old name — and
keeps running, untouched — until it is next not running: reconcile renames it
then (a crash, a stop), and so do the stop and start operations themselves.
Until then ``find_domain`` resolves the claw to the old name, so drift,
status, the controller's channels and every lifecycle step see the one domain
that really runs the claw.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.controller.context import Context
from appliance.controller.guestfiles import domain_uuid
from appliance.core.model import domain_name, legacy_domain_name
from appliance.core.ports import DomainState

ACTIVE = (DomainState.RUNNING, DomainState.PAUSED)


@dataclass(frozen=True)
class ClawDomain:
    name: str
    state: DomainState | None  # None: no such domain is defined
    legacy: bool  # still under its pre-tag name ``clawden-<claw>`` (and ours)


def find_domain(ctx: Context, claw: str) -> ClawDomain:
    """The domain that runs ``claw``: the tagged name when it is defined;
    otherwise the pre-tag name, but only when that domain's UUID is ours
    (another, older installation on this libvirt may own ``clawden-<claw>``);
    otherwise the tagged name with state ``None``. One libvirt call for a
    claw whose domain is defined under its tagged name."""
    hv = ctx.hypervisor
    name = domain_name(ctx.settings.installation_tag, claw)
    state = hv.state(name)
    if state is not None:
        return ClawDomain(name, state, legacy=False)
    legacy = legacy_domain_name(claw)
    if hv.uuid(legacy) == domain_uuid(ctx.settings, claw):
        legacy_state = hv.state(legacy)
        if legacy_state is not None:
            return ClawDomain(legacy, legacy_state, legacy=True)
    return ClawDomain(name, None, legacy=False)


def rename_legacy_domain(ctx: Context, claw: str) -> str | None:
    """Give ``claw``'s pre-tag domain its tagged name when it is ours and not
    running; audit ``claw.domain_renamed``. Its UUID, definition and disks
    stay as they are. Returns the new name, or ``None`` when there was
    nothing to rename now (no such domain, not ours, or running)."""
    hv = ctx.hypervisor
    legacy = legacy_domain_name(claw)
    if hv.uuid(legacy) != domain_uuid(ctx.settings, claw):
        return None
    if hv.state(legacy) in ACTIVE:
        return None  # libvirt cannot rename it now: at its next stop or start
    new = domain_name(ctx.settings.installation_tag, claw)
    hv.rename(legacy, new)
    ctx.audit.append(ctx.actor, "claw.domain_renamed", claw, {"from": legacy, "to": new})
    return new
