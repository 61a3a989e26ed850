"""The controller's memory with the admin panel, against without it.

What is measured: ``VmRSS`` of a real ``clawden serve`` process on a fresh
home (libvirt's test driver: no VMs, so the figure is the controller's own),
started ``--no-panel`` and started with the panel on a free loopback port,
alternately, ``--runs`` times each. With the panel, its pages are loaded
first (the login page, the setup page, static files; 50 requests) so the
figure includes what serving costs, not just the imports. Target: the panel
adds **≤ 40 MiB**.

    .venv/bin/python -m bench.panel_rss [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import CLAWDEN, free_port, machine, say, unwind_on_sigterm

SETTLE_S = 3.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _one(with_panel: bool) -> float:
    home = Path(tempfile.mkdtemp(prefix="clawden-bench-panel-rss-", dir="/var/tmp"))
    env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_LIBVIRT_URI="test:///default")
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}"] if with_panel else ["--no-panel"]
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen([CLAWDEN, "serve", *args], env=env, stdout=log, stderr=log, text=True)
    try:
        deadline = time.monotonic() + 60
        while "controller ready" not in (home / "serve.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {(home / 'serve.log').read_text()}")
            time.sleep(0.1)
        if with_panel:
            text = (home / "serve.log").read_text()
            link = next(w for w in text.split() if "/setup/" in w)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(10):
                    for path in ("/login", link, "/static/htmx.min.js", "/static/panel.css", "/"):
                        client.get(path)
        time.sleep(SETTLE_S)
        return _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def measure(runs: int = 3) -> dict[str, Any]:
    without: list[float] = []
    with_panel: list[float] = []
    for i in range(runs):
        say(f"run {i + 1}/{runs}")
        without.append(_one(False))
        with_panel.append(_one(True))
    delta = statistics.median(with_panel) - statistics.median(without)
    return {
        "runs": runs,
        "without_panel_mib": [round(v, 1) for v in without],
        "with_panel_mib": [round(v, 1) for v in with_panel],
        "median_without_mib": round(statistics.median(without), 1),
        "median_with_mib": round(statistics.median(with_panel), 1),
        "panel_adds_mib": round(delta, 1),
        "target_met": delta <= 40.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    unwind_on_sigterm()
    print(json.dumps({"machine": machine(), **measure(args.runs)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
