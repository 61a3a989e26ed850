"""A claw's serial console log, read on the host for `clawden claw console`
and the panel's claw page.

The log is written by QEMU from the guest's serial port: the guest's (so
untrusted) bytes, possibly large. Only its tail is read, decoded leniently;
callers escape it before showing it (``printable``, the panel's ``visible``).
"""

from __future__ import annotations

import os

from appliance.config import Settings
from appliance.controller.guestfiles import ClawFiles

# A line of a serial log is short; reading this much from the end is enough
# for any sensible tail without reading a log that grew to gigabytes.
_BYTES_PER_LINE = 512
_MIN_READ = 64 * 1024


def console_tail(settings: Settings, claw: str, lines: int = 0) -> list[str] | None:
    """The last ``lines`` lines of ``claw``'s console log (all of it for 0),
    or None when it has none yet (never started)."""
    log = ClawFiles.for_claw(settings, claw).console_log
    try:
        with open(log, "rb") as f:
            if lines > 0:
                size = f.seek(0, os.SEEK_END)
                start = max(0, size - max(_MIN_READ, lines * _BYTES_PER_LINE))
                f.seek(start)
                data = f.read()
                text = data.decode("utf-8", "replace").splitlines()
                if start > 0 and text:
                    text = text[1:]  # the first line read is likely a partial one
                return text[-lines:]
            return f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return None
