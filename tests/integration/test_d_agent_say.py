"""The claw's own loop, end to end in a real VM: `clawden claw say` → the agent
in the guest → the host LLM gateway over the channel → a scripted
OpenAI-compatible upstream (driven by the real `openai` client in the guest)
→ a tool run inside the VM → the reply. The upstream key never enters the VM.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest

from tests.integration.conftest import Env, scripted_llm

pytestmark = pytest.mark.integration


def test_say_goes_through_the_gateway_and_the_key_never_enters_the_guest(
    clawden_env: Env, two_claws: tuple[str, str], tmp_path: Path
) -> None:
    key = "sk-clawden-canary-" + secrets.token_hex(16)
    scenario = {
        "models": ["tiny"],
        "steps": [
            {
                "name": "write a file",
                "match": {"last_user_contains": "note"},
                "reply": {
                    "tool_calls": [
                        {
                            "name": "file_write",
                            "arguments": {"path": "note.txt", "content": "from the model"},
                        }
                    ]
                },
            },
            {
                "name": "answer",
                "match": {"last_role": "tool"},
                "reply": {"content": "Done: I wrote note.txt for you."},
            },
        ],
    }
    with scripted_llm(clawden_env, scenario, key=key) as upstream:
        proc = clawden_env.run("claw", "say", "alice", "please leave me a note", "--timeout", "600")
        assert "Done: I wrote note.txt for you." in proc.stdout
        chats = [r for r in upstream.requests if r["path"] == "/v1/chat/completions"]
        assert len(chats) == 2  # the tool call, then the answer
        # Every request reached the upstream with the real key, injected by
        # the gateway: the guest only ever had a dummy one.
        assert all(r["authorization_matched"] for r in upstream.requests)

    # The tool really ran inside the VM, in the claw's workspace, as `claw`.
    out = clawden_env.run("claw", "exec", "alice", "--", "cat", "/data/workspace/note.txt").stdout
    assert out == "from the model"

    # Both sides of the conversation are stored on the host; usage recorded.
    with sqlite3.connect(clawden_env.home / "clawden.db") as db:
        rows = db.execute(
            "SELECT direction, text FROM messages WHERE claw = 'alice' ORDER BY id"
        ).fetchall()
    db.close()
    assert rows[-2:] == [
        ("in", "please leave me a note"),
        ("out", "Done: I wrote note.txt for you."),
    ]
    usage = clawden_env.run("llm", "usage", "alice").stdout
    assert "alice" in usage and "2" in usage

    # The canary key appears nowhere in the guest: not in any file or process
    # environment the claw can read, and not on any of its disks (read on the
    # host, where even root-only guest files are visible as raw bytes).
    # The pattern matches the key without containing it, so the search itself
    # never puts the key into the guest.
    pattern = key[:4] + "[" + key[4] + "]" + key[5:]
    found = clawden_env.run(
        "claw",
        "exec",
        "alice",
        "--",
        "sh",
        "-c",
        f"grep -rsl -e '{pattern}' /data /etc /opt /run /tmp /var /proc/[0-9]*/environ",
        check=False,
    )
    # grep exits 2 when some files were unreadable (other users' /proc
    # entries); what matters is that it listed no file with the key.
    assert found.returncode in (1, 2) and found.stdout == "", found.stdout
    for disk in (clawden_env.home / "claws" / "alice").glob("*"):
        if disk.is_file():
            assert key.encode() not in disk.read_bytes(), disk.name
    assert json.dumps(key) not in (clawden_env.home / "claws" / "alice" / "console.log").read_text(
        errors="replace"
    )
