"""Domain XML: golden files, libvirt's schema, and the hardening promises."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.core.domain import (
    CPU_PERIOD_US,
    DEFAULT_CPU_PERCENT,
    Accelerator,
    CpuQuota,
    DirectKernelBoot,
    Disk,
    DiskFormat,
    DomainSpec,
    cpu_quota,
)
from appliance.core.errors import HypervisorError
from appliance.hypervisor.accel import probe_spec, probe_xml
from appliance.hypervisor.domain import render_domain_xml

GOLDEN = Path(__file__).parent / "golden"
CLAW = Path("/var/lib/clawden/claws/alice")
IMAGE = Path("/var/lib/clawden/images/2024.06.1")
# Set to regenerate the golden files after an intended change; review the diff.
UPDATE = os.environ.get("CLAWDEN_UPDATE_GOLDEN") == "1"


def claw_spec(accel: Accelerator = Accelerator.TCG) -> DomainSpec:
    """A spec shaped like the controller's (docs/dev/contracts.md)."""
    return DomainSpec(
        name="clawden-alice",
        uuid="6a1e3f0c-2b7d-4c9e-8f10-1a2b3c4d5e6f",
        vcpus=2,
        memory_mib=1024,
        accelerator=accel,
        boot=DirectKernelBoot(
            kernel=IMAGE / "vmlinuz",
            initrd=IMAGE / "initrd.img",
            cmdline=(
                "root=/dev/vda ro console=ttyS0 panic=-1 net.ifnames=0"
                " loglevel=6 systemd.show_status=auto"
            ),
        ),
        disks=(
            Disk(CLAW / "root.qcow2", "vda", DiskFormat.QCOW2, serial="clawroot"),
            Disk(CLAW / "seed.img", "vdb", DiskFormat.RAW, readonly=True, serial="clawseed"),
            Disk(CLAW / "data.qcow2", "vdc", DiskFormat.QCOW2, serial="clawdata"),
        ),
        control_socket=CLAW / "control.sock",
        console_log=CLAW / "console.log",
        cpu_quota=cpu_quota(2, DEFAULT_CPU_PERCENT),
    )


