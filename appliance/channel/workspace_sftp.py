"""Reading and writing a claw's workspace files over its channel's SFTP, for
the panel's claw page (which files: ``core/workspace_files.py``).

SFTP runs in the guest as the agent's user (sshd's ``Subsystem sftp`` goes
through ``as-claw``), so whatever a link in the workspace points at, the host
reads only what the claw itself could read. Still, the host never follows a
link it can see: each path is ``lstat``-ed and only a plain file is read,
only a real ``memory/`` folder is listed. Reads are capped; a write goes to a
temporary name and is renamed over the file (a link there is replaced, not
followed), so the agent sees the old text or the new, never half.
"""

from __future__ import annotations

import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import paramiko

from appliance.channel.sftp import GUEST_WORKSPACE, open_sftp
from appliance.core.errors import InvalidInput, Unavailable
from appliance.core.textsafe import printable
from appliance.core.workspace_files import (
    MAX_READ_BYTES,
    MEMORY_DIR,
    TOP_FILES,
    FileText,
    WorkspaceFile,
    check_editable_file,
    check_workspace_file,
    daily_notes,
)


@contextmanager
def _sftp(transport: paramiko.Transport, doing: str) -> Iterator[paramiko.SFTPClient]:
    with open_sftp(transport) as sftp:
        try:
            yield sftp
        except (OSError, paramiko.SSHException) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise Unavailable(
                f"{doing} failed: {printable(str(exc) or type(exc).__name__)}",
                "check `clawden claw status NAME` and retry",
            ) from exc


def _mode(sftp: paramiko.SFTPClient, path: str) -> int | None:
    try:
        return sftp.lstat(path).st_mode or 0
    except FileNotFoundError:
        return None


def list_files(transport: paramiko.Transport, root: str = GUEST_WORKSPACE) -> list[WorkspaceFile]:
    """The workspace files the panel shows that exist as plain files."""
    found: list[WorkspaceFile] = []
    with _sftp(transport, "listing the workspace") as sftp:
        attrs = {a.filename: a for a in sftp.listdir_attr(root)}
        for name in TOP_FILES:
            a = attrs.get(name)
            if a is not None and stat.S_ISREG(a.st_mode or 0):
                found.append(WorkspaceFile(name, a.st_size or 0, float(a.st_mtime or 0)))
        memory = attrs.get(MEMORY_DIR)
        if memory is not None and stat.S_ISDIR(memory.st_mode or 0):
            notes = {
                a.filename: a
                for a in sftp.listdir_attr(f"{root}/{MEMORY_DIR}")
                if stat.S_ISREG(a.st_mode or 0)
            }
            for path in daily_notes(list(notes)):
                a = notes[path.removeprefix(f"{MEMORY_DIR}/")]
                found.append(WorkspaceFile(path, a.st_size or 0, float(a.st_mtime or 0)))
    return found


def read_file(
    transport: paramiko.Transport,
    path: str,
    root: str = GUEST_WORKSPACE,
    max_bytes: int = MAX_READ_BYTES,
) -> FileText | None:
    """``path``'s text (its first ``max_bytes``), or None when it is missing."""
    path = check_workspace_file(path)
    with _sftp(transport, f"reading {path}") as sftp:
        head, _, _name = path.rpartition("/")
        folder = _mode(sftp, f"{root}/{head}") if head else None
        if head and (folder is None or not stat.S_ISDIR(folder)):
            return None  # no memory/ folder (or a link in its place): no note
        mode = _mode(sftp, f"{root}/{path}")
        if mode is None:
            return None
        if not stat.S_ISREG(mode):
            raise InvalidInput(
                f"{path} in the claw's workspace is not a plain file (a link?)",
                "look at it with `clawden claw exec NAME -- ls -l /data/workspace`",
            )
        with sftp.open(f"{root}/{path}", "rb") as handle:
            data = handle.read(max_bytes + 1)
    return FileText(path, data[:max_bytes].decode("utf-8", "replace"), len(data) > max_bytes)


def write_file(
    transport: paramiko.Transport, path: str, data: bytes, root: str = GUEST_WORKSPACE
) -> None:
    """Replace ``path`` (an editable top-level file) with ``data``, atomically."""
    path = check_editable_file(path)
    tmp = f"{root}/.{path}.clawden-{secrets.token_hex(4)}"
    with _sftp(transport, f"writing {path}") as sftp:
        if _mode(sftp, root) is None:
            raise Unavailable(f"{root} is missing on the claw", "restart the claw and retry")
        try:
            with sftp.open(tmp, "wbx") as out:
                out.write(data)
            sftp.chmod(tmp, 0o644)
            sftp.posix_rename(tmp, f"{root}/{path}")
        except BaseException:
            try:
                sftp.remove(tmp)
            except OSError:
                pass
            raise
