"""Ports: the small interfaces the controller needs from the outside world.

Adapters are named for their technology (``LibvirtHypervisor``); each port has
an honest ``Fake*`` next to its adapter for fast unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from appliance.core.domain import Accelerator, CpuQuota, DomainSpec


class DomainState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    OTHER = "other"


@dataclass(frozen=True)
class AcceleratorChoice:
    accelerator: Accelerator
    note: str  # human-readable: why this one (e.g. "KVM probe hung; using TCG")


class Hypervisor(Protocol):
    """Everything the controller asks of libvirt. Every method is idempotent
    where it can be (undefining a missing domain is not an error), because
    resumable operations may repeat a step after a crash."""

    uri: str

    def ping(self) -> None:
        """Raise ``Unavailable`` with a fix when the hypervisor cannot be reached."""

    def define(self, spec: DomainSpec) -> None:
        """Define (or redefine) a persistent domain from the spec."""

    def start(self, name: str) -> None:
        """Start a defined domain; no-op if it is already running."""

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        """Ask the guest to power off; force it off after ``timeout`` seconds.
        No-op if the domain is not running or not defined."""

    def force_off(self, name: str) -> None:
        """Pull the plug. No-op if not running or not defined."""

    def undefine(self, name: str) -> None:
        """Remove the domain definition. No-op if it is not defined."""

    def rename(self, name: str, new_name: str) -> None:
        """Rename a defined, inactive domain; its UUID, definition and disks
        stay. A no-op when ``name`` is gone and ``new_name`` is defined (the
        rename already happened; callers check the UUID). ``Conflict`` when the
        domain is active or ``new_name`` is taken, ``NotFound`` when neither
        name is defined."""

    def state(self, name: str) -> DomainState | None:
        """The domain's state, or ``None`` when no such domain is defined."""

    def set_live_cpu_cap(self, name: str, quota: CpuQuota | None) -> None:
        """Change a running domain's CPU cap until it stops (``None``: no cap);
        its definition keeps the ``<cputune>`` it was defined with. A no-op
        when the domain is not running."""

    def list_domains(self, prefix: str) -> list[str]:
        """Names of all defined domains starting with ``prefix``."""

    def pid(self, name: str) -> int | None:
        """PID of the QEMU process of a running domain (for resource accounting)."""

    def uuid(self, name: str) -> str | None:
        """The domain's UUID, or ``None`` when no such domain is defined. Each
        installation derives its claws' UUIDs from its home, so the UUID tells
        whose domain a ``clawden-*`` name is."""
