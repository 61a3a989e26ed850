"""A claw VM as typed values: what the hypervisor adapter renders to libvirt
domain XML (``appliance.hypervisor.domain``). Pure: no libvirt, no XML here."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

CONTROL_CHANNEL_NAME = "org.clawden.control"


class Accelerator(StrEnum):
    KVM = "kvm"  # libvirt <domain type='kvm'>
    HVF = "hvf"  # macOS Hypervisor.framework
    TCG = "qemu"  # plain emulation, libvirt <domain type='qemu'>


class DiskFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


@dataclass(frozen=True)
class Disk:
    path: Path
    target: str  # vda, vdb, ...
    format: DiskFormat
    readonly: bool = False
    serial: str | None = None  # shows up as /dev/disk/by-id/virtio-<serial> in the guest


@dataclass(frozen=True)
class DirectKernelBoot:
    kernel: Path
    initrd: Path | None  # None: no initramfs (the accelerator probe's image)
    cmdline: str


# CFS bandwidth period (libvirt's and the kernel's default): 100 ms, short
# enough that a throttled claw still answers its channel's keepalives promptly.
CPU_PERIOD_US = 100_000
# Default cap per vCPU, in percent of one host core (see docs/hypervisor.md,
# "CPU quota"): a runaway claw leaves at least half of every core it runs on
# to the host's services and the other claws.
DEFAULT_CPU_PERCENT = 50
MAX_CPU_PERCENT = 100


@dataclass(frozen=True)
class CpuQuota:
    """A hard CPU cap for a claw, rendered as libvirt ``<cputune>``.

    Each vCPU thread may run ``vcpu_quota_us`` out of every ``period_us``
    (``<period>``/``<quota>``, which libvirt applies per vCPU), and the whole
    QEMU process — vCPU threads, emulator thread and I/O workers together —
    ``domain_quota_us`` (``<global_period>``/``<global_quota>``).
    """

    period_us: int
    vcpu_quota_us: int
    domain_quota_us: int


def cpu_quota(vcpus: int, percent: int) -> CpuQuota | None:
    """``percent`` of one host core for each of ``vcpus``; 0 means no cap.

    A claw with 2 vCPUs at 50 % may use one host core in total, at most half
    of one on each vCPU. ``percent`` is 1–100: a vCPU thread cannot use more
    than one core, and 1 % (1 ms of every 100 ms) is libvirt's smallest quota.
    """
    if percent == 0:
        return None
    if not 1 <= percent <= MAX_CPU_PERCENT:
        raise ValueError(f"CPU percent {percent} is outside 0-{MAX_CPU_PERCENT}")
    if vcpus < 1:
        raise ValueError(f"a claw needs at least 1 vCPU, not {vcpus}")
    per_vcpu = CPU_PERIOD_US * percent // 100
    return CpuQuota(CPU_PERIOD_US, per_vcpu, per_vcpu * vcpus)


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    vcpus: int
    memory_mib: int
    accelerator: Accelerator
    boot: DirectKernelBoot
    disks: tuple[Disk, ...]
    control_socket: Path  # host end of the one virtio-serial channel
    console_log: Path  # serial console, appended across boots
    channel_name: str = CONTROL_CHANNEL_NAME
    emulator: str | None = None  # None = libvirt's default for the arch
    cpu_quota: CpuQuota | None = None  # None = no cap (libvirt without cgroups)
