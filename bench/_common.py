"""Shared plumbing for the benchmarks: a private CLAWDEN_HOME, the CLI, the
controller, waiting for a quiet machine, and summary statistics.

Every benchmark measures through the operator's real entry points (the
``clawden`` console script and ``clawden serve``), so the figures include what
an operator waits for, not just the library calls underneath.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The console script next to the interpreter running the bench: the same venv,
# the same code, without depending on PATH.
CLAWDEN = str(Path(sys.executable).with_name("clawden"))
URI = os.environ.get("CLAWDEN_LIBVIRT_URI", "qemu:///system")
IMAGE_CACHE = Path(os.environ.get("CLAWDEN_BENCH_IMAGE_CACHE", "/var/tmp/clawden-test-images"))
CLAW_PREFIX = "bench-"
DOMAIN_PREFIX = "clawden-"  # appliance.core.model.DOMAIN_PREFIX (every installation's)
RESULTS = Path(__file__).resolve().parent / "results"
QUIET_POLL_S = 20.0
QUIET_MAX_S = 15 * 60.0


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every ``finally`` destroys our
    claws, stops our controller and removes our homes."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))


def say(line: str) -> None:
    # Progress goes to stderr so stdout stays one clean JSON document.
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class Disturbed(RuntimeError):
    """Another clawden run appeared while we measured: the figures are void."""


def foreign_domains() -> list[str]:
    """``clawden-*`` domains that are not ours (another home's claws)."""
    out = subprocess.run(
        ["virsh", "-c", URI, "list", "--all", "--name"], capture_output=True, text=True
    ).stdout
    return [
        d
        for d in (line.strip() for line in out.splitlines())
        if d.startswith(DOMAIN_PREFIX) and not _is_bench_domain(d)
    ]


def _is_bench_domain(domain: str) -> bool:
    """A domain of a bench claw (all named ``bench-*``), of any bench home:
    ``clawden-<installation tag>-bench-*`` (``core/model.py: domain_name``),
    or ``clawden-bench-*`` as named before installation tags."""
    rest = domain[len(DOMAIN_PREFIX) :]
    return rest.startswith(CLAW_PREFIX) or rest.partition("-")[2].startswith(CLAW_PREFIX)


def busy_reason() -> str | None:
    """Why this is not the moment to measure, or None.

    Two cores are shared: a concurrent integration run boots VMs of its own
    and would distort both its timings and ours. (Each home's domains carry
    its installation tag and UUIDs, so their controllers no longer remove
    each other's claws; the contention is what remains.)
    """
    # pgrep never matches itself, and this interpreter's argv has no "pytest".
    found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True)
    if found.returncode == 0:
        return f"pytest is running (pids {' '.join(found.stdout.split())})"
    others = foreign_domains()
    if others:
        return f"another home's claws exist ({', '.join(others)})"
    return None


def wait_for_quiet(max_wait: float = QUIET_MAX_S, poll: float = QUIET_POLL_S) -> float:
    """Wait until ``busy_reason()`` is None; return seconds waited."""
    started = time.monotonic()
    while True:
        reason = busy_reason()
        if reason is None:
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited > max_wait:
            raise RuntimeError(f"still busy after {waited:.0f} s: {reason}; rerun later")
        say(f"{reason}; waiting")
        time.sleep(poll)


