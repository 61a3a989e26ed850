"""Validating and staging a skill for installation (``clawden skill add``).

A skill comes from anywhere (a download, a child's folder), so the host treats
it as hostile data: it is never executed, and unpacking it must not be able to
write outside a fresh temp directory or smuggle a host file into a claw. So
every member of the directory or archive is listed and checked *before*
anything is written: no absolute paths, no ``..``, no links of any kind (a
hard link in a folder can point at a host file the operator can read), no
device files, bounded counts and sizes. Only then are the files written, with
``O_EXCL|O_NOFOLLOW``, into a new temp dir. The content hash is shown in full
so the operator can compare it with what the skill's author published.

Front matter is parsed with the guest's own parser so the host accepts exactly
what the claw will index.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from appliance.core.errors import InvalidInput, NotFound
from appliance.core.textsafe import printable
from appliance.guest.skillhash import hash_files
from appliance.guest.skills import NAME_RE, SkillError, parse_skill_md

_FIX = "fix the skill (or ask its author) and run `clawden skill add` again"


@dataclass(frozen=True)
class SkillLimits:
    max_files: int = 256  # members of any kind, directories included
    max_file_bytes: int = 1024 * 1024
    max_total_bytes: int = 8 * 1024 * 1024
    max_archive_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class SkillFile:
    path: str  # relative, "/"-separated
    size: int
    sha256: str


@dataclass
class PreparedSkill:
    """A validated skill staged under ``root``; call ``cleanup()`` (or use ``with``)."""

    name: str
    description: str
    requires: dict[str, list[str]]
    files: list[SkillFile]
    content_hash: str
    root: Path
    source: Path
    _cleaned: bool = field(default=False, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def cleanup(self) -> None:
        if not self._cleaned:
            shutil.rmtree(self.root, ignore_errors=True)
            self._cleaned = True

    def __enter__(self) -> PreparedSkill:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class SkillRefused(InvalidInput):
    """The skill breaks a rule; ``what`` names the member and the rule."""


@dataclass(frozen=True)
class _Member:
    path: str
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]]


def _refuse(what: str) -> SkillRefused:
    return SkillRefused(printable(what), _FIX)


def _clean_path(raw: str) -> str:
    """The member's path relative to the skill root, or a refusal saying why."""
    shown = repr(raw)
    if "\\" in raw or any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise _refuse(f"member {shown} has a backslash or control character in its name")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise _refuse(f"member {shown} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(f"member {shown} has a path traversal ('..')")
    return "/".join(parts)


def _check_count(count: int, limits: SkillLimits) -> None:
    if count > limits.max_files:
        raise _refuse(f"the skill has more than {limits.max_files} files and folders")


def _tar_members(tf: tarfile.TarFile, limits: SkillLimits) -> list[_Member]:
    members: list[_Member] = []
    for info in tf:  # stops at the first bad header, before reading the rest
        _check_count(len(members) + 1, limits)
        name = repr(info.name)
        if info.issym() or info.islnk():
            kind = "symbolic" if info.issym() else "hard"
            raise _refuse(f"member {name} is a {kind} link (to {info.linkname!r})")
        if info.ischr() or info.isblk() or info.isfifo():
            raise _refuse(f"member {name} is a device file or FIFO")
        if not (info.isdir() or info.isreg()) or info.issparse():
            raise _refuse(f"member {name} is not a plain file or folder")
        path = _clean_path(info.name)
        members.append(_Member(path, info.isdir(), info.size, _tar_opener(tf, info)))
    return members


def _tar_opener(tf: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        handle = tf.extractfile(info)
        if handle is None:
            raise _refuse(f"member {info.name!r} has no data")
        return handle

    return opener


_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _zip_members(zf: zipfile.ZipFile, limits: SkillLimits) -> list[_Member]:
    infos = zf.infolist()
    _check_count(len(infos), limits)
    members: list[_Member] = []
    for info in infos:
        mode = info.external_attr >> 16
        name = repr(info.filename)
        if stat.S_ISLNK(mode):
            raise _refuse(f"member {name} is a symbolic link")
        # Archivers that record no Unix mode leave the type bits at zero.
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _refuse(f"member {name} is a device file, FIFO or socket")
        if info.flag_bits & 0x1:
            raise _refuse(f"member {name} is encrypted")
        if info.compress_type not in _ZIP_METHODS:
            method = info.compress_type
            raise _refuse(f"member {name} uses compression method {method}, not supported")
        path = _clean_path(info.filename)
        members.append(_Member(path, info.is_dir(), info.file_size, _zip_opener(zf, info)))
    return members


def _zip_opener(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
    return lambda: zf.open(info)


def _dir_members(root: Path, limits: SkillLimits) -> list[_Member]:
    members: list[_Member] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(root / rel if rel else root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                _check_count(len(members) + 1, limits)
                path = f"{rel}/{entry.name}" if rel else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    target = os.readlink(entry.path)
                    raise _refuse(f"{path!r} is a symbolic link (to {target!r})")
                if stat.S_ISDIR(info.st_mode):
                    members.append(_Member(path, True, 0, _no_data))
                    pending.append(path)
                elif not stat.S_ISREG(info.st_mode):
                    raise _refuse(f"{path!r} is a device file, FIFO or socket")
                elif info.st_nlink > 1:
                    raise _refuse(f"{path!r} is a hard link (it may be a file from elsewhere)")
                else:
                    members.append(_Member(path, False, info.st_size, _file_opener(entry.path)))
    return members


def _no_data() -> IO[bytes]:
    raise AssertionError("a folder has no data")  # never called: folders are not read


def _file_opener(path: str) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _refuse(f"{path!r} changed while it was being read")
        return os.fdopen(fd, "rb")

    return opener


def _validate(members: list[_Member], limits: SkillLimits) -> list[_Member]:
    """Check the whole set, strip one wrapping folder, and return the files."""
    files = [m for m in members if not m.is_dir and m.path]
    paths = [m.path for m in files]
    if "SKILL.md" not in paths:
        tops = {p.split("/", 1)[0] for p in paths}
        if len(tops) == 1 and all("/" in p for p in paths) and f"{tops.pop()}/SKILL.md" in paths:
            cut = len(paths[0].split("/", 1)[0]) + 1
            files = [_Member(m.path[cut:], False, m.size, m.open) for m in files]
            paths = [m.path for m in files]
    if "SKILL.md" not in paths:
        raise SkillRefused("the skill has no SKILL.md at its top level", _FIX)
    if len(set(paths)) != len(paths):
        raise _refuse("the skill lists the same file more than once")
    dirs = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    clash = next((p for p in paths if p in dirs or any(d.startswith(p + "/") for d in dirs)), None)
    if clash:
        raise _refuse(f"{clash!r} is both a file and a folder")
    total = 0
    for m in files:
        if m.size > limits.max_file_bytes:
            raise _refuse(f"{m.path!r} is {m.size} bytes, over the {limits.max_file_bytes} cap")
        total += m.size
    if total > limits.max_total_bytes:
        raise _refuse(f"the skill is {total} bytes, over the {limits.max_total_bytes} cap")
    return files


def _stage(files: list[_Member], dest: Path, limits: SkillLimits) -> list[SkillFile]:
    """Write the validated files under ``dest``; sizes are re-checked as read."""
    staged = []
    for m in sorted(files, key=lambda f: f.path):
        target = dest.joinpath(*m.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with m.open() as src:
            data = src.read(limits.max_file_bytes + 1)
        if len(data) != m.size:
            raise _refuse(f"{m.path!r} holds {len(data)} bytes, not the {m.size} declared")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        staged.append(SkillFile(m.path, m.size, hashlib.sha256(data).hexdigest()))
    return staged


def content_hash(root: Path, files: list[SkillFile]) -> str:
    """sha256 over sorted (path, size, content): same files, same hash, any
    format; computed by the guest's own function, so the claw agrees."""
    return hash_files((f.path, root.joinpath(*f.path.split("/")).read_bytes()) for f in files)


def _members_and_stage(source: Path, dest: Path, limits: SkillLimits) -> list[SkillFile]:
    if source.is_dir():
        return _stage(_validate(_dir_members(source, limits), limits), dest, limits)
    if source.stat().st_size > limits.max_archive_bytes:
        raise _refuse(f"the archive is over the {limits.max_archive_bytes}-byte cap")
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            return _stage(_validate(_zip_members(zf, limits), limits), dest, limits)
    if tarfile.is_tarfile(source):
        with tarfile.open(source, "r:*") as tf:
            staged = _stage(_validate(_tar_members(tf, limits), limits), dest, limits)
            _check_tar_end(tf)
            return staged
    if _looks_like_an_archive(source):
        raise _refuse(
            "the archive is damaged (it starts like a .zip or .tar archive but cannot be "
            "read as one: cut short or corrupt)"
        )
    raise InvalidInput(
        f"{printable(str(source))} is neither a folder nor a .tar, .tar.gz, .tgz or .zip",
        "give the skill's folder or an archive of it",
    )


# How much of what follows the last member is checked: the end-of-archive
# marker (two zero blocks) and the padding to a whole record (10 KiB for GNU
# tar's default blocking) are far smaller.
_TAR_TRAILER_BYTES = 1024 * 1024


def _check_tar_end(tf: tarfile.TarFile) -> None:
    """What follows the last member must be the end-of-archive marker: zeros.

    tarfile takes a damaged header for the end of the archive and silently
    drops every member after it; and it never reads a compressed stream to its
    end, where gzip keeps its CRC (so a corrupted .tar.gz would unpack altered).
    Reading the rest, from where tarfile stopped, catches both.
    """
    stream = tf.fileobj
    assert stream is not None  # an open TarFile has one
    stream.seek(tf.offset)
    left = _TAR_TRAILER_BYTES
    while left > 0 and (chunk := stream.read(min(left, 64 * 1024))):
        if chunk.strip(b"\0"):
            raise _refuse(
                "the archive is damaged (a member header is corrupt; what follows is unreadable)"
            )
        left -= len(chunk)


# Leading bytes of zip, gzip, bzip2 and xz files, and tar's "ustar" at 257.
_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _looks_like_an_archive(source: Path) -> bool:
    with source.open("rb") as f:
        head = f.read(262)
    return head.startswith(_MAGIC) or head[257:262] == b"ustar"


def _damaged(exc: BaseException, source: Path) -> bool:
    """Whether ``exc`` means the archive's bytes are bad (not, say, a full disk)."""
    decoding = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError)
    if isinstance(exc, decoding):
        return True
    # gzip and bz2 report bad data as an OSError without an errno; a real
    # I/O error (no space, no permission) has one.
    return isinstance(exc, OSError) and exc.errno is None and not source.is_dir()


def prepare_skill(
    name: str | None,
    source: Path,
    limits: SkillLimits | None = None,
    *,
    tmp_dir: Path | None = None,
) -> PreparedSkill:
    """Validate ``source`` (folder or archive) and stage it in a fresh temp dir.

    The skill's name comes from its front matter; ``name``, when given, must match.
    """
    limits = limits or SkillLimits()
    if name is not None and not NAME_RE.match(name):
        raise InvalidInput(
            f"{printable(repr(name))} is not a skill name",
            "use 1-64 lowercase letters, digits or '-', e.g. weather-report",
        )
    if not source.exists():
        raise NotFound(f"{printable(str(source))} does not exist", "give a folder or archive")
    dest = Path(tempfile.mkdtemp(prefix="clawden-skill-", dir=tmp_dir))
    try:
        files = _members_and_stage(source, dest, limits)
        try:
            text = (dest / "SKILL.md").read_text(encoding="utf-8")
            info, _body = parse_skill_md(text)
        except (UnicodeDecodeError, SkillError) as exc:
            raise _refuse(f"SKILL.md is malformed: {exc}") from exc
        if name is not None and info.name != name:
            raise SkillRefused(
                printable(f"SKILL.md names the skill {info.name!r}, not {name!r}"),
                f"add it as `clawden skill add {info.name} ...` or fix its front matter",
            )
        digest = content_hash(dest, files)
        return PreparedSkill(
            info.name, info.description, info.requires, files, digest, dest, source
        )
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if _damaged(exc, source):
            raise _refuse(f"the archive is damaged ({exc})") from exc
        raise


def describe_lines(skill: PreparedSkill) -> Iterator[str]:
    """What ``clawden skill add`` shows before copying: the files and the full hash."""
    yield f"skill {skill.name} from {printable(str(skill.source))}"
    yield f"  description: {printable(skill.description)}"
    for kind, values in skill.requires.items():
        yield f"  requires {printable(kind)}: {printable(', '.join(values))}"
    yield f"  {len(skill.files)} files, {skill.total_bytes} bytes:"
    for f in skill.files:
        yield f"    {f.size:>9}  {printable(f.path)}"
    yield f"  sha256 {skill.content_hash}"


def skill_add_lines(name: str | None, source: Path) -> Iterator[str]:
    """Validate and describe a skill without installing it."""
    with prepare_skill(name, source) as skill:
        yield from describe_lines(skill)
