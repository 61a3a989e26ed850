"""Which of a claw's workspace files the host shows and edits, as pure rules.

The workspace is written by the claw, so a path the panel passes on to the
guest must never come from the claw or the browser unchecked: only the
OpenClaw files by their exact names and the daily notes
``memory/YYYY-MM-DD.md`` are ever read, and only ``USER.md`` and
``HEARTBEAT.md`` (the owner's side of the conversation) are ever written.
An allowlist, not a blocklist: no ``..``, no absolute path, no other folder,
no link name a claw could plant can get through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.core.errors import InvalidInput
from appliance.core.textsafe import printable

# The top-level files in the order the claw page lists them.
TOP_FILES = (
    "SOUL.md",
    "USER.md",
    "MEMORY.md",
    "HEARTBEAT.md",
    "AGENTS.md",
    "IDENTITY.md",
    "TOOLS.md",
    "BOOTSTRAP.md",
)
MEMORY_DIR = "memory"
EDITABLE = ("USER.md", "HEARTBEAT.md")
_DAILY = re.compile(r"^memory/\d{4}-\d{2}-\d{2}\.md$")
DAILY_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}\.md$")

# What the host reads of one file: the agent's own prompt caps are smaller,
# so more than this is never useful and only costs the host memory.
MAX_READ_BYTES = 256 * 1024
# What the panel writes: USER.md and HEARTBEAT.md go into every prompt (the
# agent cuts them at its per-file cap); 32 KiB is far more than either needs.
MAX_EDIT_BYTES = 32 * 1024
# At most this many daily notes are listed (newest first).
MAX_DAILY_NOTES = 60


def check_workspace_file(path: str) -> str:
    """``path`` if it names a file the host may read, else ``InvalidInput``."""
    if path in TOP_FILES or _DAILY.fullmatch(path):
        return path
    raise InvalidInput(
        f"{printable(repr(path[:80]))} is not a workspace file the panel shows",
        f"choose one of {', '.join(TOP_FILES)} or memory/YYYY-MM-DD.md",
    )


def check_editable_file(path: str) -> str:
    """``path`` if the panel may write it (``EDITABLE``), else ``InvalidInput``."""
    if path not in EDITABLE:
        raise InvalidInput(
            f"{printable(repr(path[:80]))} cannot be edited in the panel",
            f"only {' and '.join(EDITABLE)} can be edited here",
        )
    return path


def check_edit_text(path: str, text: str) -> bytes:
    """The UTF-8 bytes to write for ``text``, refused past ``MAX_EDIT_BYTES``.
    Line ends are normalised: a browser's textarea sends CRLF."""
    data = text.replace("\r\n", "\n").encode("utf-8", "replace")
    if len(data) > MAX_EDIT_BYTES:
        raise InvalidInput(
            f"{path} would be {len(data)} bytes, over the {MAX_EDIT_BYTES // 1024} KiB limit",
            "shorten it: the claw reads only the start of a long file anyway",
        )
    return data


def daily_notes(names: list[str]) -> list[str]:
    """The daily-note paths among the names listed in ``memory/``, newest
    first, at most ``MAX_DAILY_NOTES``; any other name is ignored."""
    daily = sorted((n for n in names if DAILY_NAME.fullmatch(n)), reverse=True)
    return [f"{MEMORY_DIR}/{n}" for n in daily[:MAX_DAILY_NOTES]]


@dataclass(frozen=True)
class WorkspaceFile:
    path: str  # as ``check_workspace_file`` accepts it
    size: int
    modified: float  # seconds since the epoch, as the guest reports it


@dataclass(frozen=True)
class FileText:
    path: str
    text: str  # decoded leniently; still the claw's (hostile) text
    truncated: bool  # the file is longer than ``MAX_READ_BYTES``
