"""The accelerator probe against the real libvirtd and QEMU: the boot image
really prints its token under TCG, a guest that cannot take an interrupt
really fails it, and the host's verdict comes quickly. A few seconds each."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.core.domain import Accelerator
from appliance.core.model import probe_prefix
from appliance.hypervisor import accel, probe_image
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor

from .conftest import URI

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="qemu:///system needs root"),
]
TAG = "7e570000"  # this test's own installation tag


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under /tmp/pytest-of-root (0700): QEMU's user opens the image by path.
    top = Path(tempfile.mkdtemp(prefix="clawden-probe-", dir="/var/tmp"))
    top.chmod(0o711)
    try:
        yield top / "accel-probe"
    finally:
        shutil.rmtree(top)


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    hv = LibvirtHypervisor(URI)
    try:
        yield hv
    finally:
        assert hv.list_domains(probe_prefix(TAG)) == []  # nothing left running
        hv.close()


def test_tcg_runs_the_image_to_its_token(hv: LibvirtHypervisor, workdir: Path) -> None:
    started = time.monotonic()
    assert accel.probe_boot(hv, Accelerator.TCG, TAG, workdir) is None
    assert time.monotonic() - started < 8  # ~3 s here, most of it libvirt's start and stop
    assert list(workdir.iterdir()) == []


def test_a_guest_that_takes_no_interrupt_fails_the_probe(
    hv: LibvirtHypervisor, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same image with `sti` turned into `nop`: it reaches long mode but
    # never an interrupt, as a guest does when nested virtualisation loses
    # them. The token must then never appear.
    sti = probe_image.CODE.index(b"\xfb\xf4")  # sti; hlt
    broken = probe_image.CODE[:sti] + b"\x90" + probe_image.CODE[sti + 1 :]
    monkeypatch.setattr(probe_image, "CODE", broken)
    reason = accel.probe_boot(hv, Accelerator.TCG, TAG, workdir, timeout=1.5)
    assert reason is not None and "did not finish" in reason


def test_the_hosts_verdict_is_quick_and_explained(tmp_path: Path, workdir: Path) -> None:
    started = time.monotonic()
    choice = accel.choose_accelerator(URI, TAG, workdir, tmp_path / "accel.json", force=True)
    elapsed = time.monotonic() - started
    assert choice.note
    # Worst case: libvirt's start and stop plus the probe's timeout.
    assert elapsed < accel.PROBE_TIMEOUT + 8, choice.note
    if choice.accelerator is Accelerator.TCG and Path("/dev/kvm").exists():
        assert "KVM present but" in choice.note  # the reason is recorded
