"""Typed description of a claw's VM, rendered to libvirt domain XML.

Pure: no libvirt import. The XML is checked against golden files and against
libvirt's schema (``virt-xml-validate``) in the tests.

The XML is built element by element with ``xml.etree`` (as virtinst does) so
every path and name is escaped by the serializer, never spliced into a
template. What is *absent* matters as much as what is present: no
``<interface>``, no graphics, video, sound, USB or host devices — the guest's
only link to the world is one virtio-serial channel. The one device that is
there for the host's sake is a virtio balloon with free page reporting, so an
idle claw gives the RAM its guest freed back to the host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # noqa: S405 - we only build XML, never parse untrusted input
from pathlib import Path

from appliance.core.domain import Accelerator, CpuQuota, DirectKernelBoot, Disk, DomainSpec
from appliance.core.errors import HypervisorError

# TCG's translation cache (QEMU's default is 1 GiB, which a booting guest
# fills), fully resident once the guest has booted: the largest part of a TCG
# claw's overhead. Measured on 2026-11-30 (512 MiB claw, 50 % CPU cap;
# docs/performance.md, "Memory given back"): 16 MiB thrashes —
# boot outlasts systemd's 90 s device timeout and the claw lands in emergency
# mode; 32 MiB holds an idle claw at 259 MiB instead of 295 MiB but its boot
# needs ~27 % more CPU (101.6 vs 80.2 CPU-s to ready), and every later burst
# of work re-translates more too. A TCG host is short of CPU before memory,
# and "answers at once" is the point, so 64 MiB stays. KVM and HVF have no
# translation cache.
TCG_TB_CACHE_MIB = 64


# A CPU model every x86-64 kernel boots on and that TCG emulates fully; `max`
# would enable features (e.g. la57) that only slow TCG down.
TCG_CPU_MODEL = "qemu64"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrib)
    if text is not None:
        child.text = text
    return child


def _os(root: ET.Element, boot: DirectKernelBoot) -> None:
    # Direct kernel boot: no firmware, no bootloader, nothing in the guest
    # image decides what kernel runs — the host picks the verified one.
    os_el = _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    _sub(os_el, "kernel", str(boot.kernel))
    if boot.initrd is not None:
        _sub(os_el, "initrd", str(boot.initrd))
    _sub(os_el, "cmdline", boot.cmdline)


def _cputune(root: ET.Element, quota: CpuQuota | None) -> None:
    # A hard cap (CFS bandwidth, a cgroup per vCPU thread and one for the
    # domain), not a share: a claw stays below it even on an idle host, so no
    # claw can take whole host cores from the host's services and the others.
    # <period>/<quota> limit each vCPU thread — under TCG that thread is where
    # the guest's code is translated and run, so it is what the cap throttles.
    # <global_period>/<global_quota> bound the whole QEMU process (vCPUs plus
    # the emulator thread and I/O workers), so no separate <emulator_quota>.
    if quota is None:
        return
    cputune = _sub(root, "cputune")
    _sub(cputune, "period", str(quota.period_us))
    _sub(cputune, "quota", str(quota.vcpu_quota_us))
    _sub(cputune, "global_period", str(quota.period_us))
    _sub(cputune, "global_quota", str(quota.domain_quota_us))


def _features(root: ET.Element, accelerator: Accelerator) -> None:
    features = _sub(root, "features")
    # ACPI is what makes `virsh shutdown` (the power button) reach the guest.
    _sub(features, "acpi")
    _sub(features, "apic")
    if accelerator is Accelerator.TCG:
        # QEMU's default translation cache under TCG is 1 GiB and fills up
        # during boot: bounding it is most of a claw's host memory overhead.
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", str(TCG_TB_CACHE_MIB), unit="MiB")
    # Not <ps2 state='off'/>: it would drop q35's i8042, but libvirt's test
    # driver (our contract tests) rejects it and the gain is small.


def _cpu(root: ET.Element, accelerator: Accelerator) -> None:
    if accelerator is Accelerator.TCG:
        cpu = _sub(root, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", TCG_CPU_MODEL, fallback="allow")
    else:
        # With hardware virtualisation the host CPU is both fastest and the
        # only model guaranteed to be accepted.
        _sub(root, "cpu", mode="host-passthrough")


def _clock(root: ET.Element, accelerator: Accelerator) -> None:
    clock = _sub(root, "clock", offset="utc")
    # virt-manager's defaults: catch up lost RTC ticks, no HPET.
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    if accelerator is Accelerator.KVM:
        _sub(clock, "timer", name="kvmclock", present="yes")


def _disk(devices: ET.Element, disk: Disk) -> None:
    el = _sub(devices, "disk", type="file", device="disk")
    driver = {"name": "qemu", "type": disk.format.value}
    if not disk.readonly:
        # Let guest TRIM shrink the qcow2 files on the host.
        driver["discard"] = "unmap"
    _sub(el, "driver", **driver)
    _sub(el, "source", file=str(disk.path))
    _sub(el, "target", dev=disk.target, bus="virtio")
    if disk.readonly:
        _sub(el, "readonly")
    if disk.serial is not None:
        _sub(el, "serial", disk.serial)


def _console(devices: ET.Element, console_log: Path) -> None:
    # A pty serial whose output libvirt tees to a file: with virtlogd (the
    # default for qemu:///system and qemu:///session) the file is opened by
    # virtlogd, not QEMU, so it is rotated and needs no permissions for the
    # qemu user; `virsh console` still works for debugging.
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(console_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def _channel(devices: ET.Element, socket: Path, name: str) -> None:
    # The only link: /dev/virtio-ports/<name> in the guest, a unix socket that
    # libvirt binds on the host. No <interface> exists anywhere in the domain.
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "source", mode="bind", path=str(socket))
    _sub(channel, "target", type="virtio", name=name)


def _devices(root: ET.Element, spec: DomainSpec) -> None:
    devices = _sub(root, "devices")
    if spec.emulator is not None:
        _sub(devices, "emulator", spec.emulator)
    for disk in spec.disks:
        _disk(devices, disk)
    # libvirt adds a USB controller to q35 unless told there is none.
    _sub(devices, "controller", type="usb", model="none")
    _console(devices, spec.console_log)
    _channel(devices, spec.control_socket, spec.channel_name)
    # Under TCG, sshd would otherwise wait for boot entropy.
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    # libvirt adds no video without graphics, but say so explicitly.
    video = _sub(devices, "video")
    _sub(video, "model", type="none")
    # Free page reporting: the guest's virtio_balloon driver tells QEMU which
    # 2 MiB blocks (pageblock order) its allocator holds free, and QEMU drops
    # them from its RSS (MADV_DONTNEED). Without it, every page a claw ever
    # touched (a pip install, a big file read through the page cache, a burst
    # of Python) stays resident on the host until the claw stops. The balloon
    # is never inflated: <currentMemory> equals <memory>, so the claw's limit
    # is unchanged; autodeflate only matters if someone shrinks it by hand,
    # and then the guest takes pages back before its OOM killer runs. No
    # stats period: nothing reads the balloon's statistics (the host's
    # figures come from /proc/PID/smaps, appliance/hypervisor/qemu_memory.py).
    _sub(devices, "memballoon", model="virtio", autodeflate="on", freePageReporting="on")


def _validate(spec: DomainSpec) -> None:
    targets = [d.target for d in spec.disks]
    if len(set(targets)) != len(targets):
        raise HypervisorError(
            f"domain {spec.name!r} has two disks on the same target {targets}",
            "give every disk its own target (vda, vdb, ...)",
        )
    if spec.vcpus < 1 or spec.memory_mib < 1:
        raise HypervisorError(
            f"domain {spec.name!r} needs at least 1 vCPU and 1 MiB of memory",
            "fix the claw's --cpus/--memory",
        )
    quota = spec.cpu_quota
    if quota is not None and not (
        1000 <= quota.period_us <= 1_000_000
        and 1000 <= quota.vcpu_quota_us <= quota.domain_quota_us
    ):
        # libvirt's limits: periods 1-1000 ms, quotas at least 1 ms.
        raise HypervisorError(
            f"domain {spec.name!r} has an unusable CPU quota {quota}",
            "set CLAWDEN_CPU_PERCENT between 1 and 100, or 0 for no cap",
        )


def render_domain_xml(spec: DomainSpec) -> str:
    """The libvirt domain XML for ``spec`` (pretty-printed, deterministic)."""
    _validate(spec)
    root = ET.Element("domain", type=spec.accelerator.value)
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")
    _cputune(root, spec.cpu_quota)
    _os(root, spec.boot)
    _features(root, spec.accelerator)
    _cpu(root, spec.accelerator)
    _clock(root, spec.accelerator)
    # A guest that powers off stays off (the controller decides about
    # restarts); a reboot — including `panic=-1` after a kernel panic — restarts.
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    pm = _sub(root, "pm")
    _sub(pm, "suspend-to-mem", enabled="no")
    _sub(pm, "suspend-to-disk", enabled="no")
    _devices(root, spec)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"
