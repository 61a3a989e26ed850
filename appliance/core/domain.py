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
    initrd: Path
    cmdline: str


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
