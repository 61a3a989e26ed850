"""The composition root: the one place adapters are chosen and wired together."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database

from appliance.channel.egress_stub import egress_stub_service
from appliance.channel.hostapi import host_api_service
from appliance.channel.services import ServiceRegistry
from appliance.config import Settings
from appliance.controller.context import AcceleratorPicker, Context
from appliance.core.ports import AcceleratorChoice
from appliance.hypervisor.accel import choose_accelerator
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.llm.gateway import llm_gateway_service
from appliance.store import open_db
from appliance.store.audit import AuditLog


def accelerator_picker(settings: Settings) -> AcceleratorPicker:
    def pick(kernel: Path, initrd: Path) -> AcceleratorChoice:
        return choose_accelerator(
            settings.libvirt_uri,
            kernel,
            initrd,
            workdir=settings.run_dir / "accel-probe",
            cache_file=settings.home / "accelerator.json",
        )

    return pick


def build_context(settings: Settings | None = None, actor: str = "cli") -> Context:
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    return Context(
        settings=settings,
        db=open_db(settings.db_path),
        hypervisor=LibvirtHypervisor(settings.libvirt_uri),
        pick_accelerator=accelerator_picker(settings),
        actor=actor,
    )


def service_registry(settings: Settings, db: Database) -> ServiceRegistry:
    """Every host service a claw can reach through its channel: the host API
    (7701) on ``db``, the controller's store; the LLM gateway (7702), which
    opens its own connection and reads ``llm.toml`` per call, so a missing
    upstream is an OpenAI-shaped 503 to the claw, never a failed start; and
    the egress stub (7703), which refuses until the egress proxy exists."""
    return ServiceRegistry(
        [
            # The claws' approval requests are audited with the head file, as
            # every other append is, so `audit verify` keeps passing.
            host_api_service(db, AuditLog(db, head_file=settings.audit_head_path)),
            llm_gateway_service(settings),
            egress_stub_service(),
        ]
    )
