"""The controller's memory with 5 idle claws, and its peak while one attacks.

What is measured: the RSS (``VmRSS``) and peak RSS (``VmHWM``, reset with
``/proc/PID/clear_refs`` before each attack) of the process that serves the
claws' host services — the controller's claw-facing half built from the
composition root (``tests/support/host_process.py``: store, controller log
with its budget, host API, LLM gateway, egress stub, one ``ChannelManager``
per claw) — with 5 claws connected through a real OpenSSH sshd, each with
its three forwards. Not in it: libvirt, the reconcile loop, the scheduler and
the CLI socket of ``clawden serve`` (they need VMs; bench/memory.py measures
the whole controller idle with real claws). The sshd, the scripted upstream
and the attacker are other processes.

Figures: RSS with no claw connected yet is not separable here (the claws
connect at start), so the baseline is the 5 idle claws after a settle;
then, for each flood of ``bench/_floods.py`` run by one claw for
``--seconds``, the peak RSS during it and the RSS 5 s after it.

    .venv/bin/python -m bench.controller_rss [--seconds 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import machine, say, unwind_on_sigterm
from bench._floods import FLOODS, flood
from tests.support.host_health import request
from tests.support.hostile_host import MODEL, host_process

CLAWS = ("c1", "c2", "c3", "c4", "c5")


def measure(seconds: float = 15.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="clawden-bench-rss-", dir="/var/tmp"))
    with host_process(workdir, list(CLAWS)) as host:
        attacker = host.ports["c1"]
        status, approval = request(
            attacker["hostapi"], "POST", "/v1/approvals", {"action": "a", "details": "d"}
        )
        if status != 201:
            raise RuntimeError(f"could not make the attacker's approval: {status} {approval}")
        time.sleep(5)
        idle = host.status()
        results: dict[str, Any] = {
            "claws": len(CLAWS),
            "idle_rss_mib": round(idle["VmRSS"] / 1024, 1),
            "idle_threads": idle["Threads"],
            "peak_since_start_mib": round(idle["VmHWM"] / 1024, 1),
            "attacks": {},
        }
        for kind in FLOODS:
            say(f"{kind} flood from one claw for {seconds:.0f} s")
            host.reset_peak()
            before = host.status()
            threads = 0
            with flood(kind, attacker, MODEL, approval["id"], seconds + 2):
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    threads = max(threads, host.threads())
                    time.sleep(0.05)
            peak = host.status()["VmHWM"]
            time.sleep(5)
            after = host.status()
            results["attacks"][kind] = {
                "rss_before_mib": round(before["VmRSS"] / 1024, 1),
                "peak_rss_mib": round(peak / 1024, 1),
                "rss_after_mib": round(after["VmRSS"] / 1024, 1),
                "peak_threads": threads,
                "threads_after": after["Threads"],
            }
        results["worst_peak_mib"] = max(a["peak_rss_mib"] for a in results["attacks"].values())
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    unwind_on_sigterm()
    print(json.dumps({"machine": machine(), **measure(args.seconds)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
