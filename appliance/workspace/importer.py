"""Inspecting an existing OpenClaw workspace for ``clawden claw import``.

The files will end up on a claw's data disk and in its system prompt, so the
plan is built without trusting the tree: nothing in it is executed, a link
that leads out of the tree or a hard link (which could be any file the
operator can read, such as /etc/shadow) refuses the whole import, device
files and FIFOs are refused, sizes are capped, and every name shown is
escaped. Only what an OpenClaw workspace is made of is imported (the
Markdown files at the top, ``memory/``, ``skills/``, the onboarding state);
everything else is listed as skipped, with the reason.

Two layouts exist: the older one (AGENTS.md, SOUL.md, TOOLS.md, HEARTBEAT.md,
memory/) and the newer one, which adds IDENTITY.md, USER.md, BOOTSTRAP.md
and ``.openclaw/workspace-state.json``. Both import the same way.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.errors import InvalidInput, NotFound
from appliance.core.textsafe import printable

TOP_FILES = (
    "AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "MEMORY.md",
    "HEARTBEAT.md", "BOOTSTRAP.md", "TOOLS.md", "BOOT.md",
)  # fmt: skip
NEW_LAYOUT_MARKERS = ("IDENTITY.md", "USER.md", "BOOTSTRAP.md", ".openclaw/workspace-state.json")
STATE_FILE = ".openclaw/workspace-state.json"
_SKIP_REASONS = {".git": "git history is not imported", ".DS_Store": "macOS folder metadata"}


@dataclass(frozen=True)
class ImportLimits:
    max_files: int = 5_000
    max_file_bytes: int = 2 * 1024 * 1024
    max_total_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class ImportFile:
    path: str  # where it goes in the claw's workspace
    size: int
    source: str  # relative path read from (differs when an in-tree link was followed)


@dataclass
class ImportPlan:
    source: Path
    layout: str  # "old" or "new"
    files: list[ImportFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skills: list[str] = field(default_factory=list)
    bootstrap_pending: bool = False
    # The workspace folder as inspected (its real path and (device, inode)):
    # staging reads from exactly this folder or refuses.
    real_root: str = ""
    root_id: tuple[int, int] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class ImportRefused(InvalidInput):
    """The workspace holds something that must not be imported."""


class _Walker:
    def __init__(self, root: Path, limits: ImportLimits) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.limits = limits
        self.files: list[ImportFile] = []
        self.skipped: list[tuple[str, str]] = []
        self.total = 0

    def refuse(self, rel: str, why: str, fix: str) -> ImportRefused:
        return ImportRefused(printable(f"{self.root}/{rel} {why}"), fix)

    def add_file(self, rel: str) -> None:
        """Plan one file, following a link only when it stays inside the tree."""
        # realpath catches a link anywhere on the path, not only the last part.
        target = os.path.realpath(os.path.join(self.real_root, rel))
        if not target.startswith(self.real_root + os.sep):
            raise self.refuse(
                rel,
                f"leads out of the workspace through a link (to {target!r})",
                "replace the link with a copy of the file, or remove it",
            )
        source = os.path.relpath(target, self.real_root)
        info = os.stat(target)
        if stat.S_ISDIR(info.st_mode):
            self.skipped.append((rel, "link to a folder (links are not followed)"))
            return
        if not stat.S_ISREG(info.st_mode):
            raise self.refuse(rel, "is a device file, FIFO or socket", "remove it and retry")
        if info.st_nlink > 1:
            raise self.refuse(
                rel,
                "is a hard link, so it may be a file from outside the workspace",
                "copy the workspace with `cp -r` (which breaks hard links) and import the copy",
            )
        if info.st_size > self.limits.max_file_bytes:
            raise self.refuse(
                rel,
                f"is {info.st_size} bytes, over the {self.limits.max_file_bytes}-byte cap",
                "trim it or move it out of the workspace",
            )
        self.total += info.st_size
        if self.total > self.limits.max_total_bytes:
            raise self.refuse(
                "", f"holds over {self.limits.max_total_bytes} bytes", "archive old notes first"
            )
        if len(self.files) >= self.limits.max_files:
            raise self.refuse("", f"holds over {self.limits.max_files} files", "prune it first")
        self.files.append(ImportFile(rel, info.st_size, source))

    def walk(self, rel: str, keep: str) -> None:
        """Plan a folder: ``keep`` is "md" (Markdown notes only) or "all"."""
        full = os.path.join(self.real_root, rel)
        if os.path.islink(full):
            self.add_file(rel)  # refuses a link out; a link inside is skipped as a folder link
            return
        with os.scandir(full) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                child = f"{rel}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    self.walk(child, keep)
                elif keep == "md" and not entry.name.endswith(".md"):
                    self.skipped.append((child, "not a Markdown note"))
                else:
                    self.add_file(child)


def _onboarded(root: Path) -> bool:
    state = root / STATE_FILE
    try:
        if state.is_symlink() or state.stat().st_size > 65_536:
            return False
        data = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("onboardingCompletedAt"))


def inspect_workspace(path: Path, limits: ImportLimits | None = None) -> ImportPlan:
    """What importing the workspace at ``path`` would copy, and what it skips."""
    if not path.is_dir():
        raise NotFound(f"{printable(str(path))} is not a folder", "give the workspace's folder")
    walker = _Walker(path, limits or ImportLimits())
    present = sorted(os.listdir(path))
    if not any(name in TOP_FILES for name in present):
        raise InvalidInput(
            f"{printable(str(path))} does not look like an OpenClaw workspace",
            "give the folder holding AGENTS.md / SOUL.md (default ~/.openclaw/workspace)",
        )
    skills: list[str] = []
    for name in present:
        full = path / name
        if name in TOP_FILES:
            walker.add_file(name)
        elif name == "memory" and (full.is_dir() or full.is_symlink()):
            walker.walk(name, "md")
        elif name == "skills" and full.is_dir() and not full.is_symlink():
            for skill in sorted(os.listdir(full)):
                if (full / skill).is_symlink():
                    walker.add_file(f"skills/{skill}")  # refuses a link out, skips one in
                elif (full / skill / "SKILL.md").is_file():
                    walker.walk(f"skills/{skill}", "all")
                    skills.append(skill)
                else:
                    walker.skipped.append((f"skills/{skill}", "no SKILL.md: not a skill"))
        elif name == ".openclaw" and (full / "workspace-state.json").exists():
            walker.add_file(STATE_FILE)
            walker.skipped.append((".openclaw/*", "only workspace-state.json is imported"))
        else:
            reason = _SKIP_REASONS.get(name, "not part of an OpenClaw workspace")
            walker.skipped.append((name, reason))
    planned = {f.path for f in walker.files}
    layout = "new" if any(m in planned for m in NEW_LAYOUT_MARKERS) else "old"
    pending = "BOOTSTRAP.md" in planned and not _onboarded(path)
    info = os.stat(walker.real_root)
    return ImportPlan(
        path,
        layout,
        walker.files,
        walker.skipped,
        skills,
        pending,
        real_root=walker.real_root,
        root_id=(info.st_dev, info.st_ino),
    )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_AGAIN = "stop whatever is changing the workspace and run the import again"


class _Unsafe(Exception):
    """A part of a planned path that cannot be opened without following a link."""

    def __init__(self, at: str, why: str) -> None:
        super().__init__(f"{at} {why}")
        self.at = at
        self.why = why


def _open_nofollow(start_fd: int, comps: list[str], *, file: bool) -> int:
    """A new descriptor for ``comps`` below ``start_fd``, opened one component
    at a time from the previous one's descriptor, never following a link:
    every part but a final ``file`` must be a real folder. Raises ``_Unsafe``
    naming the part that failed."""
    fd = os.dup(start_fd)
    try:
        for depth, comp in enumerate(comps):
            at = "/".join(comps[: depth + 1])
            if comp in ("", ".", ".."):
                raise _Unsafe(at, "is not a plain name")
            last = file and depth == len(comps) - 1
            try:
                nfd = os.open(comp, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    why = "is a link"
                elif exc.errno == errno.ENOTDIR:
                    why = "is a link or no longer a folder"
                else:
                    why = f"cannot be opened ({exc.strerror})"
                raise _Unsafe(at, why) from exc
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_root(plan: ImportPlan) -> int:
    """The workspace folder inspection saw, walked from ``/`` without links
    (its real path had none then) and still the same folder (device, inode)."""
    real = plan.real_root or os.path.realpath(plan.source)
    top = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_nofollow(top, [c for c in real.split("/") if c], file=False)
    except _Unsafe as exc:
        raise ImportRefused(
            printable(f"{plan.source} cannot be opened safely any more: /{exc}"), _AGAIN
        ) from exc
    finally:
        os.close(top)
    info = os.fstat(fd)
    if plan.root_id is not None and (info.st_dev, info.st_ino) != plan.root_id:
        os.close(fd)
        raise ImportRefused(
            printable(f"{plan.source} was replaced by another folder after it was inspected"),
            _AGAIN,
        )
    return fd


def _read_planned(root_fd: int, item: ImportFile) -> bytes:
    """The planned file's bytes, reached from the workspace's descriptor
    without following a link (a folder swapped for a link after inspection
    is refused, not followed), and still a regular file of the planned size
    with no other name."""
    try:
        fd = _open_nofollow(root_fd, item.source.split("/"), file=True)
    except _Unsafe as exc:
        raise ImportRefused(
            printable(f"{item.source} cannot be read safely any more: {exc}"), _AGAIN
        ) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != item.size or info.st_nlink > 1:
        os.close(fd)
        raise ImportRefused(
            printable(f"{item.source} changed while it was being imported"),
            "stop whatever is writing to the workspace and retry",
        )
    with os.fdopen(fd, "rb") as src:
        return src.read(item.size + 1)[: item.size]


def stage_import(plan: ImportPlan, dest: Path) -> None:
    """Copy the planned files under ``dest`` (new or empty), re-checking each one.

    The tree may change between inspection and copy (an agent may still be
    running in it), so nothing is opened by path: the workspace folder is
    opened once and must be the one inspected, and every file is reached from
    it folder by folder with ``O_NOFOLLOW`` — a link anywhere on the way, or a
    file that is no longer the regular, single-named file of the planned
    size, refuses the import. Nothing outside the workspace is ever read.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidInput(f"{dest} is not empty", "stage an import into a new folder")
    root_fd = _open_root(plan)
    try:
        for item in plan.files:
            data = _read_planned(root_fd, item)
            target = dest.joinpath(*item.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            out_flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(target, out_flags, 0o644), "wb") as out:
                out.write(data)
    finally:
        os.close(root_fd)


def import_lines(name: str, path: Path) -> Iterator[str]:
    """What ``clawden claw import NAME PATH`` shows before copying anything."""
    yield from plan_lines(name, inspect_workspace(path))


def plan_lines(name: str, plan: ImportPlan) -> Iterator[str]:
    """The plan in words: files, skills, what is skipped and why."""
    path = plan.source
    yield f"import into claw {printable(name)} from {printable(str(path))}"
    yield f"  layout: {'newer' if plan.layout == 'new' else 'older'} OpenClaw workspace"
    yield f"  {len(plan.files)} files, {plan.total_bytes} bytes:"
    for f in plan.files:
        via = f" (via link to {printable(f.source)})" if f.source != f.path else ""
        yield f"    {f.size:>9}  {printable(f.path)}{via}"
    if plan.skills:
        yield f"  skills: {printable(', '.join(plan.skills))}"
    for skipped, reason in plan.skipped:
        yield f"  skipped {printable(skipped)}: {reason}"
    if plan.bootstrap_pending:
        yield "  BOOTSTRAP.md will run on the claw's first start (onboarding not recorded)"
