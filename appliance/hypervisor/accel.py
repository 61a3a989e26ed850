"""Choose KVM, HVF or TCG by *booting*, not by looking for /dev/kvm.

A /dev/kvm that exists is not a KVM that works: under nested virtualisation
QEMU may abort (``-cpu host`` on an unknown MSR) or hang in the guest's
first instructions. So when hardware acceleration is plausible we boot the
real kernel in a tiny transient domain with an init that does not exist; the
kernel gets through its whole boot, fails to find init and panics, printing
"Kernel panic" on the serial console. If that line shows up within a bounded
time the accelerator works; anything else (an error, QEMU exiting, a hang)
means TCG, with a note saying why. The outcome is cached per host kernel,
QEMU and libvirt version, so the probe runs once per upgrade.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import time
import uuid
import xml.etree.ElementTree as ET  # noqa: S405 - parses libvirt's own capabilities XML
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.core.domain import Accelerator, DirectKernelBoot, DomainSpec
from appliance.core.errors import HypervisorError, InvalidInput
from appliance.core.ports import AcceleratorChoice
from appliance.hypervisor.domain import render_domain_xml
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor

ENV_OVERRIDE = "CLAWDEN_ACCEL"
PROBE_TIMEOUT = 20.0
# Not "clawden-": that prefix is the controller's, and reconcile would treat a
# probe domain as an orphan claw.
PROBE_PREFIX = "clawdenprobe-"
# rdinit points nowhere, there is no root=: the kernel finishes booting and
# panics; panic=-1 reboots at once, which the probe domain turns into an exit.
PROBE_CMDLINE = "console=ttyS0 panic=-1 rdinit=/clawden-probe-no-such-init loglevel=4"
# Lines the kernel prints only after it has booted all the way.
PROBE_MARKERS = ("Kernel panic", "Run /", "Failed to execute")
_POLL = 0.25


def _override(env: Mapping[str, str]) -> AcceleratorChoice | None:
    value = env.get(ENV_OVERRIDE, "").strip().lower()
    if not value:
        return None
    if value == "tcg":
        value = Accelerator.TCG.value
    try:
        accel = Accelerator(value)
    except ValueError:
        raise InvalidInput(
            f"{ENV_OVERRIDE}={value!r} is not an accelerator",
            f"set {ENV_OVERRIDE} to kvm, hvf or qemu (or unset it to probe)",
        ) from None
    return AcceleratorChoice(accel, f"{ENV_OVERRIDE}={accel.value} is set; not probing")


def _candidate(system: str, kvm_device: Path) -> tuple[Accelerator | None, str]:
    """The hardware accelerator worth probing on this host, or why there is none."""
    if system == "Linux":
        if kvm_device.exists():
            return Accelerator.KVM, ""
        return None, f"no {kvm_device} (no hardware virtualisation); using TCG — VMs will be slower"
    if system == "Darwin":
        return Accelerator.HVF, ""
    return None, f"no hardware accelerator known for {system}; using TCG — VMs will be slower"


def offered_domain_types(capabilities_xml: str, arch: str = "x86_64") -> set[str]:
    """The ``<domain type=...>`` values libvirt offers for guests of ``arch``."""
    root = ET.fromstring(capabilities_xml)  # noqa: S314 - libvirt's own output
    return {
        str(dom.get("type"))
        for guest in root.iter("guest")
        for arch_el in guest.iter("arch")
        if arch_el.get("name") == arch
        for dom in arch_el.iter("domain")
    }


def probe_spec(accel: Accelerator, kernel: Path, initrd: Path, workdir: Path) -> DomainSpec:
    token = secrets.token_hex(4)
    return DomainSpec(
        name=f"{PROBE_PREFIX}{token}",
        uuid=str(uuid.uuid4()),
        vcpus=1,
        memory_mib=256,
        accelerator=accel,
        boot=DirectKernelBoot(kernel=kernel, initrd=initrd, cmdline=PROBE_CMDLINE),
        disks=(),
        control_socket=workdir / f"probe-{token}.sock",
        console_log=workdir / f"probe-{token}.log",
    )


def probe_xml(spec: DomainSpec) -> str:
    """The claw XML with one change: a reboot (the panic) ends the domain."""
    root = ET.fromstring(render_domain_xml(spec))  # noqa: S314 - our own output
    on_reboot = root.find("on_reboot")
    assert on_reboot is not None  # render_domain_xml always writes it
    on_reboot.text = "destroy"
    return ET.tostring(root, encoding="unicode")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""  # virtlogd has not created it yet


def probe_boot(
    hv: LibvirtHypervisor,
    accel: Accelerator,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    timeout: float = PROBE_TIMEOUT,
) -> str | None:
    """Boot the kernel under ``accel``; ``None`` if it booted, else the reason.

    Never leaves a domain behind: it is transient and destroyed on every path.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o711)  # QEMU runs as another user under qemu:///system
    spec = probe_spec(accel, kernel, initrd, workdir)
    try:
        try:
            hv.create_transient(probe_xml(spec))
        except HypervisorError as exc:  # not Unavailable: that is no verdict on KVM
            return f"QEMU refused to start a {accel.value} domain ({exc.what})"
        deadline = time.monotonic() + timeout
        while True:
            if any(m in _read(spec.console_log) for m in PROBE_MARKERS):
                return None
            if hv.state(spec.name) is None:
                # Gone: read once more in case virtlogd flushed late.
                if any(m in _read(spec.console_log) for m in PROBE_MARKERS):
                    return None
                return "QEMU stopped before the test kernel finished booting"
            if time.monotonic() >= deadline:
                return f"a test boot did not finish in {timeout:g} s (nested virtualisation?)"
            time.sleep(_POLL)
    finally:
        hv.force_off(spec.name)
        for path in (spec.console_log, spec.control_socket):
            path.unlink(missing_ok=True)


