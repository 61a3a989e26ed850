"""The panel's pages under a lived-in home, against the same pages empty.

What is measured: the server time of the dashboard (the whole page, and the
cards fragment it polls every 5 s) and of the approvals inbox, through the
real app (``web.app.create_app``) on a real SQLite file, in-process through
Starlette's TestClient (no browser, no network: the panel's own work). Two
homes are built in the same run:

* **empty**: an admin and nothing else;
* **full**: 50 claws, 10,000 messages spread over them, 100,000 audit rows
  (a real hash chain, appended through ``AuditLog``), a pending approval per
  claw, a day of LLM usage per claw.

Each page is requested ``--requests`` times per home, interleaved (empty,
full, empty, …) so drift hits both alike; the figure is p95 full / p95
empty, target **≤ 2×**.

    .venv/bin/python -m bench.panel_pages [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from appliance.accounts import totp
from appliance.accounts.credentials import Passwords
from appliance.accounts.service import Accounts
from appliance.core.accounts import ROOT_CLI_ACTOR
from appliance.core.model import Claw, ClawState
from appliance.store import Store
from bench._common import machine, say, unwind_on_sigterm
from bench._stats import latency_ms, percentile
from tests.support.panel import FAST, ORIGIN, PASSWORD, Clock
from web.app import create_app
from web.panel import Panel
from web.ports import FakeClawOps

CLAWS, MESSAGES, AUDIT_ROWS = 50, 10_000, 100_000
PAGES = ("/", "/dashboard/cards", "/approvals")


def _home(root: Path, full: bool) -> tuple[TestClient, Store]:
    root.mkdir()
    store = Store.open(root / "clawden.db", audit_head=root / "audit.head")
    clock = Clock(datetime.now(UTC))
    accounts = Accounts(store, Passwords(FAST), clock)
    accounts.add("mum", "admin", PASSWORD, (), ROOT_CLI_ACTOR)
    uri = accounts.start_totp("mum", ROOT_CLI_ACTOR)
    secret = uri.split("secret=")[1].split("&")[0]
    accounts.confirm_totp("mum", totp.code_at(secret, clock.now), ROOT_CLI_ACTOR)
    if full:
        _fill(store)
    panel = Panel(store, accounts, FakeClawOps(), root, csrf_key=b"k" * 32, clock=clock)
    client = TestClient(create_app(panel), base_url=ORIGIN, follow_redirects=False)
    clock.tick()
    code = totp.code_at(secret, clock.now)
    login = {"name": "mum", "password": PASSWORD, "code": code}
    response = client.post("/login", data=login, headers={"Origin": ORIGIN})
    if response.status_code != 303:
        raise RuntimeError(f"could not log in: {response.status_code} {response.text[:200]}")
    return client, store


def _fill(store: Store) -> None:
    say(f"filling: {CLAWS} claws, {MESSAGES} messages, {AUDIT_ROWS} audit rows")
    names = [f"claw{i:02d}" for i in range(CLAWS)]
    with store.transaction():
        for name in names:
            store.claws.add(
                Claw(name, name.title(), ClawState.RUNNING, "v1", 1, 512,
                     "2026-01-01T00:00:00.000000Z")
            )  # fmt: skip
    with store.transaction():
        for i in range(MESSAGES):
            claw = names[i % CLAWS]
            store.messages.add(claw, "in" if i % 2 else "out", "cli", claw, f"message {i}")
    for name in names:
        store.approvals.request(name, "message.send", f"send a note for {name}", 900)
        store.usage.record(name, "tiny", prompt_tokens=100, completion_tokens=50, cost_usd=0.001)
    started = time.monotonic()
    batch = 5_000
    for start in range(0, AUDIT_ROWS, batch):
        with store.transaction():
            for i in range(start, min(start + batch, AUDIT_ROWS)):
                store.audit.append("controller", "claw.start", names[i % CLAWS], {"n": i})
    say(f"audit filled in {time.monotonic() - started:.0f} s")


def measure(requests: int = 200, pages: tuple[str, ...] = PAGES) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="clawden-bench-panel-", dir="/var/tmp"))
    try:
        return _measure(workdir, requests, pages)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(workdir: Path, requests: int, pages: tuple[str, ...]) -> dict[str, Any]:
    empty, _ = _home(workdir / "empty", full=False)
    full, store = _home(workdir / "full", full=True)
    results: dict[str, Any] = {
        "claws": CLAWS,
        "messages": MESSAGES,
        "audit_rows": AUDIT_ROWS,
        "requests_per_page": requests,
        "pages": {},
    }
    for path in pages:
        for client in (empty, full):  # warm: templates compiled, caches filled
            status = client.get(path).status_code
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
        times: dict[str, list[float]] = {"empty": [], "full": []}
        for _ in range(requests):
            for label, client in (("empty", empty), ("full", full)):
                started = time.perf_counter()
                client.get(path)
                times[label].append(time.perf_counter() - started)
        p95 = {label: percentile(values, 95) for label, values in times.items()}
        results["pages"][path] = {
            "empty": latency_ms(times["empty"]),
            "full": latency_ms(times["full"]),
            "p95_empty_ms": round(p95["empty"] * 1000, 2),
            "p95_full_ms": round(p95["full"] * 1000, 2),
            "p95_ratio": round(p95["full"] / p95["empty"], 2),
        }
        say(f"{path}: p95 {p95['empty'] * 1000:.1f} ms empty, {p95['full'] * 1000:.1f} ms full")
    results["worst_p95_ratio"] = max(p["p95_ratio"] for p in results["pages"].values())
    results["target_met"] = results["worst_p95_ratio"] <= 2.0
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--page", action="append", help="measure only these paths")
    args = p.parse_args(argv)
    unwind_on_sigterm()
    pages = tuple(args.page) if args.page else PAGES
    print(json.dumps({"machine": machine(), **measure(args.requests, pages)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
