"""Real parts for integration tests: libvirtd, a built golden image, a running
controller, and booted claw VMs shared across the tests that can share them.

Everything lives under its own ``CLAWDEN_HOME`` in /var/tmp (QEMU runs as an
unprivileged user under qemu:///system and must be able to traverse it). The
golden image is built once into a cache directory and reused across runs — the
builder's own cache check (recipe hash + sha256 of every artefact) decides
whether it is still good.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.controller import rpc
from appliance.core.errors import ClawdenError
from appliance.llm.scripted import ScriptedModelServer
from tests.support.panel import free_port

REPO = Path(__file__).resolve().parents[2]
CLAWDEN = [sys.executable, "-m", "appliance"]
IMAGE_CACHE = Path(os.environ.get("CLAWDEN_TEST_IMAGE_CACHE", "/var/tmp/clawden-test-images"))
URI = os.environ.get("CLAWDEN_TEST_LIBVIRT_URI", "qemu:///system")


@dataclass
class Env:
    home: Path
    env: dict[str, str]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        proc = subprocess.run(
            [*CLAWDEN, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,  # a command never waits on the test's stdin
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"clawden {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*CLAWDEN, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def make_home(prefix: str) -> Path:
    base = Path("/var/tmp")
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    home.chmod(0o711)
    return home


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CLAWDEN_HOME=str(home),
        CLAWDEN_LIBVIRT_URI=URI,
        PYTHONPATH=str(REPO),
    )
    return env


def _link_image_cache(home: Path) -> None:
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    IMAGE_CACHE.chmod(0o711)
    (home / "images").symlink_to(IMAGE_CACHE, target_is_directory=True)


@pytest.fixture(scope="session")
def clawden_env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("integration tests run as root (qemu:///system, image build)")
    home = make_home("clawden-it-")
    _link_image_cache(home)
    env = Env(home, env_for(home))
    env.run("image", "build", timeout=1800)
    yield env
    _cleanup_home(env)


def _cleanup_home(env: Env) -> None:
    # Destroy whatever a failed test left behind, so no VM outlives the run.
    listing = env.run("claw", "list", check=False).stdout
    for line in listing.splitlines()[1:]:
        name = line.split()[0] if line.strip() else ""
        if name and not name.startswith("no"):
            env.run("claw", "destroy", name, "--yes", check=False)
    images = env.home / "images"
    if images.is_symlink():
        images.unlink()
    shutil.rmtree(env.home, ignore_errors=True)


class RunningController:
    """The session's `clawden serve`, which a test may restart (state must survive it)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        # The panel on a port of its own: the default (7780) may be an
        # appliance's on this very machine.
        self.panel_port = free_port()
        self.proc = self._start()

    @property
    def panel_url(self) -> str:
        return f"http://127.0.0.1:{self.panel_port}"

    def _start(self) -> subprocess.Popen[str]:
        # Output to a file, not a pipe: nobody reads it while tests run, and
        # a full pipe would block the controller.
        log = (self.env.home / "controller.log").open("a")
        proc = subprocess.Popen(
            [*CLAWDEN, "serve", "--listen", f"127.0.0.1:{self.panel_port}"],
            env=self.env.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        sock = self.env.home / "run" / "controller.sock"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"controller did not start:\n{self.log_tail()}")
            try:
                # Its own pid answering: not a stale socket of the one before.
                if rpc.call(sock, {"op": "ping"}, timeout=5).get("pid") == proc.pid:
                    return proc
            except ClawdenError:
                pass
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        path = self.env.home / "controller.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.proc = self._start()


@pytest.fixture(scope="session")
def controller(clawden_env: Env) -> Iterator[RunningController]:
    running = RunningController(clawden_env)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def two_claws(clawden_env: Env, controller: subprocess.Popen[str]) -> tuple[str, str]:
    """alice and bob, booted and ready; shared by the tests that only read them."""
    for name, member in (("alice", "Alice"), ("bob", "Bob")):
        clawden_env.run("claw", "create", name, "--member", member, "--timeout", "400")
    return "alice", "bob"


@contextmanager
def scripted_llm(
    env: Env, scenario: dict[str, Any], key: str | None = None, policy: str = ""
) -> Iterator[ScriptedModelServer]:
    """A scripted upstream configured as the gateway's provider for the block.

    The gateway reads ``llm.toml`` per call, so this takes effect at once; the
    file (which holds the upstream key, hence mode 0600) is removed afterwards
    so no later test talks to a server that is gone. The scenario's models are
    the provider's ``default_model``: the gateway allows nothing else by default.
    """
    key = key or "sk-clawden-test-" + secrets.token_hex(8)
    config = env.home / "llm.toml"
    with ScriptedModelServer(scenario, api_key=key) as upstream:
        models = json.dumps(list(upstream.script.scenario.models))  # a valid TOML array
        config.write_text(
            'provider = "scripted"\n'
            "[providers.scripted]\n"
            f'base_url = "{upstream.base_url}"\n'
            f"default_model = {models}\n"
            f'api_key = "{key}"\n' + policy
        )
        config.chmod(0o600)
        try:
            yield upstream
        finally:
            config.unlink(missing_ok=True)
