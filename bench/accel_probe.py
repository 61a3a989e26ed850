"""The accelerator probe: the boot-image probe against the old kernel probe,
interleaved in the same run, in the three situations a host can be in.

- ``host``: KVM exactly as a claw would get it on this host (here QEMU
  aborts at start on MSR 0x10a, so both fail fast);
- ``working``: an accelerator that works (TCG here): the old probe boots the
  golden kernel to its panic, the new one runs the 1.5 KiB image to its token;
- ``hang``: a KVM guest that hangs (here: KVM with the ``qemu64`` CPU model
  instead of ``host-passthrough``, which hangs on this host), so both wait
  for their timeout — the case behind "~22 s" in issue 9.

The old probe is reproduced below as it was (``rdinit`` pointing nowhere,
20 s timeout, "Kernel panic" on the console), on today's XML renderer.

    .venv/bin/python -m bench.accel_probe [--runs 3] [--hang-runs 1]

Prints one JSON object; ``measure(runs, hang_runs)`` is what run_all calls.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

from appliance.core.domain import Accelerator, DirectKernelBoot, DomainSpec
from appliance.core.errors import HypervisorError
from appliance.core.model import probe_prefix
from appliance.hypervisor import accel
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.image.manifest import latest_image
from bench._common import IMAGE_CACHE, URI, machine, say, summary, wait_for_quiet

TAG = "be4c0000"  # the bench's own installation tag for its probe domains
OLD_TIMEOUT = 20.0
OLD_CMDLINE = "console=ttyS0 panic=-1 rdinit=/clawden-probe-no-such-init loglevel=4"
OLD_MARKERS = ("Kernel panic", "Run /", "Failed to execute")
# check="none": libvirt would refuse qemu64 on this host for lacking svm.
HANG_CPU = (
    '<cpu mode="custom" match="exact" check="none"><model fallback="allow">qemu64</model></cpu>'
)

XmlHook = Callable[[str], str]


def _same(xml: str) -> str:
    return xml


def _hang(xml: str) -> str:
    return xml.replace('<cpu mode="host-passthrough" />', HANG_CPU)


def old_probe_boot(
    hv: LibvirtHypervisor,
    accelerator: Accelerator,
    kernel: Path,
    initrd: Path,
    workdir: Path,
    hook: XmlHook = _same,
) -> str | None:
    """The probe before the boot image: the golden kernel to its panic."""
    token = secrets.token_hex(4)
    spec = DomainSpec(
        name=f"{probe_prefix(TAG)}old{token}",
        uuid=str(uuid.uuid4()),
        vcpus=1,
        memory_mib=256,
        accelerator=accelerator,
        boot=DirectKernelBoot(kernel=kernel, initrd=initrd, cmdline=OLD_CMDLINE),
        disks=(),
        control_socket=workdir / f"old-{token}.sock",
        console_log=workdir / f"old-{token}.log",
    )

    def booted() -> bool:
        text = accel._read(spec.console_log).decode(errors="replace")
        return any(m in text for m in OLD_MARKERS)

    try:
        try:
            hv.create_transient(hook(accel.probe_xml(spec)))
        except HypervisorError as exc:
            return f"refused ({exc.what[:60]})"
        deadline = time.monotonic() + OLD_TIMEOUT
        while True:
            if booted():
                return None
            if hv.state(spec.name) is None:
                return None if booted() else "stopped"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(0.25)
    finally:
        hv.force_off(spec.name)
        for path in (spec.console_log, spec.control_socket):
            path.unlink(missing_ok=True)


def new_probe_boot(
    hv: LibvirtHypervisor, accelerator: Accelerator, workdir: Path, hook: XmlHook = _same
) -> str | None:
    render = accel.probe_xml
    with mock.patch.object(accel, "probe_xml", lambda spec: hook(render(spec))):
        return accel.probe_boot(hv, accelerator, TAG, workdir)


@contextmanager
def _workdir() -> Iterator[Path]:
    # /var/tmp, 0711: QEMU's user opens the new probe's image by path.
    top = Path(tempfile.mkdtemp(prefix="clawden-bench-probe-", dir="/var/tmp"))
    top.chmod(0o711)
    try:
        yield top / "accel-probe"
    finally:
        shutil.rmtree(top)


def _timed(run: Callable[[], str | None]) -> tuple[float, str]:
    started = time.monotonic()
    verdict = run()
    return time.monotonic() - started, "works" if verdict is None else verdict


def measure(runs: int = 3, hang_runs: int = 1, quiet: bool = True) -> dict[str, Any]:
    image = latest_image(IMAGE_CACHE)
    if image is None:
        raise RuntimeError(f"no golden image in {IMAGE_CACHE}: run the integration tests once")
    # Interleaving already exposes old and new to the same load; --no-wait
    # records the load instead of waiting for a quiet machine.
    waited = wait_for_quiet() if quiet else 0.0
    cases: dict[str, tuple[Accelerator, XmlHook, int]] = {
        "host": (Accelerator.KVM, _same, runs),
        "working": (Accelerator.TCG, _same, runs),
    }
    if Path("/dev/kvm").exists():
        cases["hang"] = (Accelerator.KVM, _hang, hang_runs)
    out: dict[str, Any] = {
        "machine": machine(),
        "waited_for_quiet_s": round(waited, 1),
        "loadavg_at_start": list(os.getloadavg()),
    }
    hv = LibvirtHypervisor(URI)
    try:
        with _workdir() as workdir:
            workdir.mkdir()
            workdir.chmod(0o711)
            for name, (accelerator, hook, n) in cases.items():
                old: list[float] = []
                new: list[float] = []
                verdicts: dict[str, set[str]] = {"old": set(), "new": set()}
                for i in range(n):  # interleaved, so load changes hit both alike
                    t, v = _timed(
                        partial(
                            old_probe_boot,
                            hv,
                            accelerator,
                            image.kernel,
                            image.initrd,
                            workdir,
                            hook,
                        )
                    )
                    old.append(t)
                    verdicts["old"].add(v.split(" (")[0])
                    t, v = _timed(partial(new_probe_boot, hv, accelerator, workdir, hook))
                    new.append(t)
                    verdicts["new"].add(v.split(" (")[0])
                    say(f"{name} {i + 1}/{n}: old {old[-1]:.2f} s, new {new[-1]:.2f} s")
                out[name] = {
                    "accelerator": accelerator.value,
                    "old_s": summary(old),
                    "new_s": summary(new),
                    "ratio_new_over_old": round(statistics.median(new) / statistics.median(old), 3),
                    "verdicts": {k: sorted(v) for k, v in verdicts.items()},
                }
    finally:
        hv.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="rounds of host and working (default 3)")
    p.add_argument("--hang-runs", type=int, default=1, help="rounds of hang (~25 s each)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = p.parse_args()
    print(json.dumps(measure(args.runs, args.hang_runs, quiet=not args.no_wait), indent=2))


if __name__ == "__main__":
    main()
