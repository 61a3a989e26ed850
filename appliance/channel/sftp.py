"""Copying a staged host folder into a claw's workspace over SFTP (``put_tree``).

The guest has no network, and only the controller holds a claw's SSH
transport, so skills and imported workspaces travel as SFTP files on it. The
SFTP server runs as the ``claw`` user, which bounds what any mistake could
reach; still, the workspace is written by an untrusted claw, so the copy
never goes *through* a guest symlink: every directory on the way is checked
with ``lstat`` before anything is written (and the whole copy is refused when
one is a link or not a folder).

Each file is uploaded to a temporary name beside its target and renamed over
it (``posix-rename``), so a reader sees the old file or the new one, never
half of one. Two modes:

* ``replace`` (a skill folder): the tree goes to ``.incoming-<rand>`` beside
  the target, the old folder is renamed away, the new one renamed in, the old
  one removed: the skill changes in one step.
* ``merge`` (a workspace import): files are added; a guest file that would be
  replaced with different content is first moved to
  ``.clawden-import-backup/<UTC time>/<path>``, so nothing stored is lost.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko

from appliance.core.errors import ClawdenError, InvalidInput, Unavailable
from appliance.core.textsafe import printable

GUEST_WORKSPACE = "/data/workspace"
BACKUP_DIR = ".clawden-import-backup"
SFTP_TIMEOUT_S = 60.0
_CHUNK = 32 * 1024
_MAX_COMPARE = 4 * 1024 * 1024  # same-size files up to this are compared, not backed up

# One progress or result record, as the controller's RPC streams them.
Reply = dict[str, Any]
Send = Callable[[Reply], None]
Tree = tuple[list[str], list[tuple[str, int]]]


def validate_dest(dest: str) -> str:
    """``dest`` as a clean relative path ("" for the workspace itself)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in dest) or "\\" in dest:
        raise InvalidInput(f"destination {printable(repr(dest))} has a control character", "")
    if dest.startswith("/"):
        raise InvalidInput(f"destination {printable(dest)} is absolute", "give a relative path")
    parts = [p for p in dest.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"destination {printable(dest)} has '..'", "give a path inside")
    return "/".join(parts)


def _local_tree(source: Path) -> Tree:
    """(folders, (file, size)) under ``source``, refusing anything but plain ones."""
    if not source.is_absolute() or not source.is_dir() or source.is_symlink():
        raise InvalidInput(f"{printable(str(source))} is not a staged folder", "this is a bug")
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(source / rel if rel else source) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = f"{rel}/{entry.name}" if rel else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    dirs.append(path)
                    pending.append(path)
                elif stat.S_ISREG(info.st_mode):
                    files.append((path, info.st_size))
                else:
                    raise InvalidInput(f"staged {printable(path)} is not a plain file", "a bug")
    return sorted(dirs), sorted(files)


class _Guest:
    """SFTP operations on one claw's workspace, never following a guest link."""

    def __init__(self, sftp: paramiko.SFTPClient, root: str) -> None:
        self.sftp, self.root = sftp, root.rstrip("/")

    def abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def kind(self, rel: str) -> str | None:
        """ "dir", "file", "link", "other", or None when missing."""
        try:
            mode = self.sftp.lstat(self.abs(rel)).st_mode or 0
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            return "link"
        return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"

    def ensure_dir(self, rel: str) -> None:
        """Create ``rel`` and its parents; refuse a link or file on the way."""
        self.check_dirs(rel, create=True)

    def check_dirs(self, rel: str, *, create: bool = False) -> None:
        """Refuse if an existing component of ``rel`` is not a real folder;
        a missing one is created with ``create``, else the walk stops there."""
        walked = ""
        for part in [p for p in rel.split("/") if p]:
            walked = f"{walked}/{part}" if walked else part
            found = self.kind(walked)
            if found is None:
                if not create:
                    return
                self.sftp.mkdir(self.abs(walked), 0o755)
            elif found != "dir":
                raise _blocked(walked, found)

    def upload(self, local: Path, rel: str) -> None:
        """Write ``rel`` via a temp name and an atomic rename."""
        head, _, name = rel.rpartition("/")
        tmp = f".{name}.clawden-{secrets.token_hex(4)}"
        tmp = f"{head}/{tmp}" if head else tmp
        try:
            with open(local, "rb") as src, self.sftp.open(self.abs(tmp), "wbx") as out:
                out.set_pipelined(True)
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            self.sftp.chmod(self.abs(tmp), 0o644)
            self.sftp.posix_rename(self.abs(tmp), self.abs(rel))
        except BaseException:
            self._quiet_remove(tmp)
            raise

    def same_content(self, local: Path, rel: str, size: int) -> bool:
        remote = self.sftp.lstat(self.abs(rel))
        if remote.st_size != size or size > _MAX_COMPARE:
            return False
        with self.sftp.open(self.abs(rel), "rb") as handle:
            return bool(handle.read(size + 1) == local.read_bytes())

    def rmtree(self, rel: str) -> None:
        """Remove ``rel`` and everything under it; links are removed, not followed."""
        found = self.kind(rel)
        if found == "dir":
            for attr in self.sftp.listdir_attr(self.abs(rel)):
                self.rmtree(f"{rel}/{attr.filename}")
            self.sftp.rmdir(self.abs(rel))
        elif found is not None:
            self.sftp.remove(self.abs(rel))

    def _quiet_remove(self, rel: str) -> None:
        try:
            self.sftp.remove(self.abs(rel))
        except OSError:
            pass