def _clean_stale_probes(hv: LibvirtHypervisor, workdir: Path) -> None:
    """Remove what an interrupted probe left (its process died, or libvirtd
    restarted mid-probe): a hung probe domain would burn a core forever."""
    for name in hv.list_domains(PROBE_PREFIX):
        hv.force_off(name)
    for pattern in ("probe-*.log", "probe-*.sock"):
        for path in workdir.glob(pattern):
            path.unlink(missing_ok=True)


def _cache_key(hv: LibvirtHypervisor) -> dict[str, Any]:
    libvirt_version, qemu_version = hv.versions()
    return {
        "uri": hv.uri,
        "host_kernel": platform.release(),
        "qemu_version": qemu_version,
        "libvirt_version": libvirt_version,
    }


def _load_cache(cache_file: Path, key: Mapping[str, Any]) -> AcceleratorChoice | None:
    try:
        data = json.loads(cache_file.read_text())
        if data.get("key") != key:
            return None
        return AcceleratorChoice(Accelerator(data["accelerator"]), str(data["note"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or unreadable cache: probe again


def _save_cache(cache_file: Path, key: Mapping[str, Any], choice: AcceleratorChoice) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    payload = {"key": dict(key), "accelerator": choice.accelerator.value, "note": choice.note}
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, cache_file)  # readers see the old or the new file, never half


def choose_accelerator(
    hv_uri: str,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    cache_file: Path,
    *,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float = PROBE_TIMEOUT,
    system: str | None = None,
    kvm_device: Path = Path("/dev/kvm"),
) -> AcceleratorChoice:
    """Pick the accelerator for claw domains on ``hv_uri``.

    ``CLAWDEN_ACCEL`` skips everything; ``force`` ignores the cache and probes
    again. ``system`` and ``kvm_device`` exist for tests.
    """
    override = _override(os.environ if env is None else env)
    if override is not None:
        return override
    candidate, why_not = _candidate(system or platform.system(), kvm_device)
    if candidate is None:
        return AcceleratorChoice(Accelerator.TCG, why_not)
    hv = LibvirtHypervisor(hv_uri)
    try:
        return _decide(hv, candidate, kernel, initrd, workdir, cache_file, force, timeout)
    finally:
        hv.close()


def _decide(
    hv: LibvirtHypervisor,
    candidate: Accelerator,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    cache_file: Path,
    force: bool,
    timeout: float,
) -> AcceleratorChoice:
    key = _cache_key(hv)
    if not force:
        cached = _load_cache(cache_file, key)
        if cached is not None:
            return cached
    name = candidate.name
    if candidate.value not in offered_domain_types(hv.capabilities_xml()):
        choice = AcceleratorChoice(
            Accelerator.TCG,
            f"{name} plausible but libvirt at {hv.uri} does not offer it; "
            "using TCG — VMs will be slower",
        )
    else:
        _clean_stale_probes(hv, workdir)
        failure = probe_boot(hv, candidate, kernel, initrd, workdir, timeout)
        if failure is None:
            choice = AcceleratorChoice(candidate, f"{name} test boot reached the kernel's end")
        else:
            choice = AcceleratorChoice(
                Accelerator.TCG,
                f"{name} present but {failure}; using TCG — VMs will be slower",
            )
    _save_cache(cache_file, key, choice)
    return choice
