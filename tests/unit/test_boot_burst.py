"""A claw boots uncapped and gets its CPU cap back when ready (or after the
longest burst), on FakeHypervisor with real SQLite and a fake clock; the
channel manager's hooks fire at the right moments over a fake connector.
The channel manager's hooks are tested in test_channel_manager.py, the
live cap on a real libvirt by test_a's cputune test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.controller.boot_burst import BootBurst
from appliance.controller.context import Context
from appliance.controller.lifecycle import Lifecycle
from appliance.core.domain import cpu_quota
from appliance.core.model import ClawSpec, domain_name
from appliance.hypervisor.fake import FakeHypervisor
from tests.unit.test_lifecycle import _installation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = _installation(tmp_path / "home", FakeHypervisor())
    Lifecycle(context).create(ClawSpec(name="alice", member="Alice"))
    yield context
    context.store.db.close()


def _live(ctx: Context, claw: str = "alice") -> object:
    assert isinstance(ctx.hypervisor, FakeHypervisor)
    return ctx.hypervisor.domains[domain_name(ctx.settings.installation_tag, claw)].live_cpu_cap


def _defined(ctx: Context) -> object:
    return cpu_quota(ctx.claws.require("alice").vcpus, ctx.settings.cpu_percent)


def test_a_claw_starts_with_its_defined_cap(ctx: Context) -> None:
    assert _defined(ctx) is not None
    assert _live(ctx) == _defined(ctx)


def test_the_cap_is_lifted_for_the_boot_and_back_when_ready(ctx: Context) -> None:
    burst = BootBurst(ctx, clock=Clock())
    burst.begin("alice")
    assert _live(ctx) is None
    assert burst.uncapped() == ["alice"]
    burst.end("alice")
    assert _live(ctx) == _defined(ctx)
    assert burst.uncapped() == []


def test_a_claw_that_never_gets_ready_is_capped_after_the_longest_burst(ctx: Context) -> None:
    clock = Clock()
    burst = BootBurst(ctx, clock=clock, max_burst_s=120)
    burst.begin("alice")
    clock.now += 119
    burst.end_overdue()
    assert _live(ctx) is None
    clock.now += 1
    burst.end_overdue()
    assert _live(ctx) == _defined(ctx)
    assert burst.uncapped() == []


def test_end_without_begin_changes_nothing(ctx: Context) -> None:
    assert isinstance(ctx.hypervisor, FakeHypervisor)
    BootBurst(ctx).end("alice")
    assert ("set_live_cpu_cap", domain_name(ctx.settings.installation_tag, "alice")) not in (
        ctx.hypervisor.calls
    )


def test_no_cap_configured_means_no_burst(ctx: Context) -> None:
    object.__setattr__(ctx.settings, "cpu_percent", 0)
    burst = BootBurst(ctx)
    burst.begin("alice")
    assert burst.uncapped() == []


def test_a_stopped_claw_is_not_touched(ctx: Context) -> None:
    Lifecycle(ctx).stop("alice")
    burst = BootBurst(ctx)
    burst.begin("alice")
    assert burst.uncapped() == []


def test_libvirt_down_is_logged_not_raised(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(ctx.hypervisor, FakeHypervisor)
    burst = BootBurst(ctx)
    ctx.hypervisor.available = False
    burst.begin("alice")
    assert burst.uncapped() == []
    assert "cannot lift its CPU cap" in caplog.text
