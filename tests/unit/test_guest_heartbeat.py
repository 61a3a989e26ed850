"""Light heartbeats, asserted on what reaches the model: the real ``openai``
client (OpenAIChatModel) against the scripted OpenAI-compatible server, which
logs every request body, beat after beat."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from appliance.guest.agent import Agent, Event, Limits
from appliance.guest.heartbeat import HEARTBEAT_TOOLS, OPEN_TOOL
from appliance.guest.history import History
from appliance.guest.hostapi import FakeHostApi
from appliance.guest.model import FakeChatModel, OpenAIChatModel, text_reply, tool_reply
from appliance.guest.tools import ToolContext, default_toolbox
from appliance.llm.scripted import ScriptedModelServer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclaw-new"
KEY = "clawden-no-key"
NOW = datetime(2025, 3, 17, 16, 58, tzinfo=timezone(timedelta(hours=1)))
TASK = "send the revision reminder"  # the fixture's HEARTBEAT.md task
BEATS = 5
ALL_TOOLS = 15  # the main conversation's toolbox (docs/agent.md, "Tools")


def clock() -> datetime:
    return NOW


def beat_step(name: str, reply: dict[str, Any], **match: Any) -> dict[str, Any]:
    """A step that only a heartbeat call on the cheaper model fits."""
    return {"name": name, "match": {"model": "small", **match}, "reply": reply}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    dest = tmp_path / "workspace"
    shutil.copytree(FIXTURE, dest, symlinks=True)
    return dest


def run_beats(
    workspace: Path, scenario: dict[str, Any], events: list[Event]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Deliver ``events`` one by one, each to a fresh Agent (as each delivery is
    a fresh process); the replies and the chat request bodies the server saw."""
    with ScriptedModelServer(scenario, api_key=KEY) as server:
        replies = []
        for event in events:
            chat = OpenAIChatModel(server.base_url, KEY, max_retries=0)
            try:
                tools = default_toolbox(ToolContext(workspace, FakeHostApi(), clock))
                limits = Limits(model="big", heartbeat_model="small")
                agent = Agent(workspace, workspace.parent / "state", chat, tools, clock, limits)
                replies.append(agent.handle(event))
            finally:
                chat.close()
        bodies = [r["body"] for r in server.requests if r["path"] == "/v1/chat/completions"]
    return replies, bodies


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def est_tokens(body: dict[str, Any]) -> int:
    """What the benchmark counts: characters of messages and tool schemas / 4."""
    sent = json.dumps(body["messages"], ensure_ascii=False) + json.dumps(body.get("tools") or [])
    return len(sent) // 4


def test_five_quiet_beats_each_carry_the_same_two_messages_and_one_tool(workspace: Path) -> None:
    ok = {"content": "HEARTBEAT_OK"}
    steps = [beat_step(f"beat {n}", ok, last_user_contains="Heartbeat") for n in range(BEATS)]
    steps.append({"name": "owner", "match": {"model": "big"}, "reply": {"content": "Hi Alice."}})
    events = [Event("heartbeat")] * BEATS + [Event("message", "hello", channel="telegram")]

    replies, bodies = run_beats(workspace, {"models": ["big", "small"], "steps": steps}, events)

    assert [(r.status, r.model_calls) for r in replies[:BEATS]] == [("heartbeat_ok", 1)] * BEATS
    beats, chat = bodies[:BEATS], bodies[BEATS]
    for body in beats:
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert tool_names(body) == [OPEN_TOOL]
        system = body["messages"][0]["content"]
        assert "## HEARTBEAT.md" in system and TASK in system
        assert "## IDENTITY.md" in system and "Pebble" in system
        assert "Keep this short" not in system  # the checklist's comment is left out
        assert "## SOUL.md" not in system and "## MEMORY.md" not in system
        assert body["messages"][1]["content"].startswith("Heartbeat:")
        assert est_tokens(body) <= 2_000
    # No beat carries an earlier one: the fifth call is the first call again.
    assert all(body["messages"] == beats[0]["messages"] for body in beats)
    # The owner's conversation is unchanged: every tool, no heartbeat in it.
    assert len(tool_names(chat)) == ALL_TOOLS
    assert [m["role"] for m in chat["messages"]] == ["system", "user"]
    assert "## SOUL.md" in chat["messages"][0]["content"]
    # Every beat is still on disk; only the last is in the heartbeat's context.
    on_disk = History(workspace.parent / "state", "heartbeat", clock)
    assert len(on_disk.all) == 2 * BEATS and len(on_disk.messages) == 2


def test_a_beat_that_acts_gets_its_tools_and_the_next_beats_quote_only_its_report(
    workspace: Path,
) -> None:
    report = "Time for your revision, Alice!"
    note = "Sent Alice the revision reminder."
    steps = [
        beat_step("wants tools", {"tool_calls": [{"name": OPEN_TOOL, "arguments": {}}]}),
        beat_step(
            "notes it",
            {"tool_calls": [{"name": "memory_append", "arguments": {"text": note}}]},
            last_role="tool",
            tools_include=list(HEARTBEAT_TOOLS),
        ),
        beat_step("reports", {"content": report}, last_role="tool"),
        *[
            beat_step(f"quiet {n}", {"content": "HEARTBEAT_OK"}, last_user_contains=report)
            for n in range(BEATS - 1)
        ],
    ]
    events = [Event("heartbeat")] * BEATS

    replies, bodies = run_beats(workspace, {"models": ["big", "small"], "steps": steps}, events)

    assert (replies[0].status, replies[0].text) == ("reply", report)
    assert (replies[0].model_calls, replies[0].tool_calls) == (3, 2)
    assert note in (workspace / "memory" / "2025-03-17.md").read_text()
    acting, quiet = bodies[:3], bodies[3:]
    assert [len(b["messages"]) for b in acting] == [2, 4, 6]
    assert tool_names(acting[0]) == [OPEN_TOOL]
    assert tool_names(acting[1]) == tool_names(acting[2]) == list(HEARTBEAT_TOOLS)
    assert all(est_tokens(b) <= 2_000 for b in acting)
    assert [r.status for r in replies[1:]] == ["heartbeat_ok"] * (BEATS - 1)
    assert len(quiet) == BEATS - 1
    for body in quiet:
        # Back to two messages and one tool; of the acting beat only its report.
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert tool_names(body) == [OPEN_TOOL]
        user = body["messages"][1]["content"]
        assert user.count(report) == 1 and "(2025-03-17T16:58)" in user
        assert note not in json.dumps(body["messages"])  # no tool call of that beat
        assert est_tokens(body) <= 2_000


def test_a_beat_cannot_use_tools_outside_its_set(workspace: Path) -> None:
    chat = FakeChatModel(
        [
            tool_reply("schedule_create", {"kind": "every", "spec": "1m", "text": "x"}),
            tool_reply("memory_search", {"query": "revision"}),
            text_reply("HEARTBEAT_OK"),
        ]
    )
    host = FakeHostApi()
    tools = default_toolbox(ToolContext(workspace, host, clock))
    agent = Agent(workspace, workspace.parent / "state", chat, tools, clock)
    reply = agent.handle(Event("heartbeat"))
    assert reply.status == "heartbeat_ok"
    refused = chat.calls[1].messages[-1]["content"]
    assert refused.startswith("error: there is no tool 'schedule_create'")
    assert host.schedules == []
    # Any tool call means the beat is acting: the next call carries the set.
    assert chat.calls[1].tools == list(HEARTBEAT_TOOLS)
