"""What the controller's use cases need, bundled once by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from appliance.config import Settings
from appliance.core.ports import AcceleratorChoice, Hypervisor
from appliance.store import AuditLog, ClawRepository, KeyRepository, OperationLog

Progress = Callable[[str], None]
# Picks the accelerator for new domains, given the golden kernel and initrd;
# probing boots a VM, so the real implementation caches its verdict.
AcceleratorPicker = Callable[[Path, Path], AcceleratorChoice]


def silent(_: str) -> None:
    """A progress sink for callers that do not show progress."""


@dataclass
class Context:
    settings: Settings
    db: Database
    hypervisor: Hypervisor
    pick_accelerator: AcceleratorPicker
    actor: str = "cli"

    def __post_init__(self) -> None:
        self.claws = ClawRepository(self.db)
        self.keys = KeyRepository(self.db)
        self.ops = OperationLog(self.db)
        self.audit = AuditLog(self.db, head_file=self.settings.audit_head_path)
