"""Importing OpenClaw workspaces: the plan for both layouts, refusals, and the
imported files ending up in the claw's system prompt."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from appliance.core.errors import InvalidInput, NotFound
from appliance.guest import skills as guest_skills
from appliance.guest import workspace as ws
from appliance.workspace.importer import (
    ImportLimits,
    ImportRefused,
    import_lines,
    inspect_workspace,
    stage_import,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD, NEW = FIXTURES / "openclaw-old", FIXTURES / "openclaw-new"


def test_plan_for_the_older_layout() -> None:
    plan = inspect_workspace(OLD)
    assert plan.layout == "old"
    assert [f.path for f in plan.files] == [
        "AGENTS.md", "HEARTBEAT.md", "SOUL.md", "TOOLS.md",
        "memory/2024-11-03.md", "memory/2024-11-04.md", "skills/grocery-list/SKILL.md",
    ]  # fmt: skip
    assert plan.skills == ["grocery-list"]
    assert dict(plan.skipped) == {
        "canvas": "not part of an OpenClaw workspace",
        "notes.txt": "not part of an OpenClaw workspace",
    }
    assert plan.total_bytes == sum((OLD / f.path).stat().st_size for f in plan.files)
    assert not plan.bootstrap_pending


def test_plan_for_the_newer_layout() -> None:
    plan = inspect_workspace(NEW)
    assert plan.layout == "new"
    paths = [f.path for f in plan.files]
    for name in ("IDENTITY.md", "USER.md", "MEMORY.md", "BOOTSTRAP.md", "memory/projects.md"):
        assert name in paths
    assert ".openclaw/workspace-state.json" in paths
    assert "skills/weather-report/scripts/fetch.py" in paths
    assert plan.skills == ["weather-report"]
    skipped = dict(plan.skipped)
    assert skipped["memory/study-log.csv"] == "not a Markdown note"
    assert skipped["skills/drafts"] == "no SKILL.md: not a skill"
    assert not plan.bootstrap_pending  # onboardingCompletedAt is recorded


def test_import_lines_escape_untrusted_names(tmp_path: Path) -> None:
    shutil.copytree(OLD, tmp_path / "w")
    (tmp_path / "w" / "evil\x1b[2J.txt").write_text("x")
    lines = list(import_lines("sam", tmp_path / "w"))
    assert lines[1] == "  layout: older OpenClaw workspace"
    assert "  skipped evil\\x1b[2J.txt: not part of an OpenClaw workspace" in lines
    assert not any("\x1b" in line for line in lines)


@pytest.mark.parametrize("fixture", [OLD, NEW])
def test_imported_workspace_is_part_of_the_prompt(tmp_path: Path, fixture: Path) -> None:
    dest = tmp_path / "data" / "workspace"
    plan = inspect_workspace(fixture)
    stage_import(plan, dest)
    for item in plan.files:  # every planned file arrives byte for byte
        assert (dest / item.path).read_bytes() == (fixture / item.path).read_bytes()
    assert not (dest / "notes.txt").exists() and not (dest / "memory" / "study-log.csv").exists()
    days = sorted(p.stem for p in (dest / "memory").glob("????-??-??.md"))
    now = datetime.fromisoformat(days[-1] + "T09:00")
    prompt = ws.assemble_system_prompt(
        dest, now, per_file_cap=20_000, total_cap=60_000, first_run=ws.bootstrap_pending(dest)
    )
    for item in plan.files:
        name = item.path
        if name.endswith(".md") and "/" not in name and name != "BOOTSTRAP.md":
            assert f"## {name}\n\n" in prompt.text, name
            assert (fixture / name).read_text().strip().splitlines()[-1] in prompt.text
    for day in days[-2:]:
        assert f"## memory/{day}.md" in prompt.text
    assert "## BOOTSTRAP.md" not in prompt.text  # onboarding was done (or never needed)
    (skill,) = plan.skills
    assert f"- {skill}: " in prompt.text
    assert guest_skills.load_skill(dest, skill).startswith("# ")


def test_link_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(NEW, root)
    (tmp_path / "secret").write_text("host secret")
    (root / "memory" / "notes.md").symlink_to(tmp_path / "secret")
    with pytest.raises(ImportRefused, match="leads out of the workspace") as err:
        inspect_workspace(root)
    assert err.value.fix
    (root / "memory" / "notes.md").unlink()
    (root / "memory" / "notes.md").symlink_to("../MEMORY.md")  # inside: copied as a file
    plan = inspect_workspace(root)
    (item,) = [f for f in plan.files if f.path == "memory/notes.md"]
    assert item.source == "MEMORY.md"
    shutil.rmtree(root / "skills" / "weather-report")
    (root / "skills" / "weather-report").symlink_to(tmp_path)
    with pytest.raises(ImportRefused, match="leads out of the workspace"):
        inspect_workspace(root)


def test_hard_link_device_and_oversized_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(OLD, root)
    (root / "MEMORY.md").hardlink_to(tmp_path / "w" / "notes.txt")
    with pytest.raises(ImportRefused, match="hard link"):
        inspect_workspace(root)
    (root / "MEMORY.md").unlink()
    os.mkfifo(root / "memory" / "pipe.md")
    with pytest.raises(ImportRefused, match="FIFO"):
        inspect_workspace(root)
    (root / "memory" / "pipe.md").unlink()
    (root / "SOUL.md").write_text("x" * 5000)
    with pytest.raises(ImportRefused, match="5000 bytes, over the 4096-byte cap"):
        inspect_workspace(root, ImportLimits(max_file_bytes=4096))
    with pytest.raises(ImportRefused, match="over 3 files"):
        inspect_workspace(root, ImportLimits(max_files=3))


def test_not_a_workspace(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        inspect_workspace(tmp_path / "missing")
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(InvalidInput, match="does not look like an OpenClaw workspace"):
        inspect_workspace(tmp_path)


def test_stage_refuses_a_file_swapped_for_a_link(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(OLD, root)
    plan = inspect_workspace(root)
    (root / "SOUL.md").unlink()
    (root / "SOUL.md").symlink_to("/etc/passwd")
    with pytest.raises(ImportRefused, match="cannot be read safely"):
        stage_import(plan, tmp_path / "dest")
    with pytest.raises(InvalidInput, match="not empty"):
        stage_import(plan, tmp_path / "dest")


def _outside_twin(tmp_path: Path, root: Path, folder: str) -> Path:
    """A folder outside the workspace whose files have the names and sizes of
    ``root/folder``'s but secret content: only the walk can tell them apart."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for planned in (root / folder).iterdir():
        canary = "CANARY".ljust(planned.stat().st_size, "!")
        (outside / planned.name).write_text(canary)
    return outside