def _blocked(rel: str, found: str) -> ClawdenError:
    what = "a symbolic link" if found == "link" else f"not a folder ({found})"
    return InvalidInput(
        f"{printable(rel)} in the claw's workspace is {what}; nothing was copied",
        "move it away (`clawden claw exec NAME -- mv ...`) and try again",
    )


class _Progress:
    def __init__(self, send: Send, total: int) -> None:
        self.send, self.total, self.done = send, total, 0
        self.every = 1 if total <= 40 else max(total // 20, 1)

    def file(self, rel: str) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            self.send({"progress": f"{self.done}/{self.total} {printable(rel)}"})


def _replace(guest: _Guest, source: Path, dest: str, tree: Tree, send: Send) -> Reply:
    dirs, files = tree
    if not dest:
        raise InvalidInput("replace needs a folder inside the workspace", "this is a bug")
    parent, _, _name = dest.rpartition("/")
    guest.ensure_dir(parent)
    tag = secrets.token_hex(4)
    incoming = f"{parent}/.incoming-{tag}" if parent else f".incoming-{tag}"
    old = f"{parent}/.old-{tag}" if parent else f".old-{tag}"
    progress = _Progress(send, len(files))
    try:
        guest.sftp.mkdir(guest.abs(incoming), 0o755)
        for d in dirs:
            guest.sftp.mkdir(guest.abs(f"{incoming}/{d}"), 0o755)
        for rel, _size in files:
            guest.upload(source / rel, f"{incoming}/{rel}")
            progress.file(rel)
        had_old = guest.kind(dest) is not None
        if had_old:
            guest.sftp.rename(guest.abs(dest), guest.abs(old))  # a link is moved, not followed
        guest.sftp.rename(guest.abs(incoming), guest.abs(dest))
    except BaseException:
        guest.rmtree(incoming)
        raise
    if had_old:
        guest.rmtree(old)
    return {"files": len(files), "bytes": sum(s for _, s in files), "replaced": had_old}


def _merge(guest: _Guest, source: Path, dest: str, tree: Tree, send: Send, now: datetime) -> Reply:
    dirs, files = tree
    join = (lambda rel: f"{dest}/{rel}") if dest else (lambda rel: rel)
    # Check the whole way first so a link in the workspace refuses the copy
    # before any file is written, not half-way through.
    guest.check_dirs(dest)
    for d in dirs:
        guest.check_dirs(join(d))
    for rel, _size in files:
        found = guest.kind(join(rel))
        if found not in (None, "file"):
            raise _blocked(join(rel), found)
    backup_root = f"{BACKUP_DIR}/{now.strftime('%Y%m%dT%H%M%SZ')}"
    backed_up: list[str] = []
    unchanged = 0
    guest.ensure_dir(dest)
    for d in dirs:
        guest.ensure_dir(join(d))
    progress = _Progress(send, len(files))
    for rel, size in files:
        target = join(rel)
        if guest.kind(target) == "file":
            if guest.same_content(source / rel, target, size):
                unchanged += 1
                progress.file(rel)
                continue
            keep = f"{backup_root}/{target}"
            guest.ensure_dir(keep.rpartition("/")[0])
            guest.sftp.posix_rename(guest.abs(target), guest.abs(keep))
            backed_up.append(target)
        guest.upload(source / rel, target)
        progress.file(rel)
    return {
        "files": len(files) - unchanged,
        "unchanged": unchanged,
        "bytes": sum(s for _, s in files),
        "backed_up": backed_up,
        "backup_dir": guest.abs(backup_root) if backed_up else None,
    }


@contextmanager
def open_sftp(transport: paramiko.Transport) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session on the claw's live transport, each call bounded by
    ``SFTP_TIMEOUT_S``; a claw that refuses it is ``Unavailable``."""
    try:
        sftp = paramiko.SFTPClient.from_transport(transport)
    except (paramiko.SSHException, OSError) as exc:
        raise Unavailable(f"could not open SFTP on the claw ({exc})", "retry in a moment") from exc
    if sftp is None:
        raise Unavailable("the claw refused an SFTP session", "retry in a moment")
    with sftp:
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(SFTP_TIMEOUT_S)
        yield sftp


def put_tree(
    transport: paramiko.Transport,
    source: Path,
    dest: str,
    mode: str,
    send: Send,
    *,
    root: str = GUEST_WORKSPACE,
    now: datetime | None = None,
) -> Reply:
    """Copy ``source`` to ``root/dest`` on the guest (see the module doc)."""
    if mode not in ("replace", "merge"):
        raise InvalidInput(f"unknown copy mode {printable(repr(mode))}", "use replace or merge")
    dest = validate_dest(dest)
    tree = _local_tree(source)
    moment = now or datetime.now(UTC)
    with open_sftp(transport) as sftp:
        guest = _Guest(sftp, root)
        if guest.kind("") != "dir":
            raise Unavailable(f"{root} is missing on the claw", "restart the claw and retry")
        try:
            if mode == "replace":
                return _replace(guest, source, dest, tree, send)
            return _merge(guest, source, dest, tree, send, moment)
        except (OSError, paramiko.SSHException) as exc:
            raise Unavailable(
                f"copying into the claw failed: {printable(str(exc) or type(exc).__name__)}",
                "check `clawden claw status NAME` and retry; replaced files are kept as backups",
            ) from exc
