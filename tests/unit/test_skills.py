"""Skills: SKILL.md parsing (PyYAML and the built-in subset), index and load in
the guest, and the host's validation of folders and archives before install."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.cli import skills as skill_commands
from appliance.config import Settings
from appliance.core.errors import InvalidInput
from appliance.core.model import Claw, ClawState
from appliance.guest import skills as guest
from appliance.store import AuditLog, ClawRepository, open_db
from appliance.store.skills import SkillRepository
from appliance.workspace import skills as host

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WEATHER = FIXTURES / "openclaw-new" / "skills" / "weather-report"
GOOD = "---\nname: hello\ndescription: Say hello nicely.\n---\n\n# Hello\n\nSay hello.\n"


# ---- front matter ---------------------------------------------------------------
FRONT_MATTERS = [
    (WEATHER / "SKILL.md").read_text(),
    (FIXTURES / "openclaw-old" / "skills" / "grocery-list" / "SKILL.md").read_text(),
    "---\n"
    "name: 'pdf-tools'\n"
    'description: "Split, merge and \\"rotate\\" PDFs"  \n'
    "# a comment\n"
    "version: 2\n"
    "requirements:\n"
    "  bins: [qpdf, pdftk]\n"
    "  env:\n"
    "  - PDF_HOME\n"
    "license: |\n"
    "  MIT\n"
    "  see LICENSE\n"
    "tags:\n"
    "  - name: docs\n"
    "    weight: 3\n"
    "  - pdf\n"
    "enabled: true\n"
    "---\nbody\n",
]


@pytest.mark.parametrize("text", FRONT_MATTERS)
def test_subset_parser_agrees_with_pyyaml(text: str) -> None:
    assert guest.parse_front_matter(text, use_yaml=False) == guest.parse_front_matter(
        text, use_yaml=True
    )


def test_requirements_from_both_spellings() -> None:
    info, body = guest.parse_skill_md(FRONT_MATTERS[2], use_yaml=False)
    assert info.name == "pdf-tools"
    assert info.description == 'Split, merge and "rotate" PDFs'
    assert info.requires == {"bins": ["qpdf", "pdftk"], "env": ["PDF_HOME"]}
    assert body == "body\n"
    weather, _ = guest.parse_skill_md(FRONT_MATTERS[0], use_yaml=False)
    assert weather.requires == {"bins": ["python3"], "env": []}
    assert weather.description.startswith("Give a short weather report for Robin's town, using")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("# no front matter\n", "does not start with '---'"),
        ("---\nname: x\n", "never closed"),
        ("---\nname: Bad_Name\ndescription: d\n---\n", "'name' must be"),
        ("---\nname: ok\n---\n", "'description' is missing"),
        ("---\nname: ok\n\tdescription: d\n---\n", "tabs"),
        ("---\nname: ok\n  description: d\n---\n", "unexpected indentation"),
        ("---\n- just\n- a list\n---\n", "not a 'key: value' mapping"),
    ],
)
def test_malformed_front_matter_is_explained(text: str, reason: str) -> None:
    with pytest.raises(guest.SkillError, match=reason):
        guest.parse_skill_md(text, use_yaml=False)


# ---- guest index and load -------------------------------------------------------
def _skill(root: Path, folder: str, text: str) -> None:
    (root / "skills" / folder).mkdir(parents=True)
    (root / "skills" / folder / "SKILL.md").write_text(text)


@pytest.mark.parametrize("use_yaml", [False, True])
def test_index_and_load(tmp_path: Path, use_yaml: bool) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "workspace"
    shutil.copytree(WEATHER, root / "skills" / "weather-report")
    _skill(root, "hello", GOOD)
    _skill(root, "broken", "---\nname: broken\n---\nno description\n")
    _skill(root, "renamed", GOOD)  # front matter says "hello"
    (root / "skills" / "empty").mkdir()
    (outside / "SKILL.md").write_text(GOOD.replace("hello", "sneaky"))
    (root / "skills" / "sneaky").symlink_to(outside)
    index = guest.scan_skills(root, use_yaml=use_yaml)
    assert [s.name for s in index.skills] == ["hello", "weather-report"]
    skipped = dict(index.skipped)
    assert set(skipped) == {"broken", "renamed", "empty", "sneaky"}
    assert "'description' is missing" in skipped["broken"]
    assert "differs from its folder" in skipped["renamed"]
    assert skipped["empty"] == "no SKILL.md"
    assert "outside the workspace" in skipped["sneaky"]
    text = guest.index_text(index)
    assert text.splitlines()[0] == "- hello: Say hello nicely."
    assert "(needs bins python3)" in text and "Weather report" not in text  # body not indexed
    body = guest.load_skill(root, "weather-report", use_yaml=use_yaml)
    assert body.startswith("# Weather report") and "scripts/fetch.py" in body
    for bad in ("broken", "../outside", "sneaky", "nope"):
        with pytest.raises(guest.SkillError):
            guest.load_skill(root, bad, use_yaml=use_yaml)


def test_no_skills_folder_means_no_skills(tmp_path: Path) -> None:
    assert guest.scan_skills(tmp_path).skills == []
    assert guest.index_text(guest.scan_skills(tmp_path)) == ""


# ---- host: prepare_skill --------------------------------------------------------
@pytest.fixture
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where prepare_skill's temp dirs go, so tests can see that none is left."""
    place = tmp_path / "tmp"
    place.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(place))
    return place


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def test_good_skill_from_every_format_has_one_stable_hash(tmp_path: Path, staging: Path) -> None:
    tgz = _tar(
        tmp_path / "w.tgz",
        [
            (_file("weather-report/SKILL.md"), (WEATHER / "SKILL.md").read_bytes()),
            (_file("weather-report/scripts/fetch.py"), (WEATHER / "scripts/fetch.py").read_bytes()),
        ],
        "w:gz",
    )
    zipped = tmp_path / "w.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(WEATHER / "scripts" / "fetch.py", "scripts/fetch.py")
        zf.write(WEATHER / "SKILL.md", "SKILL.md")
    hashes = set()
    for source in (WEATHER, tgz, zipped):
        with host.prepare_skill("weather-report", source) as skill:
            assert [f.path for f in skill.files] == ["SKILL.md", "scripts/fetch.py"]
            assert (skill.root / "scripts" / "fetch.py").read_bytes() == (
                WEATHER / "scripts" / "fetch.py"
            ).read_bytes()
            assert skill.requires == {"bins": ["python3"], "env": []}
            hashes.add(skill.content_hash)
        assert not skill.root.exists()
    assert len(hashes) == 1 and len(hashes.pop()) == 64
    assert list(staging.iterdir()) == []


