"""Real parts for integration tests: libvirtd, a built golden image, a running
controller, and booted claw VMs shared across the tests that can share them.

Everything lives under its own ``CLAWDEN_HOME`` in /var/tmp (QEMU runs as an
unprivileged user under qemu:///system and must be able to traverse it). The
golden image is built once into a cache directory and reused across runs — the
builder's own cache check (recipe hash + sha256 of every artefact) decides
whether it is still good.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
            [*CLAWDEN, *args], env=env, capture_output=True, text=True, timeout=timeout
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


@pytest.fixture(scope="session")
def controller(clawden_env: Env) -> Iterator[subprocess.Popen[str]]:
    proc = clawden_env.popen("serve")
    sock = clawden_env.home / "run" / "controller.sock"
    deadline = time.monotonic() + 120
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"controller did not start:\n{out}\n{err}")
        time.sleep(0.2)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(scope="session")
def two_claws(clawden_env: Env, controller: subprocess.Popen[str]) -> tuple[str, str]:
    """alice and bob, booted and ready; shared by the tests that only read them."""
    for name, member in (("alice", "Alice"), ("bob", "Bob")):
        clawden_env.run("claw", "create", name, "--member", member, "--timeout", "400")
    return "alice", "bob"
