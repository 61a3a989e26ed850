"""What a hostile claw throws at the host services, for the flood benchmarks.

Each flood runs in a process of its own (``start_flood``), so that its
threads never compete with the measuring process for the GIL: what slows
the other claw's requests is then the host, not the benchmark. Every flood
aims at the attacker's own forwarded ports, as a compromised claw would:

``connections``  opens connections to all three services as fast as it can,
                 holding up to 400 and closing the oldest (the host keeps 16
                 per service and closes the rest at once);
``requests``     16 threads sending requests back to back on keep-alive
                 connections: messages (refused by the rate quota after the
                 burst), schedule listings (a database read) and malformed
                 heads (a 400 each);
``longpolls``    300 threads each long-polling an approval, again as soon as
                 it is answered or refused;
``gateway``      16 threads calling the LLM gateway back to back (2 in flight
                 upstream, the claw's concurrency cap; the rest refused).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FLOODS = ("connections", "requests", "longpolls", "gateway")


# What the flood got done (requests answered, or connections made), shared
# with the measuring process: proof that the flood ran, and at what rate.
_done: Any = None


def _count() -> None:
    with _done.get_lock():
        _done.value += 1


def _forever(stop: threading.Event, body: Callable[[], None]) -> None:
    while not stop.is_set():
        try:
            body()
            _count()
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(0.01)  # refused or cut: at once again, as an attacker would


def _connections(ports: dict[str, int], stop: threading.Event) -> None:
    held: deque[socket.socket] = deque()
    targets = list(ports.values())
    n = 0
    while not stop.is_set():
        try:
            held.append(socket.create_connection(("127.0.0.1", targets[n % 3]), timeout=5))
            _count()
        except OSError:
            time.sleep(0.01)
        n += 1
        if len(held) > 400:
            held.popleft().close()
    for sock in held:
        sock.close()


def _requester(ports: dict[str, int], stop: threading.Event, seed: int) -> Callable[[], None]:
    conn = http.client.HTTPConnection("127.0.0.1", ports["hostapi"], timeout=10)
    calls = [
        ("POST", "/v1/messages", json.dumps({"text": "spam"}).encode()),
        ("GET", "/v1/schedules", None),
        ("POST", "/v1/messages", b'{"text": "\\ud800"}'),
    ]
    n = seed

    def one() -> None:
        nonlocal n, conn
        method, path, body = calls[n % len(calls)]
        n += 1
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", ports["hostapi"], timeout=10)
            raise

    return one


def _post(port: int, path: str, body: Any, timeout: float = 60) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _run(
    kind: str, ports: dict[str, int], model: str, approval: str, stop_at: float, done: Any
) -> None:
    """The flood's process: runs until ``stop_at`` (time.time())."""
    global _done
    _done = done
    stop = threading.Event()
    threads: list[threading.Thread] = []
    if kind == "connections":
        threads.append(threading.Thread(target=_connections, args=(ports, stop)))
    elif kind == "requests":
        threads += [
            threading.Thread(target=_forever, args=(stop, _requester(ports, stop, n)))
            for n in range(16)
        ]
    elif kind == "longpolls":
        body = {"id": approval, "wait_s": 20}
        threads += [
            threading.Thread(
                target=_forever,
                args=(stop, lambda: _post(ports["hostapi"], "/v1/approvals/wait", body)),
            )
            for _ in range(300)
        ]
    elif kind == "gateway":
        call = {"model": model, "messages": [{"role": "user", "content": "x" * 2000}]}
        threads += [
            threading.Thread(
                target=_forever,
                args=(stop, lambda: _post(ports["llm"], "/v1/chat/completions", call)),
            )
            for _ in range(16)
        ]
    else:
        raise ValueError(f"unknown flood {kind!r}")
    for thread in threads:
        thread.daemon = True
        thread.start()
    time.sleep(max(0.0, stop_at - time.time()))
    stop.set()


# cgroup v1's cpu controller (this machine's, and CI's: no systemd); on a
# cgroup v2 host the attacker is left uncapped and the results say so.
_CPU_CGROUP = Path("/sys/fs/cgroup/cpu")


def cap_cpu(pids: list[int], percent: int, name: str) -> bool:
    """Hold ``pids`` to ``percent`` of one core together, as a claw's
    ``<cputune>`` holds its VM (everything a claw runs, its sshd included,
    shares that quota); whether a cap could be set."""
    if percent <= 0 or not (_CPU_CGROUP / "cpu.cfs_quota_us").exists():
        return False
    group = _CPU_CGROUP / name
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text(str(percent * 1000))
    for pid in pids:
        (group / "cgroup.procs").write_text(str(pid))
    return True


def uncap(name: str) -> None:
    group = _CPU_CGROUP / name
    if not group.exists():
        return
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (_CPU_CGROUP / "cgroup.procs").write_text(pid)
        except OSError:
            pass  # gone meanwhile
    group.rmdir()


@contextmanager
def flood(
    kind: str,
    ports: dict[str, int],
    model: str,
    approval: str,
    seconds: float,
    cpu_percent: int = 0,
    also_capped: tuple[int, ...] = (),
) -> Iterator[Callable[[], int]]:
    """Run flood ``kind`` for at most ``seconds`` in its own process, while
    the block runs (it is stopped when the block ends). With ``cpu_percent``,
    the flood (and ``also_capped``, e.g. the attacker's sshd) share that cap.
    Yields a function that says how much the flood has done so far (requests
    answered, refusals included; connections made)."""
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Value("q", 0)
    proc = ctx.Process(
        target=_run, args=(kind, ports, model, approval, time.time() + seconds, done), daemon=True
    )
    proc.start()
    assert proc.pid is not None
    if cpu_percent:
        cap_cpu([proc.pid, *also_capped], cpu_percent, "clawden-bench-attacker")
    try:
        time.sleep(1.0)  # let it reach full strength before anything is measured
        yield lambda: int(done.value)
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if cpu_percent:
            uncap("clawden-bench-attacker")
