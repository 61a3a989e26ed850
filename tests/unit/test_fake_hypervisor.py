"""FakeHypervisor's test knobs. Its port behaviour is held to the real
adapter's by the contract tests in test_libvirt_test_driver.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.core.domain import DomainSpec
from appliance.core.errors import HypervisorError, Unavailable
from appliance.core.ports import DomainState, Hypervisor
from appliance.hypervisor.fake import FakeHypervisor
from tests.unit.test_libvirt_test_driver import make_spec


def spec(name: str = "clawdentest-a") -> DomainSpec:
    return make_spec(Path("/var/tmp/clawdentest"), name)


def test_satisfies_the_port() -> None:
    hv: Hypervisor = FakeHypervisor()
    assert hv.uri == "fake:///"


CALLS: list[Callable[[FakeHypervisor], object]] = [
    lambda hv: hv.ping(),
    lambda hv: hv.define(spec()),
    lambda hv: hv.start("clawdentest-a"),
    lambda hv: hv.shutdown("clawdentest-a"),
    lambda hv: hv.force_off("clawdentest-a"),
    lambda hv: hv.undefine("clawdentest-a"),
    lambda hv: hv.state("clawdentest-a"),
    lambda hv: hv.rename("clawdentest-a", "clawdentest-b"),
    lambda hv: hv.list_domains("clawdentest-"),
    lambda hv: hv.pid("clawdentest-a"),
]


@pytest.mark.parametrize("call", CALLS)
def test_libvirtd_down_makes_every_call_unavailable(
    call: Callable[[FakeHypervisor], object],
) -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.available = False
    with pytest.raises(Unavailable) as info:
        call(hv)
    assert "libvirtd" in info.value.fix
    hv.available = True  # and it comes back
    call(hv)


def test_libvirtd_down_changes_nothing() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.available = False
    with pytest.raises(Unavailable):
        hv.start("clawdentest-a")
    hv.available = True
    assert hv.state("clawdentest-a") is DomainState.SHUTOFF


def test_start_counts_only_real_starts() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.start("clawdentest-a")
    hv.start("clawdentest-a")
    assert hv.domains["clawdentest-a"].starts == 1
    assert hv.calls.count(("start", "clawdentest-a")) == 2


def test_fail_start_raises_hypervisor_error() -> None:
    hv = FakeHypervisor(fail_start={"clawdentest-a"})
    hv.define(spec())
    with pytest.raises(HypervisorError):
        hv.start("clawdentest-a")
    assert hv.state("clawdentest-a") is DomainState.SHUTOFF


def test_guest_ignoring_acpi_is_forced_off() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.domains["clawdentest-a"].ignores_acpi = True
    hv.start("clawdentest-a")
    hv.shutdown("clawdentest-a", timeout=1)
    assert hv.state("clawdentest-a") is DomainState.SHUTOFF
    assert hv.domains["clawdentest-a"].forced_offs == 1


def test_obedient_guest_is_not_forced() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.start("clawdentest-a")
    hv.shutdown("clawdentest-a")
    assert hv.domains["clawdentest-a"].forced_offs == 0


def test_crash_and_guest_poweroff_leave_it_shut_off() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.start("clawdentest-a")
    hv.crash("clawdentest-a")
    assert hv.state("clawdentest-a") is DomainState.SHUTOFF
    hv.start("clawdentest-a")
    hv.guest_powers_off("clawdentest-a")
    assert hv.state("clawdentest-a") is DomainState.SHUTOFF
    assert hv.domains["clawdentest-a"].starts == 2


def test_pid_only_while_running() -> None:
    hv = FakeHypervisor()
    hv.define(spec())
    hv.pids["clawdentest-a"] = 4242
    assert hv.pid("clawdentest-a") is None
    hv.start("clawdentest-a")
    assert hv.pid("clawdentest-a") == 4242
    hv.force_off("clawdentest-a")
    assert hv.pid("clawdentest-a") is None


def test_define_validates_like_the_real_adapter() -> None:
    hv = FakeHypervisor()
    bad = spec()
    bad = replace(bad, disks=bad.disks * 2)  # two disks on vda
    with pytest.raises(HypervisorError):
        hv.define(bad)
    assert hv.list_domains("") == []


def test_redefine_keeps_the_new_spec() -> None:
    hv = FakeHypervisor()
    first = spec()
    hv.define(first)
    hv.define(replace(first, memory_mib=1024))
    assert hv.domains["clawdentest-a"].spec.memory_mib == 1024
    assert "1024" in hv.domains["clawdentest-a"].xml
