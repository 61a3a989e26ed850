"""Confined file access inside a claw's workspace: every path is resolved and
proven to stay inside the workspace, and opened component by component
without following links (``O_NOFOLLOW`` from a directory descriptor), so a
link the claw planted cannot lead a read or write elsewhere.

The workspace, skills and tools modules all read and write through here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class WorkspaceError(Exception):
    """A workspace operation the claw asked for cannot be done (bad name, escape)."""


def confined_parts(root: Path, rel: str) -> list[str]:
    """The components of ``rel`` after resolving links, proven to stay in ``root``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\0" in rel or any(p in ("", "..") for p in parts):
        raise WorkspaceError(f"{rel!r} is not a plain path inside the workspace")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *parts))
    if not target.startswith(real_root + os.sep):
        raise WorkspaceError(f"{rel} points outside the workspace")
    return os.path.relpath(target, real_root).split(os.sep)


def open_parent(root: Path, comps: list[str], *, create: bool = False) -> int:
    """A descriptor for the directory holding ``comps[-1]``, walked without links."""
    fd = os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for comp in comps[:-1]:
            if create:
                try:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            nfd = os.open(comp, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


def read_confined(root: Path, rel: str, max_bytes: int) -> tuple[str, int]:
    """The text of a regular file inside ``root`` and its full size in bytes.

    Files larger than ``max_bytes`` come back as their head and tail (the tail
    of a daily note is the newest part), so a huge file never fills memory.
    Raises FileNotFoundError when missing, WorkspaceError when it escapes or is
    not a regular file.
    """
    comps = confined_parts(root, rel)
    parent = open_parent(root, comps)
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(comps[-1], flags, dir_fd=parent)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise WorkspaceError(f"{rel} cannot be opened safely ({exc.strerror})") from exc
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise WorkspaceError(f"{rel} is not a regular file")
        size = info.st_size
        if size <= max_bytes:
            data = os.pread(fd, size, 0)
        else:
            half = max_bytes // 2
            data = os.pread(fd, half, 0) + b"\n\n" + os.pread(fd, half, size - half)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace"), size
