"""Another claw's latency while one claw floods the host services, against
the same with no flood, interleaved in one run.

The host is the controller's claw-facing half in a process of its own, built
from the composition root (``tests/support/host_process.py``), serving two
claws through a real OpenSSH sshd: ``bob`` (measured) and an attacker per
kind of flood (``alice0``…, each CPU-capped with its sshd as a claw's VM
is). Each round measures bob for ``--seconds`` with no flood, then
under each flood of ``bench/_floods.py`` (connections, requests, long polls,
gateway calls; each in a process of its own), in a rotating order so drift
hits all of them alike. Bob's requests, one at a time, each on a new
connection (so a connection flood is felt where it bites: sshd, the channel
open, the host's accept path):

``hostapi``  ``GET /v1/schedules`` (a read from the host's database);
``gateway``  a chat completion through the LLM gateway to a scripted
             upstream that answers at once (its own process).

Reported: p50/p90/p99 per flood and per kind, and the ratio to the no-flood
baseline; the target is **≤ 1.5×** at p50 and p99 for the worst flood.

    .venv/bin/python -m bench.flood_latency [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import machine, say, unwind_on_sigterm
from bench._floods import FLOODS, flood
from bench._stats import latency_ms, ratios
from tests.support.host_health import chat, request
from tests.support.hostile_host import MODEL, host_process

TARGET = 1.5
KINDS = ("hostapi", "gateway")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listener_pids(port: int) -> list[int]:
    """The processes holding the loopback listener on ``port``: the sshd that
    carries that claw's forwards (its "guest" side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except OSError:
            continue  # gone, or not ours to read
        if links & inodes:
            pids.append(int(proc.name))
    return pids


# Bob is a claw at work, not a second flood: a request every 100 ms at most
# (half the host's per-claw pace, appliance.core.quotas.REQUESTS_PER_SECOND),
# so what is measured is the host's latency, not bob's own pacing.
BOB_INTERVAL_S = 0.1


def _sample(ports: dict[str, int], seconds: float) -> dict[str, list[float]]:
    """Bob's requests, one after the other (at most one per ``BOB_INTERVAL_S``),
    for ``seconds``."""
    out: dict[str, list[float]] = {k: [] for k in KINDS}
    end = time.monotonic() + seconds
    started = 0.0
    while time.monotonic() < end:
        for kind in KINDS:
            time.sleep(max(0.0, BOB_INTERVAL_S - (time.perf_counter() - started)))
            started = time.perf_counter()
            if kind == "hostapi":
                status, body = request(ports["hostapi"], "GET", "/v1/schedules", None, 30)
            else:
                status, body = chat(ports["llm"])
            took = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"bob's {kind} request failed: {status} {str(body)[:200]}")
            out[kind].append(took)
    return out


def measure(rounds: int = 3, seconds: float = 8.0, attacker_cpu: int = 50) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        phase: {k: [] for k in KINDS} for phase in ("none", *FLOODS)
    }
    # The host process's CPU use per phase (fraction of one core): how much of
    # the slowdown is the host's own work under the flood (its GIL is one).
    cpu: dict[str, list[float]] = {phase: [] for phase in ("none", *FLOODS)}
    # What the attacker got done per second (answers, refusals included, or
    # connections made): that the flood ran, and how far the host let it.
    attacker: dict[str, list[float]] = {phase: [] for phase in FLOODS}
    workdir = Path(tempfile.mkdtemp(prefix="clawden-bench-flood-", dir="/var/tmp"))
    # One attacking claw per kind of flood: a flood clogs the attacker's own
    # channel for a while after it stops (the opens its sshd queued are still
    # taken at the host's pace), which would blunt the next flood from it.
    attackers = {kind: f"alice{n}" for n, kind in enumerate(FLOODS)}
    with host_process(workdir, ["bob", *attackers.values()]) as host:
        bob = host.ports["bob"]
        approvals = {}
        for kind, claw in attackers.items():
            ports = host.ports[claw]
            status, approval = request(
                ports["hostapi"], "POST", "/v1/approvals", {"action": "a", "details": "d"}
            )
            if status != 201:
                raise RuntimeError(f"could not make {claw}'s approval: {status} {approval}")
            # The attacker's sshd shares its CPU cap: in a claw, sshd runs in the VM.
            approvals[kind] = (ports, approval["id"], tuple(_listener_pids(ports["llm"])))
        _sample(bob, 1.0)  # warm up
        for n in range(rounds):
            order = list(FLOODS[n % len(FLOODS) :] + FLOODS[: n % len(FLOODS)])
            for kind in order:
                # A baseline next to every flood: pairs share the same drift.
                say(f"round {n + 1}/{rounds}: no flood, then {kind}")
                used, started = _cpu_s(host.pid), time.monotonic()
                for key, values in _sample(bob, seconds).items():
                    samples["none"][key] += values
                cpu["none"].append((_cpu_s(host.pid) - used) / (time.monotonic() - started))
                ports, approval_id, sshd_pids = approvals[kind]
                with flood(
                    kind, ports, MODEL, approval_id, seconds + 5, attacker_cpu, sshd_pids
                ) as done:
                    used, started, before = _cpu_s(host.pid), time.monotonic(), done()
                    for key, values in _sample(bob, seconds).items():
                        samples[kind][key] += values
                    elapsed = time.monotonic() - started
                    cpu[kind].append((_cpu_s(host.pid) - used) / elapsed)
                    attacker[kind].append((done() - before) / elapsed)
                time.sleep(2)  # let the host settle (the flood's connections close)
    results: dict[str, Any] = {
        "rounds": rounds,
        "seconds_per_phase": seconds,
        "target": TARGET,
        "attacker_cpu_percent": attacker_cpu,
        "host_cpu_cores": {p: round(sum(v) / len(v), 2) for p, v in cpu.items() if v},
        "attacker_done_per_s": {p: round(sum(v) / len(v), 1) for p, v in attacker.items() if v},
    }
    for kind in KINDS:
        base = latency_ms(samples["none"][kind])
        per: dict[str, Any] = {"none": base}
        for phase in FLOODS:
            summary = latency_ms(samples[phase][kind])
            per[phase] = {**summary, "ratio": ratios(summary, base)}
        worst = max(FLOODS, key=lambda p: max(per[p]["ratio"].values()))
        per["worst"] = worst
        per["met"] = all(per[worst]["ratio"][p] <= TARGET for p in ("p50", "p99"))
        results[kind] = per
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument(
        "--attacker-cpu",
        type=int,
        default=50,
        help="percent of one core the attacker (flood + its sshd) may use, as a claw's "
        "<cputune> allows its VM (default 50, CLAWDEN_CPU_PERCENT's default); 0: uncapped",
    )
    args = p.parse_args(argv)
    unwind_on_sigterm()
    out = {"machine": machine(), **measure(args.rounds, args.seconds, args.attacker_cpu)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
