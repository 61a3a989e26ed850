"""The claw's shell tool: ``/bin/sh -c`` in its workspace, bounded in time and output.

The command is model output, so it is treated as hostile to the agent process
itself (the VM is the security boundary; this is about the agent surviving):

* the environment is built from nothing — PATH, HOME, LANG, TERM — so nothing
  the agent was started with (tokens, proxy settings, test hooks) leaks in;
* it runs in a new session and process group, so a timeout kills the whole
  group, including anything it forked;
* output is read as it comes and only the first ``max_output`` bytes are kept;
  the rest is counted and thrown away, so ``yes`` cannot fill memory;
* stdin is /dev/null, so a command waiting for input ends instead of hanging.
"""

from __future__ import annotations

import os
import pwd
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 300.0
DEFAULT_MAX_OUTPUT = 16_384
_LINGER_S = 0.5  # after the shell exits, how long a background child may keep the pipe


@dataclass(frozen=True)
class ShellResult:
    exit_code: int | None  # None when killed for the timeout
    output: str
    dropped_bytes: int
    timed_out: bool
    seconds: float

    def as_text(self) -> str:
        """What the model sees: the output, then one line on how it ended."""
        parts = [self.output.rstrip("\n")] if self.output else []
        if self.dropped_bytes:
            parts.append(f"[output cut: {self.dropped_bytes} more bytes not shown]")
        if self.timed_out:
            parts.append(f"[killed: still running after {self.seconds:.0f} s]")
        else:
            parts.append(f"[exit code {self.exit_code}]")
        return "\n".join(parts)


def minimal_env() -> dict[str, str]:
    """A fresh environment: never a copy of the agent's, which may hold secrets."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        home = "/tmp"
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }


def run_shell(
    command: str,
    cwd: Path,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> ShellResult:
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=minimal_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None  # noqa: S101 - guaranteed by stdout=PIPE
    kept = bytearray()
    dropped = 0
    timed_out = False
    deadline = started + timeout_s
    with proc.stdout, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                # The shell is done; a background child may still hold the pipe.
                deadline = min(deadline, now + _LINGER_S)
            if now >= deadline:
                timed_out = proc.poll() is None
                break
            if not sel.select(timeout=min(deadline - now, 0.2)):
                continue
            chunk = os.read(fd, 65_536)
            if not chunk:
                break
            room = max_output - len(kept)
            kept += chunk[:room]
            dropped += max(len(chunk) - room, 0)
        _kill_group(proc.pid)
    code = proc.wait()
    return ShellResult(
        None if timed_out else code,
        kept.decode("utf-8", "replace"),
        dropped,
        timed_out,
        time.monotonic() - started,
    )


def _kill_group(pgid: int) -> None:
    """Kill what is left of the command's process group (its own children too)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
