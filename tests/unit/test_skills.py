"""Skills: SKILL.md parsing (PyYAML and the built-in subset), index and load in
the guest, and the host's validation of folders and archives before install."""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

from appliance.core.errors import InvalidInput
from appliance.guest import skills as guest
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
