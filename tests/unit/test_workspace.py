"""Guest workspace: prompt assembly order and caps, bootstrap, heartbeat, memory tools."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from appliance.guest import confined
from appliance.guest import workspace as ws

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = datetime(2025, 3, 15, 8, 30)  # matches the newer fixture's daily notes
BIG = 100_000


@pytest.fixture
def new_ws(tmp_path: Path) -> Path:
    dest = tmp_path / "workspace"
    shutil.copytree(FIXTURES / "openclaw-new", dest)
    return dest


def _assemble(
    root: Path, *, per_file: int = BIG, total: int = BIG, first: bool = False
) -> ws.AssembledPrompt:
    return ws.assemble_system_prompt(
        root, NOW, per_file_cap=per_file, total_cap=total, first_run=first
    )


def test_files_are_included_in_reading_order(new_ws: Path) -> None:
    result = _assemble(new_ws)
    # The files' own "## " headings are content; section headings name a file.
    headings = [
        ln[3:]
        for ln in result.text.splitlines()
        if ln.startswith("## ") and (ln.endswith(".md") or ln.startswith("## Skills"))
    ]
    assert headings == [
        "IDENTITY.md", "SOUL.md", "USER.md", "AGENTS.md", "TOOLS.md", "MEMORY.md",
        "memory/2025-03-14.md", "memory/2025-03-15.md", "HEARTBEAT.md",
        "Skills (load one by name when a task needs it)",
    ]  # fmt: skip
    assert "**Name:** Pebble" in result.text
    assert "Robin wants revision reminders at 17:00" in result.text
    assert "Violin exam moved to 2025-04-09." in result.text
    assert "- weather-report: Give a short weather report" in result.text
    assert "mock exam" not in result.text  # memory/projects.md: only today's and yesterday's notes
    assert result.status_of("SOUL.md") == "included"


def test_bootstrap_only_on_first_run(new_ws: Path) -> None:
    assert "## BOOTSTRAP.md" not in _assemble(new_ws).text
    assert _assemble(new_ws).status_of("BOOTSTRAP.md") == "skipped"
    first = _assemble(new_ws, first=True)
    assert first.text.split("\n## ")[1].startswith("BOOTSTRAP.md")
    assert "You just woke up." in first.text


def test_bootstrap_state_follows_openclaw_state_file(new_ws: Path) -> None:
    assert ws.bootstrap_done(new_ws) and not ws.bootstrap_pending(new_ws)
    (new_ws / ".openclaw" / "workspace-state.json").unlink()
    assert ws.bootstrap_pending(new_ws)
    ws.mark_bootstrap_done(new_ws, NOW)
    assert not ws.bootstrap_pending(new_ws)
    (new_ws / "BOOTSTRAP.md").unlink()
    (new_ws / ".openclaw" / "workspace-state.json").unlink()
    assert not ws.bootstrap_pending(new_ws)  # no BOOTSTRAP.md, nothing to do


def test_per_file_cap_truncates_with_a_marker(new_ws: Path) -> None:
    body = "".join(f"line {n} of a long memory\n" for n in range(2000))
    (new_ws / "MEMORY.md").write_text(body)
    result = _assemble(new_ws, per_file=1000)
    section = result.text.split("\n## MEMORY.md\n\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.rstrip()) <= 1000
    assert "[... MEMORY.md truncated by clawden: longer than 1000 characters" in section
    assert section.startswith("line 0 of") and "line 1999 of" in section  # head and tail
    assert result.status_of("MEMORY.md") == "truncated"


def test_total_cap_drops_lowest_priority_first(new_ws: Path) -> None:
    full = _assemble(new_ws)
    total = len(full.text) - 400  # too small for everything
    result = _assemble(new_ws, total=total)
    assert len(result.text) <= total
    assert result.status_of("Skills (load one by name when a task needs it)") == "dropped"
    for name in ("SOUL.md", "IDENTITY.md", "USER.md", "AGENTS.md", "MEMORY.md"):
        assert result.status_of(name) == "included", name
    tiny = _assemble(new_ws, total=900)
    assert len(tiny.text) <= 900
    assert tiny.status_of("SOUL.md") == "included"
    assert tiny.status_of("MEMORY.md") == "dropped"
    assert "## MEMORY.md" not in tiny.text


def test_missing_files_are_tolerated(tmp_path: Path) -> None:
    (tmp_path / "SOUL.md").write_text("Be kind.\n")
    result = _assemble(tmp_path)
    assert "## SOUL.md\n\nBe kind." in result.text
    assert result.status_of("AGENTS.md") == "missing"
    assert result.status_of("memory/2025-03-15.md") == "missing"


def test_symlink_out_of_workspace_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET host data\n")
    root = tmp_path / "w"
    (root / "memory").mkdir(parents=True)
    (root / "SOUL.md").symlink_to(outside)
    (root / "USER.md").symlink_to("../secret.txt")
    (root / "AGENTS.md").write_text("rules\n")
    (root / "MEMORY.md").symlink_to(root / "AGENTS.md")  # a link that stays inside is fine
    result = _assemble(root)
    assert "TOP SECRET" not in result.text
    assert result.status_of("SOUL.md") == "refused"
    assert result.status_of("USER.md") == "refused"
    assert result.status_of("MEMORY.md") == "included"
    with pytest.raises(confined.WorkspaceError, match="outside the workspace"):
        confined.read_confined(root, "SOUL.md", 100)
    with pytest.raises(confined.WorkspaceError):
        confined.read_confined(root, "../secret.txt", 100)


def test_fifo_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "SOUL.md")
    assert _assemble(tmp_path).status_of("SOUL.md") == "refused"


def test_light_heartbeat_context_is_small(new_ws: Path) -> None:
    result = ws.light_heartbeat_context(new_ws, NOW)
    assert "send the revision reminder" in result.text and "Pebble" in result.text
    assert "SOUL.md" not in result.text and "MEMORY.md" not in result.text
    assert not ws.heartbeat_checklist_empty(new_ws)
    (new_ws / "HEARTBEAT.md").write_text("# HEARTBEAT.md\n\n<!-- nothing yet -->\n\n")
    assert ws.heartbeat_checklist_empty(new_ws)


def test_memory_append_search_read(new_ws: Path) -> None:
    rel = ws.memory_append(new_ws, "Robin's titration practical went well.", NOW)
    assert rel == "memory/2025-03-15.md"
    ws.memory_append(new_ws, "Second note", datetime(2025, 3, 16, 9, 5))
    fresh = (new_ws / "memory" / "2025-03-16.md").read_text()
    assert fresh == "# 2025-03-16\n\n## 09:05\n\nSecond note\n"
    hits = ws.memory_search(new_ws, "TITRATION practical", limit=5)
    assert [str(h) for h in hits[:2]] == [
        "memory/2025-03-15.md:8: Robin's titration practical went well.",
        "memory/2025-03-14.md:4: - Asked for a reminder about the titration practical on Monday.",
    ]
    assert ws.memory_search(new_ws, "violin", limit=1)[0].path == "MEMORY.md"
    assert "spaced repetition" in ws.memory_read(new_ws, "MEMORY.md")
    assert "mock exam" in ws.memory_read(new_ws, "memory/projects.md")
    for bad in ("SOUL.md", "memory/../SOUL.md", "/etc/passwd.md", "memory/nope.md"):
        with pytest.raises(confined.WorkspaceError):
            ws.memory_read(new_ws, bad)


def test_memory_append_refuses_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "w"
    root.mkdir()
    (root / "memory").symlink_to(outside)
    with pytest.raises(confined.WorkspaceError):
        ws.memory_append(root, "hello", NOW)
    assert list(outside.iterdir()) == []
    (root / "memory").unlink()
    (root / "memory").mkdir()
    (root / "memory" / "2025-03-15.md").symlink_to(outside / "x.md")
    with pytest.raises(confined.WorkspaceError):
        ws.memory_append(root, "hello", NOW)
    assert list(outside.iterdir()) == []
    with pytest.raises(confined.WorkspaceError, match="empty"):
        ws.memory_append(root, "   ", NOW)
