"""Choose KVM, HVF or TCG by *running guest code*, not by looking for /dev/kvm.

A /dev/kvm that exists is not a KVM that works: under nested virtualisation
QEMU may abort (``-cpu host`` on an unknown MSR) or hang in the guest's
first instructions. So when hardware acceleration is plausible we start a
tiny transient domain under it, rendered like a claw's (same accelerator,
CPU, clock and machine XML), whose kernel is a 1.5 KiB boot image generated
here (``probe_image.py``): it switches to long mode and prints a fresh token
on the serial console from a timer interrupt handler. If the token shows up
within a bounded time the accelerator works; anything else (an error, QEMU
exiting, a hang) means TCG, with a note saying why. The outcome is cached
per host kernel, QEMU and libvirt version, so the probe runs once per
upgrade.
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
from appliance.core.model import probe_prefix
from appliance.core.ports import AcceleratorChoice
from appliance.hypervisor.domain import render_domain_xml
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.hypervisor.probe_image import boot_image, new_token

ENV_OVERRIDE = "CLAWDEN_ACCEL"
# From the domain's start to the token: ~0.3 s under TCG on this loaded
# 2-core machine, milliseconds under a working KVM. Ten times TCG's worst
# seen, so only a hang (or a host too loaded to run anything) times out.
PROBE_TIMEOUT = 3.0
PROBE_MEMORY_MIB = 32  # SeaBIOS and the image need a few hundred KiB
_POLL = 0.05


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


def probe_spec(accel: Accelerator, installation: str, workdir: Path) -> DomainSpec:
    """The probe domain: a claw's XML with the boot image as its kernel."""
    token = secrets.token_hex(4)
    return DomainSpec(
        name=f"{probe_prefix(installation)}{token}",
        uuid=str(uuid.uuid4()),
        vcpus=1,
        memory_mib=PROBE_MEMORY_MIB,
        accelerator=accel,
        boot=DirectKernelBoot(kernel=workdir / f"probe-{token}.img", initrd=None, cmdline=""),
        disks=(),
        control_socket=workdir / f"probe-{token}.sock",
        console_log=workdir / f"probe-{token}.log",
    )


def probe_xml(spec: DomainSpec) -> str:
    """The claw XML with one change: a reboot (a triple fault) ends the domain."""
    root = ET.fromstring(render_domain_xml(spec))  # noqa: S314 - our own output
    on_reboot = root.find("on_reboot")
    assert on_reboot is not None  # render_domain_xml always writes it
    on_reboot.text = "destroy"
    return ET.tostring(root, encoding="unicode")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""  # virtlogd has not created it yet


def probe_boot(
    hv: LibvirtHypervisor,
    accel: Accelerator,
    installation: str,
    workdir: Path,
    timeout: float = PROBE_TIMEOUT,
) -> str | None:
    """Run the boot image under ``accel``; ``None`` if it printed its token,
    else the reason.

    Never leaves a domain behind: it is transient and destroyed on every path.
    """
    # QEMU opens the image by path, as the user it runs as under
    # qemu:///system: the directory must be traversable and the file readable.
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o711)
    spec = probe_spec(accel, installation, workdir)
    token = new_token()
    image = spec.boot.kernel
    image.write_bytes(boot_image(token))
    image.chmod(0o644)
    try:
        try:
            hv.create_transient(probe_xml(spec))
        except HypervisorError as exc:  # not Unavailable: that is no verdict on KVM
            return f"QEMU refused to start a {accel.value} domain ({exc.what})"
        deadline = time.monotonic() + timeout
        while True:
            if token in _read(spec.console_log):
                return None
            if hv.state(spec.name) is None:
                # Gone: read once more in case virtlogd flushed late.
                if token in _read(spec.console_log):
                    return None
                return "QEMU stopped before the test image printed its token"
            if time.monotonic() >= deadline:
                return f"a test boot did not finish in {timeout:g} s (nested virtualisation?)"
            time.sleep(_POLL)
    finally:
        hv.force_off(spec.name)
        for path in (spec.console_log, spec.control_socket, image):
            path.unlink(missing_ok=True)


def _clean_stale_probes(hv: LibvirtHypervisor, installation: str, workdir: Path) -> None:
    """Remove what an interrupted probe of *this* installation left (its
    process died, or libvirtd restarted mid-probe): a hung probe domain
    would burn a core forever. Another installation's probes on the same
    libvirt carry its tag and are left alone: one may be running right now."""
    for name in hv.list_domains(probe_prefix(installation)):
        hv.force_off(name)
    for pattern in ("probe-*.log", "probe-*.sock", "probe-*.img"):
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
    installation: str,
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

    ``installation`` is the installation's tag: its probe domains carry it.
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
        return _decide(hv, candidate, installation, workdir, cache_file, force, timeout)
    finally:
        hv.close()


def _decide(
    hv: LibvirtHypervisor,
    candidate: Accelerator,
    installation: str,
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
        _clean_stale_probes(hv, installation, workdir)
        failure = probe_boot(hv, candidate, installation, workdir, timeout)
        if failure is None:
            choice = AcceleratorChoice(
                candidate, f"{name} ran a test image through long mode and a timer interrupt"
            )
        else:
            choice = AcceleratorChoice(
                Accelerator.TCG,
                f"{name} present but {failure}; using TCG — VMs will be slower",
            )
    _save_cache(cache_file, key, choice)
    return choice
