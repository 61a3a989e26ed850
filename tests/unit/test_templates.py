"""The starter workspace: created once, never overwriting, never through links,
and with a heartbeat checklist that costs no model call."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

from appliance.core.heartbeat import heartbeat_is_actionable
from appliance.guest import workspace as ws
from appliance.guest.serve import _identity
from appliance.guest.templates import seed_workspace, starter_files
from tests.unit.test_guest_serve import deliver, layout

__all__ = ["layout"]  # the fixture, shared with the serve tests

NOW = datetime(2026, 11, 20, 9, 0)


def test_fresh_workspace_gets_every_starter_file(tmp_path: Path) -> None:
    workspace, state = tmp_path / "ws", tmp_path / "state"
    created = seed_workspace(workspace, "pip", "Alice", NOW, state_dir=state)
    assert created == ["AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "HEARTBEAT.md",
                       "BOOTSTRAP.md"]  # fmt: skip
    assert not (workspace / "MEMORY.md").exists()
    assert "**Name:** pip" in (workspace / "IDENTITY.md").read_text()
    assert "**Name:** Alice" in (workspace / "USER.md").read_text()
    assert ws.bootstrap_pending(workspace)
    prompt = ws.assemble_system_prompt(
        workspace, NOW, per_file_cap=20_000, total_cap=60_000, first_run=True
    )
    assert "BOOTSTRAP.md" in prompt.text and "introduce yourself as pip" in prompt.text
    assert len(prompt.text) < 6_000  # it goes into every prompt: stays short


def test_default_heartbeat_is_not_actionable(tmp_path: Path) -> None:
    text = starter_files("pip", "Alice", NOW)["HEARTBEAT.md"]
    assert not heartbeat_is_actionable(text)
    seed_workspace(tmp_path, "pip", "Alice", NOW)
    assert ws.heartbeat_checklist_empty(tmp_path)  # the guest's own check agrees


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "SOUL.md").write_text("mine\n")
    created = seed_workspace(tmp_path, "pip", "Alice", NOW)
    assert "SOUL.md" not in created and (tmp_path / "SOUL.md").read_text() == "mine\n"
    # A shaped (imported) workspace is not sent through onboarding again.
    assert "BOOTSTRAP.md" not in created and not (tmp_path / "BOOTSTRAP.md").exists()


def test_seeds_only_once(tmp_path: Path) -> None:
    workspace, state = tmp_path / "ws", tmp_path / "state"
    seed_workspace(workspace, "pip", "Alice", NOW, state_dir=state)
    (workspace / "BOOTSTRAP.md").unlink()  # onboarding finished
    assert seed_workspace(workspace, "pip", "Alice", NOW, state_dir=state) == []
    assert not (workspace / "BOOTSTRAP.md").exists()


def test_links_are_not_followed(tmp_path: Path) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    os.symlink(outside / "agents.txt", workspace / "AGENTS.md")  # dangling link
    os.symlink(outside, workspace / "memory")
    created = seed_workspace(workspace, "pip", "Alice", NOW)
    assert "AGENTS.md" not in created
    assert not (outside / "agents.txt").exists() and list(outside.iterdir()) == []


def test_names_are_cleaned(tmp_path: Path) -> None:
    seed_workspace(tmp_path, "pi\np\x1b[31m", "", NOW)
    identity = (tmp_path / "IDENTITY.md").read_text()
    assert "\x1b" not in identity and "**Name:** pi p [31m" in identity
    assert "your family member" in (tmp_path / "USER.md").read_text()


def test_identity_defaults_when_unreadable(tmp_path: Path) -> None:
    assert _identity(tmp_path / "missing.json") == ("claw", "your family member")
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert _identity(bad) == ("claw", "your family member")
    good = tmp_path / "claw.json"
    good.write_text(json.dumps({"name": "pip", "member": "Alice", "ports": {}}))
    assert _identity(good) == ("pip", "Alice")


def test_first_delivery_seeds_an_empty_workspace(layout: dict[str, Path]) -> None:
    shutil.rmtree(layout["workspace"])
    identity = layout["state"].parent / "claw.json"
    identity.write_text(json.dumps({"name": "pip", "member": "Alice"}))
    event = {"type": "message", "text": "hello", "channel": "cli"}
    code, reply, _err = deliver(layout, event, "--identity", str(identity))
    assert code == 0, reply
    assert "**Name:** pip" in (layout["workspace"] / "IDENTITY.md").read_text()
    assert (layout["state"] / "seeded").exists()
    (layout["workspace"] / "BOOTSTRAP.md").unlink()
    code, reply, _err = deliver(layout, event, "--identity", str(tmp_missing(layout)))
    assert code == 0 and not (layout["workspace"] / "BOOTSTRAP.md").exists()


def tmp_missing(layout: dict[str, Path]) -> Path:
    return layout["state"].parent / "no-such-claw.json"
