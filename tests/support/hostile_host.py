"""Start the host side of several claws in a process of its own
(``host_process``), with a real sshd as every claw's "guest" and a scripted
model server as the LLM upstream, and read what the host process costs.

Used by tests/integration/test_hostile_host_services.py and by the flood
benchmarks (bench/flood_latency.py, bench/controller_rss.py). The caller is
the guest side: it connects to the forwarded loopback ports in ``ports``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.local_sshd import local_sshd

REPO = Path(__file__).resolve().parents[2]
MODEL = "hostile-model"
# Answers every call at once, or after ``delay_s`` (to make calls overlap).
SCENARIO: dict[str, Any] = {
    "models": [MODEL],
    "steps": [
        {
            "name": "answer",
            "repeat": True,
            "reply": {"content": "ok", "usage": {"prompt_tokens": 20, "completion_tokens": 5}},
        }
    ],
}


def llm_toml(base_url: str, key: str, extra: str = "") -> str:
    """The upstream, its model as the default (the only one allowed), and a
    rate limit out of the way (each test sets what it attacks in ``extra``)."""
    return (
        f'provider = "scripted"\n[providers.scripted]\nbase_url = "{base_url}"\n'
        f'api_key = "{key}"\ndefault_model = ["{MODEL}"]\n'
        "[policy]\nrequests_per_minute = 1000000\n" + extra
    )


@dataclass
class HostProcess:
    home: Path
    proc: subprocess.Popen[str]
    ports: dict[str, dict[str, int]]  # claw -> service name -> loopback port
    upstream_url: str
    upstream_key: str
    upstream_log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "controller.log"

    @property
    def db_path(self) -> Path:
        return self.home / "clawden.db"

    def port(self, claw: str, service: str) -> int:
        return self.ports[claw][service]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM (peak RSS) in KiB and Threads, from /proc."""
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
        return out

    def rss_mib(self) -> float:
        return self.status()["VmRSS"] / 1024

    def peak_rss_mib(self) -> float:
        return self.status()["VmHWM"] / 1024

    def threads(self) -> int:
        return self.status()["Threads"]

    def reset_peak(self) -> None:
        """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def log_bytes(self) -> int:
        """The controller log's size, rotated files included."""
        return sum(p.stat().st_size for p in self.log_path.parent.glob("controller.log*"))

    def set_llm_policy(self, extra: str) -> None:
        """Rewrite llm.toml (the gateway re-reads it when it changes)."""
        config = self.home / "llm.toml"
        config.write_text(llm_toml(self.upstream_url, self.upstream_key, extra))
        config.chmod(0o600)
        # Its change is noticed by mtime: make sure the next call sees a new one.
        bump = time.time() + 1
        os.utime(config, (bump, bump))


@contextmanager
def _scripted_upstream(
    workdir: Path, scenario: Mapping[str, Any], key: str
) -> Iterator[tuple[str, Path]]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "scenario.json").write_text(json.dumps(scenario))
    log = workdir / "upstream.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.llm", "--scenario", str(workdir / "scenario.json"),
         "--api-key-env", "UPSTREAM_KEY", "--log", str(log)],
        cwd=REPO, env={**os.environ, "UPSTREAM_KEY": key, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"the scripted upstream did not start: {line!r}")
        yield line.split()[-1], log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def host_process(
    workdir: Path,
    claws: Sequence[str],
    scenario: Mapping[str, Any] = SCENARIO,
    llm_policy: str = "",
) -> Iterator[HostProcess]:
    """The host process serving ``claws``, each connected through the sshd."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    key = "sk-hostile-" + secrets.token_hex(8)
    with ExitStack() as stack:
        url, upstream_log = stack.enter_context(
            _scripted_upstream(workdir / "upstream", scenario, key)
        )
        (home / "llm.toml").write_text(llm_toml(url, key, llm_policy))
        (home / "llm.toml").chmod(0o600)
        sshd = stack.enter_context(local_sshd(workdir / "sshd"))
        described = workdir / "sshd.json"
        described.write_text(
            json.dumps(
                {
                    "socket": str(sshd.socket_path),
                    "host_public": sshd.host_public,
                    "client_private": sshd.client_private,
                    "user": sshd.user,
                }
            )
        )
        described.chmod(0o600)
        stderr = (workdir / "host.stderr").open("w")
        stack.callback(stderr.close)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.host_process", "--home", str(home),
             "--sshd", str(described), "--claws", ",".join(claws)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        stack.callback(_stop, proc)
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline() or "{}")
        if "ports" not in started:
            tail = (workdir / "host.stderr").read_text()[-2000:]
            raise RuntimeError(f"the host process did not start: {started}\n{tail}")
        yield HostProcess(home, proc, started["ports"], url, key, upstream_log)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # its signal to stop
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
