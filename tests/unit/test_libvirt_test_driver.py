"""LibvirtHypervisor against libvirt's in-process ``test:///default`` driver,
and the contract tests that hold FakeHypervisor to the same behaviour."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import libvirt
import pytest

from appliance.core.domain import (
    DEFAULT_CPU_PERCENT,
    Accelerator,
    DirectKernelBoot,
    Disk,
    DiskFormat,
    DomainSpec,
    cpu_quota,
)
from appliance.core.errors import Conflict, HypervisorError, InvalidInput, NotFound, Unavailable
from appliance.core.model import probe_prefix
from appliance.core.ports import AcceleratorChoice, DomainState, Hypervisor
from appliance.hypervisor import accel, probe_image
from appliance.hypervisor.fake import FakeHypervisor
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor

TEST_URI = "test:///default"
PREFIX = "clawdentest-"
TAG = "0123abcd"  # this installation's tag


def make_spec(tmp: Path, name: str | None = None) -> DomainSpec:
    """A minimal valid spec; a given name always maps to the same UUID (as a
    claw's does), no name gives a fresh domain."""
    name = name or f"{PREFIX}{uuid.uuid4().hex[:8]}"
    return DomainSpec(
        name=name,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        vcpus=1,
        memory_mib=256,
        accelerator=Accelerator.TCG,
        boot=DirectKernelBoot(tmp / "vmlinuz", tmp / "initrd.img", "console=ttyS0"),
        disks=(Disk(tmp / "root.qcow2", "vda", DiskFormat.QCOW2),),
        control_socket=tmp / "control.sock",
        console_log=tmp / "console.log",
        cpu_quota=cpu_quota(1, DEFAULT_CPU_PERCENT),  # as every claw has by default
    )


@dataclass
class Backend:
    hv: Hypervisor
    pause: Callable[[str], None]  # suspend a running domain behind the port's back


@pytest.fixture(params=["fake", "libvirt-test"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        fake = FakeHypervisor(TEST_URI)
        yield Backend(fake, fake.pause)
        return
    hv = LibvirtHypervisor(TEST_URI, poll_interval=0.02)
    # A second connection keeps the shared test:///default state alive and
    # lets us act behind the adapter's back.
    side = libvirt.open(TEST_URI)
    yield Backend(hv, lambda name: side.lookupByName(name).suspend())
    for name in hv.list_domains(PREFIX):  # leave the shared driver clean
        hv.force_off(name)
        hv.undefine(name)
    side.close()


# -- contract: the same functions for the fake and the real adapter -----------


def test_lifecycle_and_idempotency(backend: Backend, tmp_path: Path) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.ping()
    assert hv.state(spec.name) is None
    hv.define(spec)
    hv.define(spec)  # redefining the same spec is fine
    assert hv.state(spec.name) is DomainState.SHUTOFF
    assert hv.list_domains(PREFIX) == [spec.name]
    assert hv.pid(spec.name) is None
    hv.start(spec.name)
    hv.start(spec.name)
    assert hv.state(spec.name) is DomainState.RUNNING
    hv.shutdown(spec.name, timeout=5)
    assert hv.state(spec.name) is DomainState.SHUTOFF
    hv.shutdown(spec.name, timeout=5)
    hv.force_off(spec.name)
    hv.start(spec.name)
    hv.force_off(spec.name)
    hv.force_off(spec.name)
    assert hv.state(spec.name) is DomainState.SHUTOFF
    hv.undefine(spec.name)
    hv.undefine(spec.name)
    assert hv.state(spec.name) is None
    assert hv.list_domains(PREFIX) == []


def test_steps_on_missing_domain_are_noops(backend: Backend) -> None:
    hv = backend.hv
    missing = f"{PREFIX}missing"
    hv.shutdown(missing, timeout=1)
    hv.force_off(missing)
    hv.undefine(missing)
    assert hv.state(missing) is None
    assert hv.pid(missing) is None


def test_start_undefined_raises_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound) as info:
        backend.hv.start(f"{PREFIX}missing")
    assert info.value.fix


def test_list_filters_by_prefix(backend: Backend, tmp_path: Path) -> None:
    hv = backend.hv
    names = [f"{PREFIX}b", f"{PREFIX}a", "clawdenother-x"]
    for name in names:
        hv.define(make_spec(tmp_path, name))
    assert hv.list_domains(PREFIX) == [f"{PREFIX}a", f"{PREFIX}b"]
    hv.undefine("clawdenother-x")


def test_undefine_running_is_refused(backend: Backend, tmp_path: Path) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    hv.start(spec.name)
    with pytest.raises(Conflict):
        hv.undefine(spec.name)
    assert hv.state(spec.name) is DomainState.RUNNING


def test_name_and_uuid_clashes_conflict(backend: Backend, tmp_path: Path) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    with pytest.raises(Conflict):
        hv.define(replace(spec, uuid=str(uuid.uuid4())))
    with pytest.raises(Conflict):
        hv.define(replace(spec, name=f"{PREFIX}renamed"))
    assert hv.list_domains(PREFIX) == [spec.name]


def test_redefine_while_running_keeps_it_running(backend: Backend, tmp_path: Path) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    hv.start(spec.name)
    hv.define(replace(spec, memory_mib=512))
    assert hv.state(spec.name) is DomainState.RUNNING


def test_start_leaves_a_paused_domain_paused(backend: Backend, tmp_path: Path) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    hv.start(spec.name)
    backend.pause(spec.name)
    hv.start(spec.name)
    assert hv.state(spec.name) is DomainState.PAUSED


def test_shutdown_forces_off_a_guest_that_cannot_answer(backend: Backend, tmp_path: Path) -> None:
    # A paused guest never sees the power button: the timeout path must fire.
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    hv.start(spec.name)
    backend.pause(spec.name)
    hv.shutdown(spec.name, timeout=0.1)
    assert hv.state(spec.name) is DomainState.SHUTOFF


def test_rename_keeps_the_uuid_and_definition_and_repeats_safely(
    backend: Backend, tmp_path: Path
) -> None:
    hv, spec = backend.hv, make_spec(tmp_path)
    hv.define(spec)
    new = f"{PREFIX}renamed-{uuid.uuid4().hex[:8]}"
    hv.rename(spec.name, new)
    assert hv.state(spec.name) is None
    assert hv.state(new) is DomainState.SHUTOFF
    assert hv.uuid(new) == spec.uuid
    assert hv.list_domains(PREFIX) == [new]
    hv.rename(spec.name, new)  # done already (a resumed step): a no-op
    assert hv.list_domains(PREFIX) == [new]
    hv.define(replace(spec, name=new))  # redefining under the new name: same domain
    hv.start(new)
    assert hv.state(new) is DomainState.RUNNING
    hv.force_off(new)
    hv.undefine(new)
    assert hv.list_domains(PREFIX) == []


def test_rename_refuses_a_running_domain_a_taken_name_and_a_missing_domain(
    backend: Backend, tmp_path: Path
) -> None:
    hv, first, second = backend.hv, make_spec(tmp_path), make_spec(tmp_path)
    hv.define(first)
    hv.define(second)
    hv.start(first.name)
    with pytest.raises(Conflict) as running:
        hv.rename(first.name, f"{PREFIX}elsewhere")
    assert running.value.fix
    assert hv.state(first.name) is DomainState.RUNNING  # untouched
    hv.force_off(first.name)
    with pytest.raises(Conflict):
        hv.rename(first.name, second.name)
    assert hv.uuid(first.name) == first.uuid and hv.uuid(second.name) == second.uuid
    with pytest.raises(NotFound):
        hv.rename(f"{PREFIX}missing", f"{PREFIX}missing-too")
    assert sorted(hv.list_domains(PREFIX)) == sorted([first.name, second.name])


# -- the real adapter only ----------------------------------------------------


def test_libvirt_keeps_the_cpu_quota(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    spec = replace(make_spec(tmp_path), vcpus=2, cpu_quota=cpu_quota(2, 50))
    hv.define(spec)
    side = libvirt.open(TEST_URI)
    try:
        xml = side.lookupByName(spec.name).XMLDesc(0)
    finally:
        side.close()
        hv.undefine(spec.name)
    for line in (
        "<period>100000</period>",
        "<quota>50000</quota>",
        "<global_period>100000</global_period>",
        "<global_quota>100000</global_quota>",
    ):
        assert line in xml, xml


def test_ping_on_unreachable_libvirt_raises_unavailable() -> None:
    hv = LibvirtHypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(Unavailable) as info:
        hv.ping()
    assert "libvirtd" in info.value.fix
    with pytest.raises(Unavailable):  # every call, not only ping
        hv.list_domains(PREFIX)


def test_reconnects_after_the_connection_drops(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    keep = libvirt.open(TEST_URI)  # keeps the test driver's state alive
    try:
        hv.ping()
        first = hv._conn
        first.close()  # as if libvirtd had restarted
        assert "test" in hv.list_domains("")
        assert hv._conn is not first
    finally:
        keep.close()


def test_transient_domain_leaves_no_definition(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    spec = make_spec(tmp_path)
    hv.create_transient(accel.probe_xml(spec))
    assert hv.state(spec.name) is DomainState.RUNNING
    hv.force_off(spec.name)
    assert hv.state(spec.name) is None


# -- accelerator choice -------------------------------------------------------


def choose(tmp_path: Path, **kwargs: object) -> AcceleratorChoice:
    kvm = tmp_path / "kvm"
    kvm.touch()  # a /dev/kvm that "exists"
    args: dict[str, object] = {"env": {}, "system": "Linux", "kvm_device": kvm}
    args.update(kwargs)
    return accel.choose_accelerator(
        TEST_URI,
        TAG,
        tmp_path / "probe",
        tmp_path / "accel.json",
        **args,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("kvm", Accelerator.KVM),
        ("qemu", Accelerator.TCG),
        ("TCG", Accelerator.TCG),
        ("hvf", Accelerator.HVF),
    ],
)
def test_env_override_skips_the_probe(tmp_path: Path, value: str, expected: Accelerator) -> None:
    choice = choose(tmp_path, env={"CLAWDEN_ACCEL": value})
    assert choice.accelerator is expected
    assert "CLAWDEN_ACCEL" in choice.note
    assert not (tmp_path / "accel.json").exists()


def test_bad_env_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        choose(tmp_path, env={"CLAWDEN_ACCEL": "turbo"})
    assert "kvm" in info.value.fix


def test_no_kvm_device_means_tcg(tmp_path: Path) -> None:
    choice = choose(tmp_path, kvm_device=tmp_path / "no-such-kvm")
    assert choice.accelerator is Accelerator.TCG
    assert "no-such-kvm" in choice.note


def test_kvm_not_offered_by_libvirt_means_tcg_and_is_cached(tmp_path: Path) -> None:
    choice = choose(tmp_path)  # the test driver offers only type 'test'
    assert choice.accelerator is Accelerator.TCG
    assert "does not offer" in choice.note
    cache = tmp_path / "accel.json"
    # A cache with the same key is believed (proved by planting a different answer)...
    cache.write_text(cache.read_text().replace('"accelerator": "qemu"', '"accelerator": "kvm"'))
    assert choose(tmp_path).accelerator is Accelerator.KVM
    # ...but not when forced, nor when the host changed (e.g. a kernel upgrade).
    assert choose(tmp_path, force=True).accelerator is Accelerator.TCG
    cache.write_text(cache.read_text().replace('"accelerator": "qemu"', '"accelerator": "kvm"'))
    cache.write_text(cache.read_text().replace('"host_kernel": "', '"host_kernel": "old-'))
    assert choose(tmp_path).accelerator is Accelerator.TCG


def test_probe_that_never_prints_times_out_and_cleans_up(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    workdir = tmp_path / "probe"
    reason = accel.probe_boot(hv, Accelerator.KVM, TAG, workdir, 0.2)
    assert reason is not None and "did not finish" in reason
    assert hv.list_domains(probe_prefix(TAG)) == []
    assert list(workdir.iterdir()) == []  # boot image, log and socket all gone


def _probe_with_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, console: bytes, token: bytes
) -> tuple[str | None, DomainSpec]:
    """Run probe_boot on the test driver with ``console`` standing in for what
    virtlogd writes from the guest and ``token`` as the probe's fresh token."""
    hv = LibvirtHypervisor(TEST_URI)
    workdir = tmp_path / "probe"
    spec = accel.probe_spec(Accelerator.KVM, TAG, workdir)
    monkeypatch.setattr(accel, "probe_spec", lambda *_args: spec)
    monkeypatch.setattr(accel, "new_token", lambda: token)
    workdir.mkdir()
    spec.console_log.write_bytes(console)
    reason = accel.probe_boot(hv, Accelerator.KVM, TAG, workdir, 0.3)
    assert hv.state(spec.name) is None
    assert not spec.console_log.exists() and not spec.boot.kernel.exists()
    return reason, spec


def test_probe_that_prints_its_token_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = b"clawden-accel-ok-0123456789abcdef\n"
    reason, _ = _probe_with_console(tmp_path, monkeypatch, b"SeaBIOS\r\n" + token, token)
    assert reason is None


def test_probe_ignores_another_probes_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only this probe's fresh token counts, not an earlier one's in the log.
    ours = b"clawden-accel-ok-0123456789abcdef\n"
    theirs = b"clawden-accel-ok-fedcba9876543210\n"
    reason, _ = _probe_with_console(tmp_path, monkeypatch, theirs, ours)
    assert reason is not None and "did not finish" in reason


def test_probe_writes_a_boot_image_carrying_its_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    token = b"clawden-accel-ok-0123456789abcdef\n"

    def create(self: LibvirtHypervisor, xml: str) -> None:
        kernel = ET.fromstring(xml).findtext("os/kernel")
        assert kernel is not None
        seen.append(Path(kernel).read_bytes())  # what QEMU would load
        raise HypervisorError("QEMU aborted: failed to set MSR 0x10a", "")

    monkeypatch.setattr(LibvirtHypervisor, "create_transient", create)
    monkeypatch.setattr(accel, "new_token", lambda: token)
    workdir = tmp_path / "probe"
    reason = accel.probe_boot(LibvirtHypervisor(TEST_URI), Accelerator.KVM, TAG, workdir)
    # A QEMU that refuses to start is a verdict, with libvirt's words in it.
    assert reason is not None and "MSR 0x10a" in reason and "refused" in reason
    (image,) = seen
    assert probe_image.encoded_token(image) == token
    assert oct(workdir.stat().st_mode & 0o777) == "0o711"  # QEMU's user reaches it
    assert list(workdir.iterdir()) == []


def test_stale_probes_of_this_installation_only_are_cleaned(tmp_path: Path) -> None:
    hv = LibvirtHypervisor(TEST_URI)
    workdir = tmp_path / "probe"
    ours = accel.probe_spec(Accelerator.KVM, TAG, workdir)
    theirs = accel.probe_spec(Accelerator.KVM, "89abcdef", tmp_path / "theirs")
    claw = make_spec(tmp_path)  # not a probe at all
    for spec in (ours, theirs, claw):
        hv.create_transient(accel.probe_xml(spec))
    workdir.mkdir()
    leftovers = [workdir / f"probe-dead.{ext}" for ext in ("img", "log", "sock")]
    for path in leftovers:
        path.touch()
    try:
        accel._clean_stale_probes(hv, TAG, workdir)
        assert hv.state(ours.name) is None
        # Another installation's probe may be running right now: left alone.
        assert hv.state(theirs.name) is DomainState.RUNNING
        assert hv.state(claw.name) is DomainState.RUNNING
        assert not any(path.exists() for path in leftovers)
    finally:
        hv.force_off(theirs.name)
        hv.force_off(claw.name)
