"""Running the host tools that build images and disks (mmdebstrap, mkfs.ext4,
qemu-img), with failures turned into one-line, actionable errors.

Shared by the image builder and per-claw disk provisioning so both report a
missing tool the same way: by the Debian package that provides it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.core.errors import ClawdenError, Unavailable

# Which Debian package provides each tool we call: the fix an operator needs.
TOOL_PACKAGES: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}

# Keep only the end of a failing tool's output: enough to diagnose, short
# enough for one line.
_TAIL_CHARS = 300


def require_tool(name: str) -> str:
    """Absolute path of ``name`` on PATH (also /usr/sbin, which non-root PATHs lack)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise Unavailable(f"`{name}` is not installed", f"install it: apt-get install {package}")
    return found


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last[-_TAIL_CHARS:]


def run_tool(args: Sequence[str | Path], what: str, fix: str) -> str:
    """Run a tool to completion and return its stdout.

    On failure raise ``ClawdenError`` whose message says ``what`` failed plus
    the tool's last error line; ``fix`` is the operator's next step.
    """
    argv = [require_tool(str(args[0])), *(str(a) for a in args[1:])]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout)
        raise ClawdenError(f"{what} failed (exit {proc.returncode}): {detail}", fix)
    return proc.stdout


def stream_tool(
    args: Sequence[str | Path],
    on_line: Callable[[str], None],
    what: str,
    fix: str,
) -> None:
    """Run a long tool, handing each output line (stdout and stderr merged) to
    ``on_line`` as it appears, so a build shows signs of life."""
    argv = [require_tool(str(args[0])), *(str(a) for a in args[1:])]
    last = ""
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            # Remember the most telling line: the first "E:" line (the cause;
            # later ones are consequences), else the last line.
            if not last.startswith("E:"):
                last = line
            on_line(line)
        code = proc.wait()
    if code != 0:
        raise ClawdenError(f"{what} failed (exit {code}): {last[-_TAIL_CHARS:]}", fix)
