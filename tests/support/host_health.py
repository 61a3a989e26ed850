"""Whether the host stayed healthy through an attack, measured before, during
and after it (the hostile suite's second half of every test).

``healthy_through(host, ...)`` wraps an attack. While it runs, the *other*
claw (a claw that is not attacking) keeps using its host API and its LLM
gateway, and a sampler reads the host process's threads and RSS from /proc.
Afterwards it asserts, each with a message that says which bound was passed:

* every request of the other claw succeeded, each within ``VICTIM_DEADLINE_S``
  (a generous deadline, not a latency measurement: bench/flood_latency.py
  measures latency);
* the host's threads stayed within the attacker's caps during the attack and
  came back afterwards; its RSS grew by at most a bound, at its peak and after;
* the controller log grew by at most a bound;
* the rows stored before the attack are all still there, unchanged.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.hostile_host import MODEL, HostProcess

VICTIM_DEADLINE_S = 5.0
# The tables whose rows a claw's actions write; rows written before an
# attack must read the same after it.
STORED = ("messages", "approvals", "schedules", "llm_calls", "audit_log")


def request(
    port: int, method: str, path: str, body: Any = None, timeout: float = 10
) -> tuple[int, Any]:
    """One request on a new connection: (status, parsed JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, payload, headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def chat(port: int, model: str = MODEL, **extra: Any) -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return request(port, "POST", "/v1/chat/completions", body)


@dataclass
class VictimProbe:
    """The other claw going about its business: host API, then gateway, again."""

    host: HostProcess
    claw: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        api, llm = self.host.port(self.claw, "hostapi"), self.host.port(self.claw, "llm")
        while not self._stop.is_set():
            for what in ("host API whoami", "gateway call"):
                started = time.monotonic()
                try:
                    if what == "gateway call":
                        status, _body = chat(llm)
                    else:
                        status, _body = request(api, "GET", "/v1/whoami", None, 30)
                except OSError as exc:
                    status, _body = 0, repr(exc)
                took = time.monotonic() - started
                self.latencies.append(took)
                if status != 200:
                    self.failures.append(f"{what}: {status} {str(_body)[:120]}")
                elif took > VICTIM_DEADLINE_S:
                    self.failures.append(f"{what}: took {took:.1f} s")
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Sampler:
    """The host process's highest thread count and RSS, every 20 ms."""

    host: HostProcess
    threads: int = 0
    rss_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while True:
            try:
                status = self.host.status()
            except OSError:
                return  # the host process is gone: reported by the checks
            self.threads = max(self.threads, status["Threads"])
            self.rss_mib = max(self.rss_mib, status["VmRSS"] / 1024)
            if self._stop.wait(0.02):
                return

    def stop(self) -> None:
        self._stop.set()


def stored_rows(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in STORED}
    finally:
        db.close()


def query(db_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass(frozen=True)
class Bounds:
    """What one attack may cost the host. ``threads``: extra threads while it
    runs (the attacker's caps: 16 connections per service, and the other
    claw's two); the RSS bounds are MiB over the level before the attack."""

    threads: int = 16 + 4
    rss_peak_mib: float = 40.0
    rss_after_mib: float = 24.0
    log_kib: float = 24.0
    settle_s: float = 15.0


@contextmanager
def healthy_through(
    host: HostProcess, what: str, bounds: Bounds = Bounds(), victim: str = "bob"
) -> Iterator[None]:
    """Run the block (an attack) and assert the host stayed healthy (see above)."""
    before_rows = stored_rows(host.db_path)
    before = host.status()
    log_before = host.log_bytes()
    host.reset_peak()
    probe, sampler = VictimProbe(host, victim), Sampler(host)
    runners = [threading.Thread(target=t.run, daemon=True) for t in (probe, sampler)]
    for runner in runners:
        runner.start()
    try:
        yield
    finally:
        probe.stop()
        sampler.stop()
        for runner in runners:
            runner.join(60)
    problems: list[str] = []
    if not host.alive():
        raise AssertionError(f"{what}: the host process died (exit {host.proc.returncode})")
    peak_rss = max(sampler.rss_mib, host.peak_rss_mib())
    if probe.failures or not probe.latencies:
        problems.append(
            f"the other claw ({victim}) was not served: {len(probe.failures)} of "
            f"{len(probe.latencies)} requests failed or passed {VICTIM_DEADLINE_S} s: "
            f"{probe.failures[:5]}"
        )
    if sampler.threads > before["Threads"] + bounds.threads:
        problems.append(
            f"threads rose from {before['Threads']} to {sampler.threads} during the attack "
            f"(bound: +{bounds.threads})"
        )
    settled = _until(lambda: host.threads() <= before["Threads"] + 1, bounds.settle_s)
    if not settled:
        problems.append(
            f"threads did not come back: {host.threads()} {bounds.settle_s:.0f} s after the "
            f"attack, {before['Threads']} before"
        )
    base_rss = before["VmRSS"] / 1024
    if peak_rss > base_rss + bounds.rss_peak_mib:
        problems.append(
            f"RSS peaked at {peak_rss:.1f} MiB, {peak_rss - base_rss:.1f} over the "
            f"{base_rss:.1f} before (bound: +{bounds.rss_peak_mib:.0f} MiB)"
        )
    rss_after = host.rss_mib()
    if rss_after > base_rss + bounds.rss_after_mib:
        problems.append(
            f"RSS after the attack is {rss_after:.1f} MiB, {rss_after - base_rss:.1f} over "
            f"the {base_rss:.1f} before (bound: +{bounds.rss_after_mib:.0f} MiB)"
        )
    grown = (host.log_bytes() - log_before) / 1024
    if grown > bounds.log_kib:
        problems.append(f"the controller log grew by {grown:.1f} KiB (bound: {bounds.log_kib})")
    after_rows = stored_rows(host.db_path)
    for table, rows in before_rows.items():
        kept = after_rows[table][: len(rows)]
        if kept != rows:
            lost = len([r for r in rows if r not in after_rows[table]])
            problems.append(f"{table}: {lost} of the {len(rows)} rows stored before were lost")
    # Shown with -s, and under a failure: what the attack cost.
    print(
        f"\n{what}: threads {before['Threads']} -> peak {sampler.threads}; RSS {base_rss:.1f} "
        f"-> peak {peak_rss:.1f} -> {rss_after:.1f} MiB; log +{grown:.1f} KiB; "
        f"{victim}: {len(probe.latencies)} requests, slowest {max(probe.latencies or [0]):.2f} s"
    )
    if problems:
        raise AssertionError(f"{what}: the host was hurt:\n- " + "\n- ".join(problems))