def test_hash_changes_when_one_byte_changes(tmp_path: Path, staging: Path) -> None:
    copy = tmp_path / "weather-report"
    shutil.copytree(WEATHER, copy)
    with host.prepare_skill("weather-report", copy) as before:
        first = before.content_hash
    data = bytearray((copy / "scripts" / "fetch.py").read_bytes())
    data[-2] ^= 1
    (copy / "scripts" / "fetch.py").write_bytes(bytes(data))
    with host.prepare_skill("weather-report", copy) as after:
        assert after.content_hash != first


def test_skill_add_lines_show_files_and_full_hash(staging: Path) -> None:
    lines = list(host.skill_add_lines("weather-report", WEATHER))
    assert lines[0].startswith("skill weather-report from ")
    assert any(ln.endswith("  scripts/fetch.py") for ln in lines)
    sha = next(ln for ln in lines if ln.strip().startswith("sha256 ")).split()[1]
    with host.prepare_skill("weather-report", WEATHER) as skill:
        assert sha == skill.content_hash
    assert list(staging.iterdir()) == []


SKILL_MD = (_file("SKILL.md"), GOOD.encode())


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([SKILL_MD, (_file("../evil"), b"x")], "path traversal"),
        ([SKILL_MD, (_file("a/../../evil"), b"x")], "path traversal"),
        ([SKILL_MD, (_file("/tmp/evil-abs"), b"x")], "absolute path"),
        ([SKILL_MD, (_link("passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")], "symbolic link"),
        ([SKILL_MD, (_link("hard", tarfile.LNKTYPE, "SKILL.md"), b"")], "hard link"),
        ([SKILL_MD, (_link("null", tarfile.CHRTYPE, ""), b"")], "device file"),
        ([SKILL_MD, (_file("big.bin"), b"x" * 2048)], "over the 1024 cap"),
        ([SKILL_MD] + [(_file(f"f{n}"), b"x") for n in range(10)], "more than 8 files"),
        ([(_file("README.md"), b"no skill")], "no SKILL.md"),
        ([(_file("SKILL.md"), b"---\nname: other\ndescription: d\n---\n")], "not 'hello'"),
        ([(_file("SKILL.md"), b"no front matter")], "SKILL.md is malformed"),
        ([SKILL_MD, (_file("esc\x1b[2J"), b"x")], "control character"),
    ],
)
def test_tar_attacks_are_refused(
    tmp_path: Path, staging: Path, members: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    archive = _tar(tmp_path / "evil.tar", members)
    limits = host.SkillLimits(max_files=8, max_file_bytes=1024, max_total_bytes=4096)
    with pytest.raises(InvalidInput, match=message) as err:
        host.prepare_skill("hello", archive, limits)
    assert err.value.fix and "\x1b" not in str(err.value)
    assert list(staging.iterdir()) == []  # the temp dir is gone
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar", "tmp"]
    assert not Path("/tmp/evil-abs").exists()


def test_total_size_cap(tmp_path: Path, staging: Path) -> None:
    archive = _tar(
        tmp_path / "t.tar", [SKILL_MD] + [(_file(f"f{n}"), b"x" * 900) for n in range(6)]
    )
    limits = host.SkillLimits(max_files=8, max_file_bytes=1024, max_total_bytes=4096)
    with pytest.raises(InvalidInput, match="over the 4096 cap"):
        host.prepare_skill("hello", archive, limits)


@pytest.mark.parametrize(
    ("name", "message"),
    [("../evil.txt", "path traversal"), ("/abs/evil.txt", "absolute path")],
)
def test_zip_attacks_are_refused(tmp_path: Path, staging: Path, name: str, message: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SKILL.md", GOOD)
        zf.writestr(name, "pwned")
    with pytest.raises(InvalidInput, match=message):
        host.prepare_skill("hello", archive)
    assert list(staging.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.zip", "tmp"]


def test_zip_symlink_is_refused(tmp_path: Path, staging: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SKILL.md", GOOD)
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (0o120777 << 16) | 0x20
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidInput, match="symbolic link"):
        host.prepare_skill("hello", archive)


def test_folder_with_links_is_refused(tmp_path: Path, staging: Path) -> None:
    src = tmp_path / "hello"
    src.mkdir()
    (src / "SKILL.md").write_text(GOOD)
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="symbolic link"):
        host.prepare_skill("hello", src)
    (src / "passwd").unlink()
    (src / "copy").hardlink_to(src / "SKILL.md")
    with pytest.raises(InvalidInput, match="hard link"):
        host.prepare_skill("hello", src)
    (src / "copy").unlink()
    with host.prepare_skill("hello", src) as skill:
        assert [f.path for f in skill.files] == ["SKILL.md"]


def test_bad_name_and_unknown_format(tmp_path: Path, staging: Path) -> None:
    with pytest.raises(InvalidInput, match="not a skill name"):
        host.prepare_skill("../x", WEATHER)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive, just bytes\n" * 40)
    with pytest.raises(InvalidInput, match="neither a folder nor"):
        host.prepare_skill("hello", junk)
    assert list(staging.iterdir()) == []


# ---- archives that are too big, list a file twice, are damaged or encrypted ------
# Each is refused with one line saying why, before anything reaches a claw.
LIMITS = host.SkillLimits(max_files=8, max_file_bytes=1024, max_total_bytes=4096)
SMALL = replace(LIMITS, max_archive_bytes=16384)  # a plain tar is 10240 bytes at least


def _random(n: int) -> bytes:
    # Incompressible, so a compressed archive keeps it as it is and a flipped
    # byte there is caught only by the format's own check.
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n // 32 + 1))[:n]


SKILL = ("SKILL.md", GOOD.encode())
NOTES = ("notes.txt", b"remember the milk\n" * 20)
DATA = ("data.bin", _random(900))


def _zip(path: Path, members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _tar_of(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    return _tar(path, [(_file(name), data) for name, data in members], mode)


def _patch_zip(
    path: Path, member: str, *, flags: int = 0, method: int | None = None, size: int | None = None
) -> Path:
    """Rewrite one member's fields in both its central and its local header."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        central = zf.start_dir
        for info in zf.infolist():
            assert data[central : central + 4] == b"PK\x01\x02"
            lengths = struct.unpack_from("<HHH", data, central + 28)
            if info.filename == member:
                local = info.header_offset
                # offsets of (flags, method, uncompressed size) in each header
                for at in ((central + 8, central + 10, central + 24),
                           (local + 6, local + 8, local + 22)):  # fmt: skip
                    old_flags = struct.unpack_from("<H", data, at[0])[0]
                    struct.pack_into("<H", data, at[0], old_flags | flags)
                    if method is not None:
                        struct.pack_into("<H", data, at[1], method)
                    if size is not None:
                        struct.pack_into("<I", data, at[2], size)
            central += 46 + sum(lengths)
    path.write_bytes(bytes(data))
    return path


def _zip_data_at(path: Path, member: str) -> int:
    """Where ``member``'s (compressed) data starts in the zip at ``path``."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(member).header_offset
    name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
    return int(local + 30 + name_len + extra_len)


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _flip(path: Path, start: int, count: int) -> Path:
    """Corrupt ``count`` bytes from ``start`` (negative: from the end)."""
    data = bytearray(path.read_bytes())
    at = start % len(data)
    for i in range(at, at + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


Maker = Callable[[Path], Path]
# (id, make the archive in a folder, what the refusal says, needs SMALL limits)
BAD_ARCHIVES: list[tuple[str, Maker, str, bool]] = []


def _bad(message: str, small_limits: bool = False) -> Callable[[Maker], Maker]:
    def register(make: Maker) -> Maker:
        BAD_ARCHIVES.append((make.__name__.replace("_", "-"), make, message, small_limits))
        return make

    return register


# -- oversized
@_bad("the archive is over the 16384-byte cap", small_limits=True)
def archive_over_cap(d: Path) -> Path:
    return _zip(d / "s.zip", [SKILL, ("pad.bin", _random(20_000))], zipfile.ZIP_STORED)


@_bad("'big.bin' is 2048 bytes, over the 1024 cap", small_limits=True)
def zip_file_over_cap(d: Path) -> Path:
    return _zip(d / "s.zip", [SKILL, ("big.bin", b"x" * 2048)])


@_bad("the skill is 5472 bytes, over the 4096 cap", small_limits=True)
def zip_total_over_cap(d: Path) -> Path:
    return _zip(d / "s.zip", [SKILL] + [(f"f{n}", b"x" * 900) for n in range(6)])


@_bad("the skill has more than 8 files and folders", small_limits=True)
def zip_too_many_files(d: Path) -> Path:
    return _zip(d / "s.zip", [SKILL] + [(f"f{n}", b"x") for n in range(9)])


@_bad("the archive is damaged (Bad CRC-32")
def zip_lies_about_a_size(d: Path) -> Path:
    # Says 10 bytes, inflates to 1000: the size caps must not be fooled.
    return _patch_zip(_zip(d / "s.zip", [SKILL, ("bomb.txt", b"0" * 1000)]), "bomb.txt", size=10)


# -- duplicated entries
@_bad("the skill lists the same file more than once")
def tar_same_name_twice(d: Path) -> Path:
    return _tar_of(d / "s.tar", [SKILL, NOTES, ("notes.txt", b"other")])


@_bad("the skill lists the same file more than once")
def tar_same_file_spelt_two_ways(d: Path) -> Path:
    return _tar_of(d / "s.tar", [SKILL, NOTES, ("./notes.txt", b"other")])


@_bad("the skill lists the same file more than once")
def tgz_skill_md_twice_in_a_wrapper(d: Path) -> Path:
    twin = b"---\nname: hello\ndescription: the evil twin\n---\n"
    members = [("hello/SKILL.md", GOOD.encode()), ("hello/SKILL.md", twin)]
    return _tar_of(d / "s.tgz", members, "w:gz")


@_bad("the skill lists the same file more than once")
def zip_same_name_twice(d: Path) -> Path:
    with pytest.warns(UserWarning, match="Duplicate name"):
        return _zip(d / "s.zip", [SKILL, NOTES, ("notes.txt", b"other")])


# -- damaged
@_bad("the archive is damaged (Compressed file ended before the end-of-stream marker")
def tgz_truncated(d: Path) -> Path:
    return _cut(_tar_of(d / "s.tgz", [SKILL, DATA], "w:gz"), 600)


@_bad("the archive is damaged (CRC check failed")
def tgz_corrupt(d: Path) -> Path:
    # In the stored data: it inflates fine, only gzip's CRC at the end says so.
    return _flip(_tar_of(d / "s.tgz", [SKILL, DATA], "w:gz"), -400, 32)


@_bad("the archive is damaged (Corrupt input data)")
def txz_corrupt(d: Path) -> Path:
    # Near the end (block check, index): the start still reads as a tar.
    return _flip(_tar_of(d / "s.txz", [SKILL, DATA], "w:xz"), -40, 8)


@_bad("the archive is damaged (it starts like a .zip or .tar archive but cannot be read")
def tbz2_truncated(d: Path) -> Path:
    return _cut(_tar_of(d / "s.tbz2", [SKILL, DATA], "w:bz2"), 600)


@_bad("the archive is damaged (unexpected end of data)")
def tar_truncated(d: Path) -> Path:
    # Headers are 512 bytes and SKILL.md fits one block: 1800 is inside data.bin.
    return _cut(_tar_of(d / "s.tar", [SKILL, DATA]), 1800)


@_bad("the archive is damaged (a member header is corrupt; what follows is unreadable)")
def tar_bad_member_header(d: Path) -> Path:
    # tarfile takes a bad header for the end of the archive: the members from
    # there on would be dropped without a word.
    tar = _tar_of(d / "s.tar", [SKILL, NOTES, ("more.txt", b"x")])
    with tarfile.open(tar) as tf:
        header = tf.getmember("notes.txt").offset
    return _flip(tar, header + 100, 8)  # its mode field


@_bad("the archive is damaged (it starts like a .zip or .tar archive but cannot be read")
def zip_truncated(d: Path) -> Path:
    zipped = _zip(d / "s.zip", [SKILL, NOTES])
    return _cut(zipped, zipped.stat().st_size * 7 // 10)  # its central directory is gone


@_bad("the archive is damaged (Error -3 while decompressing data")
def zip_corrupt_deflate(d: Path) -> Path:
    # The deflate block header: zlib itself fails, before any CRC check.
    zipped = _zip(d / "s.zip", [SKILL, ("notes.txt", b"abc" * 300)])
    return _flip(zipped, _zip_data_at(zipped, "notes.txt"), 1)


@_bad("the archive is damaged (Bad CRC-32 for file 'notes.txt')")
def zip_corrupt_stored(d: Path) -> Path:
    zipped = _zip(d / "s.zip", [SKILL, NOTES], zipfile.ZIP_STORED)
    return _flip(zipped, _zip_data_at(zipped, "notes.txt") + 10, 4)


@_bad("member 'notes.txt' uses compression method 9, not supported")
def zip_unknown_compression(d: Path) -> Path:
    return _patch_zip(_zip(d / "s.zip", [SKILL, NOTES]), "notes.txt", method=9)


# -- encrypted
@_bad("member 'notes.txt' is encrypted")
def zip_encrypted(d: Path) -> Path:
    return _patch_zip(_zip(d / "s.zip", [SKILL, NOTES]), "notes.txt", flags=0x1)


@pytest.mark.parametrize(
    ("make", "message", "small"), [pytest.param(*case[1:], id=case[0]) for case in BAD_ARCHIVES]
)
def test_bad_archives_are_refused_and_leave_nothing(
    tmp_path: Path, staging: Path, make: Maker, message: str, small: bool
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = make(src)
    with pytest.raises(host.SkillRefused) as err:
        host.prepare_skill(None, archive, SMALL if small else None)
    assert err.value.what.startswith(message), err.value.what
    assert "\n" not in str(err.value) and err.value.fix
    assert list(staging.iterdir()) == []  # nothing staged is left behind
    assert [p.name for p in src.iterdir()] == [archive.name]  # nothing written beside it


def test_the_same_archives_intact_are_accepted(tmp_path: Path, staging: Path) -> None:
    # Guards the test above: what breaks them is the damage, not the making.
    for archive in (
        _tar_of(tmp_path / "s.tgz", [SKILL, DATA], "w:gz"),
        _tar_of(tmp_path / "s.txz", [SKILL, DATA], "w:xz"),
        _tar_of(tmp_path / "s.tbz2", [SKILL, DATA], "w:bz2"),
        _tar_of(tmp_path / "s.tar", [SKILL, NOTES, ("more.txt", b"x")]),
        _zip(tmp_path / "s.zip", [SKILL, ("notes.txt", b"abc" * 300)]),
        _zip(tmp_path / "t.zip", [SKILL, NOTES], zipfile.ZIP_STORED),
        _patch_zip(_zip(tmp_path / "u.zip", [SKILL, NOTES]), "notes.txt"),  # a no-op patch
    ):
        with host.prepare_skill("hello", archive, SMALL) as skill:
            assert len(skill.files) in (2, 3), archive.name
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [pytest.param(make, msg, id=name) for name, make, msg, small in BAD_ARCHIVES if not small],
)
def test_skill_add_of_a_bad_archive_says_why_in_one_line_and_installs_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    make: Maker,
    message: str,
) -> None:
    # Through the CLI, on a running claw. Copying into the claw would be the
    # controller's put_tree: it must never be asked.
    home = tmp_path / "home"
    monkeypatch.setenv("CLAWDEN_HOME", str(home))
    monkeypatch.setenv("CLAWDEN_LIBVIRT_URI", "test:///default")
    db = open_db(Settings.from_env().db_path)
    try:
        ClawRepository(db).add(Claw("alice", "Alice", ClawState.RUNNING, "img", 1, 512, "2026"))
    finally:
        db.close()
    copied: list[tuple[object, ...]] = []
    monkeypatch.setattr(skill_commands, "put_tree", lambda *a: copied.append(a))
    src = tmp_path / "src"
    src.mkdir()
    archive = make(src)

    assert main(["skill", "add", "alice", str(archive)]) == InvalidInput.exit_code
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert copied == []
    db = open_db(Settings.from_env().db_path)
    try:
        assert SkillRepository(db).list("alice") == []
        assert "skill.add" not in [e.action for e in AuditLog(db).entries()]
    finally:
        db.close()
    assert list((home / "tmp").iterdir()) == []  # the staging folder is gone