def with_retries(
    part: str, body: Callable[[], dict[str, Any]], attempts: int = 3
) -> dict[str, Any]:
    """Run ``body`` on a quiet machine; start over if it was disturbed.
    Returns ``{"result": body's, "waited_for_quiet_s": .., "discarded_attempts": [..]}``."""
    waited = 0.0
    disturbed: list[str] = []
    for _ in range(attempts):
        waited += wait_for_quiet()
        try:
            result = body()
        except Disturbed as exc:
            disturbed.append(str(exc))
            say(f"{part}: disturbed ({exc}); its figures are discarded, starting over")
            continue
        return {
            "waited_for_quiet_s": round(waited),
            "discarded_attempts": disturbed,
            "result": result,
        }
    raise RuntimeError(f"{part}: disturbed {attempts} times: {disturbed}")


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "runs": [round(v, 2) for v in values],
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on; TCG vs KVM changes everything."""
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    # Read-only git queries: which code was measured (the tree may be dirty).
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "git_head": head,
        "git_dirty_paths": len(dirty),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 2**20, 1),
        "qemu": qemu[0] if qemu else "?",
        "libvirt_uri": URI,
        "accel_forced": os.environ.get("CLAWDEN_ACCEL", ""),
    }


@dataclass
class Home:
    """A private CLAWDEN_HOME, so the bench never touches anyone else's claws."""

    path: Path
    env: dict[str, str]

    def clawden(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        child = subprocess.Popen(
            [CLAWDEN, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            out, err = child.communicate(timeout=timeout)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, timeout): SIGINT is the CLI's
            # clean stop (an image build unmounts its chroot); SIGKILL, what
            # subprocess.run would send, leaves the build's mounts behind.
            child.send_signal(signal.SIGINT)
            try:
                child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
            raise
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"clawden {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def timed(self, *args: str, timeout: float = 900) -> float:
        started = time.monotonic()
        self.clawden(*args, timeout=timeout)
        return time.monotonic() - started

    def claws(self) -> list[str]:
        out = self.clawden("claw", "list", check=False).stdout
        return [
            line.split()[0] for line in out.splitlines()[1:] if line.strip().startswith(CLAW_PREFIX)
        ]

    def destroy_all(self) -> None:
        for name in self.claws():
            say(f"destroying {name}")
            self.clawden("claw", "destroy", name, "--yes", check=False, timeout=300)


@contextmanager
def bench_home(prefix: str, shared_images: bool = True) -> Iterator[Home]:
    """A fresh home under /var/tmp (0711: QEMU runs as libvirt-qemu under
    qemu:///system and must traverse it to reach the disks), removed after.

    ``shared_images`` links ``images`` to the golden-image cache so claws boot
    the already-built image instead of paying a build per bench run."""
    path = Path(tempfile.mkdtemp(prefix=f"clawden-{prefix}-", dir="/var/tmp"))
    path.chmod(0o711)
    if shared_images:
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        IMAGE_CACHE.chmod(0o711)
        (path / "images").symlink_to(IMAGE_CACHE, target_is_directory=True)
    env = dict(os.environ, CLAWDEN_HOME=str(path), CLAWDEN_LIBVIRT_URI=URI)
    home = Home(path, env)
    try:
        yield home
    finally:
        try:
            home.destroy_all()
        finally:
            images = path / "images"
            if images.is_symlink():
                images.unlink()  # never rmtree through the link into the shared cache
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Controller:
    proc: subprocess.Popen[bytes]
    log: Path
    panel_url: str | None = None  # with ``controller(home, panel=True)``

    @property
    def pid(self) -> int:
        return self.proc.pid


class _Watchdog:
    """Stops our controller the moment another run shows up.

    Two runs' VMs on the same cores distort both runs' figures. Stopping
    ours at once spares theirs; the part is then redone on a quiet machine."""

    def __init__(self, proc: subprocess.Popen[bytes], poll: float = 2.0) -> None:
        self.reason: str | None = None
        self._proc = proc
        self._poll = poll
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._poll):
            reason = busy_reason()
            if reason is not None:
                self.reason = reason
                say(f"{reason}: stopping our controller")
                self._proc.send_signal(signal.SIGTERM)
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def controller(home: Home, panel: bool = False) -> Iterator[Controller]:
    """``clawden serve`` in the background; SIGTERM (its clean stop) on exit.
    Without the admin panel unless ``panel`` (then on a free loopback port:
    the default one may be an appliance's on this machine).

    Raises ``Disturbed`` (whatever else failed) if another run appeared."""
    from appliance.controller import rpc
    from appliance.core.errors import Unavailable

    log = home.path / "controller.log"
    sock = home.path / "run" / "controller.sock"
    # Unbuffered, so the log shows what the controller said if a run fails.
    env = dict(home.env, PYTHONUNBUFFERED="1")
    # Last check right before the controller's first reconcile.
    reason = busy_reason()
    if reason is not None:
        raise Disturbed(reason)
    panel_url = None
    serve_args = ["--no-panel"]
    if panel:
        panel_url = f"http://127.0.0.1:{free_port()}"
        serve_args = ["--listen", panel_url.removeprefix("http://")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CLAWDEN, "serve", *serve_args], env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    watchdog = _Watchdog(proc)
    ctl = Controller(proc, log, panel_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller did not start:\n{log.read_text()}")
            # The socket is bound before the initial reconcile, but it only
            # answers once the controller serves: a ping is the ready signal.
            if sock.exists():
                try:
                    if rpc.call(sock, {"op": "ping"}, timeout=5).get("pid") == proc.pid:
                        break
                except (Unavailable, OSError):
                    pass
            time.sleep(0.2)
        yield ctl
    except Exception as exc:
        if watchdog.reason is not None:
            raise Disturbed(watchdog.reason) from exc
        raise
    finally:
        watchdog.close()
        # Claws first, while the controller still supervises their channels.
        home.destroy_all()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Kept for the record (bench/results/ is gitignored): what the
        # controller saw is the first thing to read when a run misbehaves.
        logs = RESULTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%H%M%S")
        shutil.copy(log, logs / f"{home.path.name}-{stamp}-controller.log")
    if watchdog.reason is not None:
        raise Disturbed(watchdog.reason)


def ensure_image(home: Home) -> dict[str, Any]:
    """Make sure the golden image exists (cached: a hash check) and prime the
    accelerator decision, which the first create would otherwise pay for.

    Both are one-time costs per host, reported separately rather than folded
    into the first create→ready run."""
    started = time.monotonic()
    home.clawden("image", "build", timeout=1800)
    image_s = time.monotonic() - started
    from appliance.app import accelerator_picker
    from appliance.config import Settings
    from appliance.image.manifest import latest_image

    settings = Settings.from_env(home.env)
    image = latest_image(settings.images_dir)
    if image is None:
        raise RuntimeError("no golden image after `clawden image build`")
    settings.ensure_dirs()
    started = time.monotonic()
    choice = accelerator_picker(settings)()
    return {
        "image": image.version,
        "image_build_or_check_s": round(image_s, 2),
        "accelerator": choice.accelerator.value,
        "accelerator_note": choice.note,
        "accelerator_probe_s": round(time.monotonic() - started, 2),
    }


def kib_to_mib(kib: float) -> float:
    return round(kib / 1024, 1)
