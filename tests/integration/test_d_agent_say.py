"""The claw's own loop, end to end in a real VM: `clawden claw say` → the agent
in the guest → the host LLM gateway over the channel → a scripted
OpenAI-compatible upstream (driven by the real `openai` client in the guest)
→ a tool run inside the VM → the reply. The upstream key never enters the VM.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.controller import rpc
from bench.say_roundtrip import WARM_AGENT_PIDS
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


# ---- the warm agent ------------------------------------------------------------
# The agent's service in the VM (clawden-agent.service), reached over the
# claw's real channel. The test reads the controller's `say` op directly, so
# it sees each piece of the reply as the controller relays it.


def _warm_pids(env: Env) -> list[int]:
    out = env.run("claw", "exec", "alice", "--", *WARM_AGENT_PIDS).stdout
    return sorted(int(p) for p in out.split())


def _wait_for_warm_agent(env: Env, other_than: int | None = None) -> int:
    """The pid of the (one) warm agent, once it is running; a bounded wait."""
    deadline = time.monotonic() + 180
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = _warm_pids(env)
        if len(pids) == 1 and pids[0] != other_than:
            return pids[0]
        time.sleep(2)
    raise AssertionError(f"no warm agent (other than {other_than}) within 180 s: {pids}")


def _say(env: Env, text: str) -> tuple[list[str], dict[str, Any]]:
    """The pieces and the final reply of one `say`, as the CLI receives them."""
    request = {"op": "say", "claw": "alice", "text": text, "timeout": 600, "wait": 60}
    pieces: list[str] = []
    final: dict[str, Any] = {}
    for line in rpc.stream(env.home / "run" / "controller.sock", request, timeout=700):
        if set(line) == {"delta"}:
            pieces.append(line["delta"])
        else:
            final = line
    return pieces, final


def test_the_warm_agent_streams_and_survives_being_killed(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    answer = "The warm agent answers you piece by piece."
    scenario = {
        "steps": [
            {"name": "stream", "repeat": True, "piece_delay_s": 0.3, "reply": {"content": answer}}
        ]
    }
    first = _wait_for_warm_agent(clawden_env)
    with scripted_llm(clawden_env, scenario):
        pieces, final = _say(clawden_env, "stream to me")
        # More than one piece reached the host, and together they are the reply.
        assert len(pieces) > 1, pieces
        assert "".join(pieces) == answer
        assert (final["status"], final["text"]) == ("reply", answer)
        assert _warm_pids(clawden_env) == [first]  # the warm agent answered, and lives on

        # Killed (as the agent user can do to its own service): systemd
        # starts a new one, and the next delivery works.
        _kill(clawden_env, first)
        second = _wait_for_warm_agent(clawden_env, other_than=first)
        pieces, final = _say(clawden_env, "are you back?")
        assert (final["status"], final["text"]) == ("reply", answer)
        assert len(pieces) > 1, pieces  # from the new warm agent, not a one-shot one
        assert _warm_pids(clawden_env) == [second]


def test_a_crash_mid_delivery_is_an_error_reply_and_loses_nothing(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    scenario = {
        "steps": [
            {"name": "slow", "delay_s": 20, "reply": {"content": "never seen"}},
            {"name": "after", "reply": {"content": "I am here again."}},
        ]
    }
    history = "/data/home/.clawden/agent/conversations/main.jsonl"
    pid = _wait_for_warm_agent(clawden_env)
    turns_before = _lines(clawden_env, history)
    with scripted_llm(clawden_env, scenario) as upstream:
        outcome: list[tuple[list[str], dict[str, Any]]] = []
        talk = threading.Thread(target=lambda: outcome.append(_say(clawden_env, "slow one")))
        talk.start()
        deadline = time.monotonic() + 300
        while not upstream.requests:  # the agent is waiting for its model
            assert time.monotonic() < deadline, "the model was never called"
            time.sleep(0.5)
        _kill(clawden_env, pid)
        talk.join(600)
        [(_, final)] = outcome
        assert final["status"] == "error", final
        assert "stopped in the middle of this message" in final["text"]
        # The next message is answered (by a new warm agent).
        _wait_for_warm_agent(clawden_env, other_than=pid)
        assert _say(clawden_env, "hello again")[1]["text"] == "I am here again."
    # Nothing stored was lost: the conversation kept every earlier turn (and
    # the message that was cut off), and the host has both sides.
    turns_after = _lines(clawden_env, history)
    assert turns_after[: len(turns_before)] == turns_before
    assert any("slow one" in t for t in turns_after[len(turns_before) :])
    with sqlite3.connect(clawden_env.home / "clawden.db") as db:
        rows = db.execute(
            "SELECT direction, text FROM messages WHERE claw = 'alice' ORDER BY id"
        ).fetchall()
    db.close()
    assert rows[-4:-2] == [("in", "slow one"), ("out", final["text"])]
    assert rows[-2:] == [("in", "hello again"), ("out", "I am here again.")]


def _kill(env: Env, pid: int) -> None:
    # The shell's own kill: the image has no procps.
    env.run("claw", "exec", "alice", "--", "sh", "-c", 'kill -KILL "$1"', "kill", str(pid))


def _lines(env: Env, path: str) -> list[str]:
    return env.run("claw", "exec", "alice", "--", "cat", path).stdout.splitlines()