def parse(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(render_domain_xml(spec))


@pytest.mark.parametrize(
    ("accel", "golden"),
    [(Accelerator.TCG, "domain_tcg.xml"), (Accelerator.KVM, "domain_kvm.xml")],
)
def test_matches_golden_file(accel: Accelerator, golden: str) -> None:
    rendered = render_domain_xml(claw_spec(accel))
    path = GOLDEN / golden
    if UPDATE:
        path.write_text(rendered)
    assert rendered == path.read_text()


def test_rendering_is_deterministic() -> None:
    assert render_domain_xml(claw_spec()) == render_domain_xml(claw_spec())


@pytest.mark.parametrize("accel", list(Accelerator))
def test_domain_type_and_cpu_follow_the_accelerator(accel: Accelerator) -> None:
    root = parse(claw_spec(accel))
    assert root.get("type") == accel.value
    cpu = root.find("cpu")
    assert cpu is not None
    if accel is Accelerator.TCG:
        assert cpu.get("mode") == "custom"
        assert root.findtext("cpu/model") == "qemu64"
    else:
        assert cpu.get("mode") == "host-passthrough"


def test_no_network_and_no_extra_devices() -> None:
    devices = parse(claw_spec()).find("devices")
    assert devices is not None
    for tag in ("interface", "graphics", "sound", "hostdev", "redirdev", "smartcard", "input"):
        assert devices.find(tag) is None, tag
    assert [c.attrib for c in devices.iter("controller")] == [{"type": "usb", "model": "none"}]
    # The balloon is there only to hand freed guest RAM back (free page
    # reporting); it is never inflated, so the claw's memory limit stands.
    assert [b.attrib for b in devices.iter("memballoon")] == [
        {"model": "virtio", "autodeflate": "on", "freePageReporting": "on"}
    ]
    assert [b.tag for b in devices.iter("stats")] == []
    assert [m.get("type") for m in devices.iter("model")] == ["none"]  # the video model


def test_exactly_one_control_channel() -> None:
    devices = parse(claw_spec()).find("devices")
    assert devices is not None
    channels = devices.findall("channel")
    assert len(channels) == 1
    assert channels[0].get("type") == "unix"
    assert channels[0].find("source").attrib == {  # type: ignore[union-attr]
        "mode": "bind",
        "path": str(CLAW / "control.sock"),
    }
    assert channels[0].find("target").attrib == {  # type: ignore[union-attr]
        "type": "virtio",
        "name": "org.clawden.control",
    }


def test_disks_keep_order_and_flags() -> None:
    disks = parse(claw_spec()).findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc"]  # type: ignore[union-attr]
    assert {d.find("target").get("bus") for d in disks} == {"virtio"}  # type: ignore[union-attr]
    root, seed, data = disks
    assert seed.find("readonly") is not None
    assert root.find("readonly") is None and data.find("readonly") is None
    assert seed.find("driver").attrib == {"name": "qemu", "type": "raw"}  # type: ignore[union-attr]
    assert data.find("driver").attrib == {  # type: ignore[union-attr]
        "name": "qemu",
        "type": "qcow2",
        "discard": "unmap",
    }
    assert [d.findtext("serial") for d in disks] == ["clawroot", "clawseed", "clawdata"]


def test_console_logged_and_lifecycle() -> None:
    root = parse(claw_spec())
    log = root.find("devices/serial/log")
    assert log is not None and log.attrib == {"file": str(CLAW / "console.log"), "append": "on"}
    assert root.find("devices/console/target").get("type") == "serial"  # type: ignore[union-attr]
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.findtext("on_crash") == "destroy"
    assert root.findtext("devices/rng/backend") == "/dev/urandom"
    assert root.findtext("os/kernel") == str(IMAGE / "vmlinuz")
    assert root.findtext("memory") == "1024" and root.findtext("vcpu") == "2"


@pytest.mark.parametrize("accel", [Accelerator.TCG, Accelerator.KVM])
def test_cpu_quota_caps_each_vcpu_and_the_whole_domain(accel: Accelerator) -> None:
    cputune = parse(claw_spec(accel)).find("cputune")
    assert cputune is not None
    # 2 vCPUs at 50 %: half a core each, one core for the whole QEMU process.
    assert {child.tag: child.text for child in cputune} == {
        "period": "100000",
        "quota": "50000",
        "global_period": "100000",
        "global_quota": "100000",
    }


def test_no_cputune_without_a_quota() -> None:
    root = parse(replace(claw_spec(), cpu_quota=None))
    assert root.find("cputune") is None


@pytest.mark.parametrize(
    ("vcpus", "percent", "expected"),
    [
        (1, 50, CpuQuota(CPU_PERIOD_US, 50_000, 50_000)),
        (2, 50, CpuQuota(CPU_PERIOD_US, 50_000, 100_000)),
        (4, 25, CpuQuota(CPU_PERIOD_US, 25_000, 100_000)),
        (8, 100, CpuQuota(CPU_PERIOD_US, 100_000, 800_000)),
        (1, 1, CpuQuota(CPU_PERIOD_US, 1_000, 1_000)),  # libvirt's smallest quota
        (3, 0, None),
    ],
)
def test_cpu_quota_is_percent_of_a_core_per_vcpu(
    vcpus: int, percent: int, expected: CpuQuota | None
) -> None:
    assert cpu_quota(vcpus, percent) == expected


@pytest.mark.parametrize(("vcpus", "percent"), [(1, -1), (1, 101), (0, 50)])
def test_cpu_quota_refuses_nonsense(vcpus: int, percent: int) -> None:
    with pytest.raises(ValueError):
        cpu_quota(vcpus, percent)


def test_unusable_cpu_quota_is_refused_before_libvirt() -> None:
    spec = replace(claw_spec(), cpu_quota=CpuQuota(CPU_PERIOD_US, 500, 1000))
    with pytest.raises(HypervisorError) as info:
        render_domain_xml(spec)
    assert "CLAWDEN_CPU_PERCENT" in info.value.fix


def test_hostile_strings_are_escaped_not_spliced() -> None:
    spec = replace(
        claw_spec(),
        boot=DirectKernelBoot(Path("/k/vm'<linuz>"), Path("/k/i&rd"), "a='1' b=\"2\" </cmdline>"),
        console_log=Path("/c/con'sole\".log"),
    )
    root = parse(spec)
    assert root.findtext("os/kernel") == "/k/vm'<linuz>"
    assert root.findtext("os/cmdline") == "a='1' b=\"2\" </cmdline>"
    assert root.find("devices/serial/log").get("file") == "/c/con'sole\".log"  # type: ignore[union-attr]


def test_duplicate_disk_targets_are_refused() -> None:
    spec = claw_spec()
    spec = replace(spec, disks=(spec.disks[0], replace(spec.disks[1], target="vda")))
    with pytest.raises(HypervisorError) as info:
        render_domain_xml(spec)
    assert info.value.fix


def probe_spec_fixed(accel: Accelerator = Accelerator.KVM) -> DomainSpec:
    """The probe's spec with its random name and UUID pinned, for golden files."""
    spec = probe_spec(accel, "0123abcd", Path("/var/lib/clawden/accel-probe"))
    return replace(
        spec,
        name="clawdenprobe-0123abcd-5eed5eed",
        uuid="00000000-0000-4000-8000-000000000001",
        boot=replace(spec.boot, kernel=Path("/var/lib/clawden/accel-probe/probe-5eed5eed.img")),
        control_socket=Path("/var/lib/clawden/accel-probe/probe-5eed5eed.sock"),
        console_log=Path("/var/lib/clawden/accel-probe/probe-5eed5eed.log"),
    )


@pytest.mark.parametrize(
    ("accel", "golden"),
    [(Accelerator.KVM, "probe_kvm.xml"), (Accelerator.TCG, "probe_tcg.xml")],
)
def test_probe_xml_matches_golden_file(accel: Accelerator, golden: str) -> None:
    rendered = probe_xml(probe_spec_fixed(accel))
    path = GOLDEN / golden
    if UPDATE:
        path.write_text(rendered)
    assert rendered == path.read_text()


def test_probe_xml_is_a_claws_but_boots_the_test_image_and_ends_on_reboot() -> None:
    spec = probe_spec(Accelerator.KVM, "0123abcd", Path("/w"))
    root = ET.fromstring(probe_xml(spec))
    assert root.findtext("on_reboot") == "destroy"
    assert root.findall("devices/disk") == []
    assert root.findtext("os/kernel") == str(spec.boot.kernel)
    assert spec.boot.kernel.parent == Path("/w")
    assert root.find("os/initrd") is None  # the image needs none
    # The same accelerator, CPU and clock a KVM claw gets: that is what is proved.
    claw = parse(claw_spec(Accelerator.KVM))
    for path in ("cpu", "clock", "features", "os/type"):
        assert ET.tostring(root.find(path)) == ET.tostring(claw.find(path)), path  # type: ignore[arg-type]
    assert root.get("type") == "kvm"
    # Its name carries the installation's tag, never the controller's prefix.
    assert spec.name.startswith("clawdenprobe-0123abcd-")
    assert not spec.name.startswith("clawden-")


def test_probe_spec_refuses_a_malformed_installation_tag() -> None:
    with pytest.raises(ValueError, match="installation tag"):
        probe_spec(Accelerator.KVM, "../etc", Path("/w"))


def _validate(xml: str, path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(xml)
    return subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(
    shutil.which("virt-xml-validate") is None,
    reason="virt-xml-validate not installed (Debian package libvirt-clients)",
)
@pytest.mark.parametrize(
    "xml",
    [
        pytest.param(render_domain_xml(claw_spec(Accelerator.TCG)), id="tcg"),
        pytest.param(render_domain_xml(claw_spec(Accelerator.KVM)), id="kvm"),
        pytest.param(render_domain_xml(claw_spec(Accelerator.HVF)), id="hvf"),
        pytest.param(
            render_domain_xml(replace(claw_spec(), emulator="/usr/bin/qemu-system-x86_64")),
            id="emulator",
        ),
        pytest.param(
            render_domain_xml(replace(claw_spec(), vcpus=8, cpu_quota=cpu_quota(8, 100))),
            id="largest-quota",
        ),
        pytest.param(render_domain_xml(replace(claw_spec(), cpu_quota=None)), id="no-quota"),
        pytest.param(
            probe_xml(probe_spec(Accelerator.KVM, "0123abcd", Path("/w"))),
            id="probe",
        ),
    ],
)
def test_valid_against_libvirt_schema(xml: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    result = _validate(xml, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path} validates" in result.stderr


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs virt-xml-validate")
def test_schema_check_can_fail(tmp_path: Path) -> None:
    # Guards the test above: the validator really runs, passes a good domain
    # and rejects a broken one *for the broken element* — a validator that
    # cannot run at all (no schema, no xmllint, no file) exits non-zero too.
    good = render_domain_xml(claw_spec())
    broken = good.replace("<on_crash>destroy", "<on_crash>explode")
    assert broken != good
    ok_path, bad_path = tmp_path / "good.xml", tmp_path / "broken.xml"
    ok = _validate(good, ok_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{ok_path} validates" in ok.stderr

    bad = _validate(broken, bad_path)
    out = bad.stdout + bad.stderr
    assert bad.returncode == 3, out  # xmllint's exit status for "document invalid"
    assert f"{bad_path} fails to validate" in out
    assert any(
        "Relax-NG validity error" in line and "on_crash" in line for line in out.splitlines()
    ), out