def test_stage_refuses_a_folder_swapped_for_a_link_after_inspection(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(OLD, root)
    plan = inspect_workspace(root)
    assert "memory/2024-11-03.md" in [f.source for f in plan.files]
    outside = _outside_twin(tmp_path, root, "memory")
    shutil.rmtree(root / "memory")
    (root / "memory").symlink_to(outside)  # swapped in between inspection and staging
    dest = tmp_path / "dest"
    with pytest.raises(ImportRefused, match="memory is a link or no longer a folder") as err:
        stage_import(plan, dest)
    assert "cannot be read safely any more" in str(err.value) and err.value.fix
    staged = [p.read_text() for p in dest.rglob("*") if p.is_file()]
    assert staged and not any("CANARY" in text for text in staged)
    assert not (dest / "memory").exists()


def test_stage_refuses_a_link_deeper_in_the_path_and_a_replaced_workspace(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(OLD, root)
    plan = inspect_workspace(root)
    skill = root / "skills" / "grocery-list"
    outside = _outside_twin(tmp_path, root, "skills/grocery-list")
    shutil.rmtree(skill)
    skill.symlink_to(outside)
    with pytest.raises(ImportRefused, match="skills/grocery-list is a link or no longer a folder"):
        stage_import(plan, tmp_path / "dest1")
    assert not any("CANARY" in p.read_text() for p in (tmp_path / "dest1").rglob("*.md"))
    # The workspace folder itself moved away and a look-alike put in its place.
    skill.unlink()
    shutil.copytree(OLD / "skills" / "grocery-list", skill)
    root.rename(tmp_path / "w-moved")
    shutil.copytree(tmp_path / "w-moved", root)
    with pytest.raises(ImportRefused, match="was replaced by another folder"):
        stage_import(plan, tmp_path / "dest2")
    assert list((tmp_path / "dest2").iterdir()) == []


def test_stage_refuses_a_file_turned_into_a_folder_or_a_hard_link(tmp_path: Path) -> None:
    root = tmp_path / "w"
    shutil.copytree(OLD, root)
    plan = inspect_workspace(root)
    (root / "TOOLS.md").unlink()
    (root / "TOOLS.md").mkdir()
    with pytest.raises(ImportRefused, match="TOOLS.md changed while it was being imported"):
        stage_import(plan, tmp_path / "dest1")
    (root / "TOOLS.md").rmdir()
    size = (OLD / "TOOLS.md").stat().st_size
    (tmp_path / "elsewhere").write_text("S" * size)
    (root / "TOOLS.md").hardlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImportRefused, match="TOOLS.md changed while it was being imported"):
        stage_import(plan, tmp_path / "dest2")
