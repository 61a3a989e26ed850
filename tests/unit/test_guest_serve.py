"""``python3 -m guest.serve deliver`` as the host will run it: the package copied
alone to a folder as ``guest`` (like /opt/clawden/guest in the image), a fresh
process per event, JSON in on stdin and out on stdout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.guest.serve import TEST_SCRIPT_ENV, delivery_lock

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "openclaw-new"
# The image's interpreter has no openai and no host package; Debian's python3
# here is the same (3.11, system site-packages only) when it exists.
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    opt = tmp_path / "opt"
    shutil.copytree(
        REPO / "appliance" / "guest", opt / "guest", ignore=shutil.ignore_patterns("__pycache__")
    )
    workspace = tmp_path / "workspace"
    shutil.copytree(FIXTURE, workspace)
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"tool": "shell", "arguments": {"command": "echo hi > from-shell.txt"}},
                {"content": "Done: I wrote from-shell.txt."},
            ]
        )
    )
    return {"opt": opt, "workspace": workspace, "state": tmp_path / "state", "script": script}


def deliver(layout: dict[str, Path], event: Any, *extra: str) -> tuple[int, dict[str, Any], str]:
    argv = [PYTHON, "-m", "guest.serve", "deliver", "--workspace", str(layout["workspace"])]
    argv += ["--state-dir", str(layout["state"]), *extra]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", TEST_SCRIPT_ENV: str(layout["script"])}
    done = subprocess.run(
        argv,
        cwd=layout["opt"],
        env=env,
        input=json.dumps(event).encode() if not isinstance(event, bytes) else event,
        capture_output=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, done.stderr.decode()  # exactly one JSON line, always
    return done.returncode, json.loads(lines[0]), done.stderr.decode()


def test_deliver_runs_the_agent_from_the_copied_package(layout: dict[str, Path]) -> None:
    code, reply, err = deliver(layout, {"type": "message", "text": "make a file", "channel": "cli"})
    assert code == 0, err
    assert reply["text"] == "Done: I wrote from-shell.txt."
    assert (reply["status"], reply["model_calls"], reply["tool_calls"]) == ("reply", 2, 1)
    assert (layout["workspace"] / "from-shell.txt").read_text() == "hi\n"
    conversation = layout["state"] / "conversations" / "main.jsonl"
    roles = [json.loads(ln)["m"]["role"] for ln in conversation.read_text().splitlines()]
    assert roles == ["user", "assistant", "tool", "assistant"]


def test_deliver_refuses_a_malformed_event(layout: dict[str, Path]) -> None:
    code, reply, _ = deliver(layout, b"{not json")
    assert code == 2 and reply == {
        "error": {"type": "bad_event", "message": "the event is not JSON"}
    }


def test_deliveries_to_one_claw_do_not_interleave(layout: dict[str, Path]) -> None:
    with delivery_lock(layout["state"], timeout_s=1):
        code, reply, _ = deliver(layout, {"type": "message", "text": "hi"}, "--lock-timeout", "0.3")
    assert code == 3 and reply["error"]["type"] == "busy"
    assert not (layout["state"] / "conversations").exists()  # nothing was written
