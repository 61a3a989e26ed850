"""The claw's own loop, end to end in a real VM: `clawden claw say` → the agent
in the guest → the host LLM gateway over the channel → a scripted
OpenAI-compatible upstream (driven by the real `openai` client in the guest)
→ a tool run inside the VM → the reply. The upstream key never enters the VM.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Env, scripted_llm

pytestmark = pytest.mark.integration


def _utc_day() -> date:
    """Today as the gateway and `llm usage` count it: the UTC calendar day."""
    return datetime.now(UTC).date()


def _usage_calls(env: Env, claw: str) -> dict[str, int]:
    """The CALLS column of `clawden llm usage CLAW`, per PERIOD (day and month)."""
    out = env.run("llm", "usage", claw).stdout
    lines = out.splitlines()
    if lines == [f"no LLM calls recorded for claw {claw!r} this month"]:
        return {}
    header = ["CLAW", "PERIOD", "CALLS", "PROMPT", "COMPLETION", "COST", "USD"]
    assert lines[0].split() == header, out
    calls: dict[str, int] = {}
    for line in lines[1:]:
        name, period, count = line.split()[:3]
        assert name == claw and period not in calls, out
        calls[period] = int(count)
    return calls


def _unmatchable_self(secret: str) -> str:
    """A grep pattern for ``secret`` that does not contain it (nor match itself)."""
    return secret[:4] + "[" + secret[4] + "]" + secret[5:]


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
    usage_before, day_before = _usage_calls(clawden_env, "alice"), _utc_day()
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
    # The usage table counts exactly the two gateway calls of this conversation.
    usage_after, day_after = _usage_calls(clawden_env, "alice"), _utc_day()
    today, month = f"{day_after:%Y-%m-%d}", f"{day_after:%Y-%m}"
    counts = (usage_before, usage_after)
    if day_after == day_before:
        assert set(usage_after) == {today, month}, counts
        assert usage_after[today] == usage_before.get(today, 0) + 2, counts
    else:  # midnight UTC passed during the say: each call counts on its own day
        assert usage_after.get(today, 0) <= 2, counts
    if (day_after.year, day_after.month) == (day_before.year, day_before.month):
        assert usage_after[month] == usage_before.get(month, 0) + 2, counts

    # The canary key appears nowhere in the guest: not in any file or process
    # environment the claw can read, and not on any of its disks (read on the
    # host, where even root-only guest files are visible as raw bytes).
    # The pattern matches the key without containing it, so the search itself
    # never puts the key into the guest. A control token of the same shape,
    # written to a file in the guest first, is searched for the same way: its
    # hit proves grep ran over those paths and can find such a string.
    control = "sk-clawden-control-" + secrets.token_hex(16)
    paths = "/data /etc /opt /run /tmp /var /proc/[0-9]*/environ"
    script = (
        'ctl=$(mktemp /tmp/clawden-control.XXXXXX) && printf "%s" "$1" > "$ctl" || exit 97\n'
        f'grep -rsl -e "$2" {paths}; echo "key-grep-exit=$?"\n'
        f'grep -rsl -e "$3" {paths}; echo "control-grep-exit=$?"\n'
        'echo "control-file=$ctl"; rm -f "$ctl"\n'
    )
    found = clawden_env.run(
        "claw", "exec", "alice", "--", "sh", "-c", script, "search",
        control, _unmatchable_self(key), _unmatchable_self(control),
        check=False,
    )  # fmt: skip
    # The script itself ran to its end, and nothing complained (grep -s is
    # quiet about unreadable files; a bad pattern or a missing grep is not).
    assert (found.returncode, found.stderr) == (0, ""), found.stdout + found.stderr
    lines = found.stdout.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("key-grep-exit="))
    c = next(i for i, line in enumerate(lines) if line.startswith("control-grep-exit="))
    assert len(lines) == c + 2, found.stdout
    control_file = lines[-1].removeprefix("control-file=")
    assert control_file.startswith("/tmp/clawden-control."), found.stdout
    # grep exits 0 on a hit, 1 on none, 2 when some files were unreadable
    # (other users' /proc entries) — with or without a hit.
    assert control_file in lines[k + 1 : c], found.stdout
    assert lines[c] in ("control-grep-exit=0", "control-grep-exit=2"), found.stdout
    assert lines[:k] == [], found.stdout  # no file holds the key
    assert lines[k] in ("key-grep-exit=1", "key-grep-exit=2"), found.stdout
    for disk in (clawden_env.home / "claws" / "alice").glob("*"):
        if disk.is_file():
            assert key.encode() not in disk.read_bytes(), disk.name
    assert json.dumps(key) not in (clawden_env.home / "claws" / "alice" / "console.log").read_text(
        errors="replace"
    )
