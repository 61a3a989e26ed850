"""What the controller's use cases need, bundled once by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Settings
from appliance.core.ports import AcceleratorChoice, Hypervisor
from appliance.store import AuditLog, ClawRepository, KeyRepository, OperationLog, Store

Progress = Callable[[str], None]
# Picks the accelerator for new domains; probing starts a VM, so the real
# implementation caches its verdict.
AcceleratorPicker = Callable[[], AcceleratorChoice]


def silent(_: str) -> None:
    """A progress sink for callers that do not show progress."""


@dataclass
class Context:
    settings: Settings
    store: Store
    hypervisor: Hypervisor
    pick_accelerator: AcceleratorPicker
    actor: str = "cli"

    # The repositories the lifecycle uses on almost every line, by their
    # short names; everything else is ``ctx.store.<table>``.
    @property
    def claws(self) -> ClawRepository:
        return self.store.claws

    @property
    def keys(self) -> KeyRepository:
        return self.store.keys

    @property
    def ops(self) -> OperationLog:
        return self.store.ops

    @property
    def audit(self) -> AuditLog:
        return self.store.audit
