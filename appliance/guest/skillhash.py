"""The content hash of a skill: the same function on the host and in the guest.

``clawden skill add`` shows and records the hash of the files it validated;
before indexing a skill, the claw hashes the folder on its disk the same way
and compares. Paths are sorted as bytes and each file contributes its path,
size and bytes, so the hash does not depend on the archive format, file order
or timestamps. Reading on the guest never follows a link: a link or special
file anywhere in the folder makes it unhashable (the host never installs one).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .confined import WorkspaceError, confined_parts

HASH_TAG = b"clawden-skill-v1\0"
MAX_HASHED_FILES = 256  # the host's install limits; a bigger folder cannot match
MAX_HASHED_BYTES = 8 * 1024 * 1024


def hash_files(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over sorted (path, size, content): the same files give the same
    hash on the host (from an archive or folder) and in the guest (on disk)."""
    digest = hashlib.sha256(HASH_TAG)
    for path, data in sorted(files, key=lambda f: f[0].encode()):
        digest.update(f"{path}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _walk_files(dir_fd: int, prefix: str, out: list[tuple[str, bytes]], budget: list[int]) -> None:
    for name in sorted(os.listdir(dir_fd)):
        rel = f"{prefix}{name}"
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        budget[0] -= 1
        if budget[0] < 0:
            raise WorkspaceError(f"it has more than {MAX_HASHED_FILES} files")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(name, flags | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                _walk_files(fd, rel + "/", out, budget)
            finally:
                os.close(fd)
        elif stat.S_ISREG(info.st_mode):
            budget[1] -= info.st_size
            if budget[1] < 0:
                raise WorkspaceError(f"it is larger than {MAX_HASHED_BYTES} bytes")
            fd = os.open(name, flags, dir_fd=dir_fd)
            try:
                out.append((rel, os.pread(fd, info.st_size + 1, 0)))
            finally:
                os.close(fd)
        else:
            raise WorkspaceError(f"{rel} is a link or special file")


def skill_hash(workspace: Path, folder: str) -> str:
    """The content hash of ``skills/<folder>`` as it is on disk, never through a link."""
    comps = confined_parts(workspace, f"skills/{folder}")
    if comps != ["skills", folder]:
        raise WorkspaceError("the skill folder is a link")
    root = os.open(os.path.realpath(workspace), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = [root]
    try:
        for comp in comps:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fds.append(os.open(comp, flags, dir_fd=fds[-1]))
        files: list[tuple[str, bytes]] = []
        _walk_files(fds[-1], "", files, [MAX_HASHED_FILES, MAX_HASHED_BYTES])
    except OSError as exc:
        raise WorkspaceError(f"its files cannot be read safely ({exc.strerror})") from exc
    finally:
        for fd in fds:
            os.close(fd)
    return hash_files(files)
