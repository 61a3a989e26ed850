"""The per-claw CPU cap: ``CLAWDEN_CPU_PERCENT`` (``Settings.cpu_percent``)
turned into a ``<cputune>`` quota by ``build_domain_spec`` for every claw.

The quota arithmetic itself is in tests/unit/test_domain_xml.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.controller.guestfiles import build_domain_spec
from appliance.core.domain import CPU_PERIOD_US, DEFAULT_CPU_PERCENT, Accelerator, CpuQuota
from appliance.core.errors import InvalidInput
from appliance.core.model import Claw, ClawState
from appliance.hypervisor.domain import render_domain_xml
from appliance.image import GoldenImage

SYSTEM = {"CLAWDEN_HOME": "/var/lib/clawden-test", "CLAWDEN_LIBVIRT_URI": "qemu:///system"}


def _settings(**env: str) -> Settings:
    return Settings.from_env({**SYSTEM, **env})


def test_default_is_half_a_core_per_vcpu() -> None:
    assert DEFAULT_CPU_PERCENT == 50
    assert _settings().cpu_percent == 50
    assert _settings(CLAWDEN_CPU_PERCENT="").cpu_percent == 50  # empty = unset
    # Settings made in code (tests, tools) get the same default.
    assert Settings(home=Path("/x"), libvirt_uri="test:///default").cpu_percent == 50


@pytest.mark.parametrize(("raw", "percent"), [("0", 0), ("1", 1), ("80", 80), (" 100 ", 100)])
def test_the_environment_sets_it(raw: str, percent: int) -> None:
    assert _settings(CLAWDEN_CPU_PERCENT=raw).cpu_percent == percent


@pytest.mark.parametrize("raw", ["101", "-5", "50%", "0.5", "half", "٥٠"])
def test_nonsense_is_refused_with_the_fix(raw: str) -> None:
    with pytest.raises(InvalidInput) as info:
        _settings(CLAWDEN_CPU_PERCENT=raw)
    assert "CLAWDEN_CPU_PERCENT" in info.value.what
    assert "0 for no cap" in info.value.fix


def test_an_unprivileged_session_daemon_gets_no_cap_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libvirt has no cgroups there and refuses to start a domain with a quota.
    monkeypatch.setattr("appliance.config.os.geteuid", lambda: 1000)
    assert _settings(CLAWDEN_LIBVIRT_URI="qemu:///session").cpu_percent == 0
    assert (
        _settings(CLAWDEN_LIBVIRT_URI="qemu:///session", CLAWDEN_CPU_PERCENT="30").cpu_percent == 30
    )
    assert _settings(CLAWDEN_LIBVIRT_URI="qemu:///system").cpu_percent == 50
    # As root, qemu:///session is served by the system daemon, with cgroups.
    monkeypatch.setattr("appliance.config.os.geteuid", lambda: 0)
    assert _settings(CLAWDEN_LIBVIRT_URI="qemu:///session").cpu_percent == 50


def _claw(vcpus: int) -> Claw:
    return Claw("alice", "Alice", ClawState.RUNNING, "v1", vcpus, 512, "2026-01-01T00:00:00+00:00")


def _image(tmp_path: Path) -> GoldenImage:
    return GoldenImage(
        version="v1",
        dir=tmp_path,
        golden=tmp_path / "golden.qcow2",
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        manifest={},
    )


@pytest.mark.parametrize("accel", [Accelerator.TCG, Accelerator.KVM])
def test_every_claw_gets_the_cap_for_its_vcpus(tmp_path: Path, accel: Accelerator) -> None:
    settings = _settings(CLAWDEN_CPU_PERCENT="40")
    spec = build_domain_spec(settings, _claw(3), _image(tmp_path), accel)
    assert spec.cpu_quota == CpuQuota(CPU_PERIOD_US, 40_000, 120_000)
    xml = render_domain_xml(spec)
    assert "<quota>40000</quota>" in xml and "<global_quota>120000</global_quota>" in xml


def test_zero_means_no_cputune(tmp_path: Path) -> None:
    settings = _settings(CLAWDEN_CPU_PERCENT="0")
    spec = build_domain_spec(settings, _claw(2), _image(tmp_path), Accelerator.TCG)
    assert spec.cpu_quota is None
    assert "<cputune>" not in render_domain_xml(spec)
