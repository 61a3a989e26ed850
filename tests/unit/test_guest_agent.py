"""The guest agent loop with a scripted model and a fake host (no network, no VM)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from appliance.guest.agent import HEARTBEAT_OK, Agent, Event, EventError, Limits
from appliance.guest.history import INTERRUPTED, History
from appliance.guest.hostapi import FakeHostApi
from appliance.guest.model import (
    AssistantMessage,
    FakeChatModel,
    ModelUnavailable,
    Scripted,
    text_reply,
    tool_reply,
)
from appliance.guest.tools import ToolContext, default_toolbox

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclaw-new"
NOW = datetime(2025, 3, 16, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def clock() -> datetime:
    return NOW


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    dest = tmp_path / "workspace"
    shutil.copytree(FIXTURE, dest, symlinks=True)
    return dest


def make_agent(
    workspace: Path, script: list[Scripted], limits: Limits | None = None
) -> tuple[Agent, FakeChatModel, FakeHostApi]:
    model = FakeChatModel(script)
    host = FakeHostApi()
    tools = default_toolbox(ToolContext(workspace, host, clock))
    state = workspace.parent / "state"
    return Agent(workspace, state, model, tools, clock, limits), model, host


def message(text: str) -> Event:
    return Event("message", text, channel="telegram", sender="alice")


def test_message_leads_to_a_tool_call_then_a_final_reply(workspace: Path) -> None:
    agent, model, _host = make_agent(
        workspace,
        [
            tool_reply("file_write", {"path": "notes/shopping.md", "content": "- milk\n"}),
            text_reply("Added milk to your shopping list."),
        ],
    )
    reply = agent.handle(message("put milk on the shopping list"))

    assert (reply.text, reply.status) == ("Added milk to your shopping list.", "reply")
    assert (reply.model_calls, reply.tool_calls) == (2, 1)
    assert (workspace / "notes" / "shopping.md").read_text() == "- milk\n"
    first, second = model.calls
    system = first.messages[0]["content"]
    assert "## SOUL.md" in system and "## MEMORY.md" in system  # the full workspace prompt
    assert first.messages[-1] == {
        "role": "user",
        "content": "[message via telegram from alice]\nput milk on the shopping list",
    }
    assert {"file_write", "shell", "memory_append", "send_message"} <= set(first.tools)
    assert second.messages[-1]["role"] == "tool"
    assert second.messages[-1]["content"] == "wrote 7 characters to notes/shopping.md"


def test_tool_errors_go_back_to_the_model_and_the_loop_goes_on(workspace: Path) -> None:
    agent, model, _ = make_agent(
        workspace,
        [
            tool_reply("file_read", {"path": "../../etc/passwd"}),
            tool_reply("no_such_tool", {}),
            tool_reply("file_read", {"path": "MEMORY.md", "bogus": 1}),
            text_reply("I cannot read that."),
        ],
    )
    reply = agent.handle(message("read /etc/passwd"))
    assert reply.text == "I cannot read that."
    results = [c.messages[-1]["content"] for c in model.calls[1:]]
    assert "not a plain path inside the workspace" in results[0]
    assert results[1].startswith("error: there is no tool 'no_such_tool'")
    assert results[2] == "error: file_read has no argument 'bogus'"


def test_max_steps_stops_a_model_that_never_finishes(workspace: Path) -> None:
    loop = [tool_reply("memory_search", {"query": "cat"}) for _ in range(3)]
    agent, model, _ = make_agent(workspace, list(loop), Limits(max_steps=3))
    reply = agent.handle(message("go"))
    assert reply.status == "max_steps" and len(model.calls) == 3
    history = History(workspace.parent / "state", "main", clock)
    assert history.messages[-1] == {"role": "assistant", "content": reply.text}


def test_heartbeat_with_empty_checklist_calls_no_model(workspace: Path) -> None:
    (workspace / "HEARTBEAT.md").write_text("# HEARTBEAT.md\n\n<!-- nothing yet -->\n")
    agent, model, _ = make_agent(workspace, [])
    reply = agent.handle(Event("heartbeat"))
    assert (reply.text, reply.status, reply.model_calls) == (HEARTBEAT_OK, "heartbeat_ok", 0)
    assert model.calls == []


def test_heartbeat_with_a_task_uses_light_context_and_cheaper_model(workspace: Path) -> None:
    agent, model, host = make_agent(
        workspace,
        [
            tool_reply("send_message", {"text": "Time for revision!"}),
            text_reply("**HEARTBEAT_OK**"),
        ],
        Limits(model="big", heartbeat_model="small"),
    )
    reply = agent.handle(Event("heartbeat"))
    assert reply.status == "heartbeat_ok" and reply.model_calls == 2
    assert host.sent == ["Time for revision!"]
    call = model.calls[0]
    assert call.model == "small"
    system = call.messages[0]["content"]
    assert "## HEARTBEAT.md" in system and "revision reminder" in system
    assert "## IDENTITY.md" in system
    assert "## SOUL.md" not in system and "## MEMORY.md" not in system
    # Heartbeats keep their own conversation: the owner's chat is untouched.
    state = workspace.parent / "state"
    assert History(state, "main", clock).messages == []
    assert len(History(state, "heartbeat", clock).messages) == 4


def test_history_persists_across_agent_instances(workspace: Path) -> None:
    agent, _, _ = make_agent(workspace, [text_reply("Nice to meet you, Alice.")])
    agent.handle(message("my cat is called Miso"))

    seen: list[list[dict[str, Any]]] = []

    def answer(messages: Sequence[dict[str, Any]]) -> AssistantMessage:
        seen.append(list(messages))
        return text_reply("Your cat is Miso.")

    again, _, _ = make_agent(workspace, [answer])
    reply = again.handle(message("what is my cat called?"))
    assert reply.text == "Your cat is Miso."
    roles = [(m["role"], m.get("content")) for m in seen[0][1:]]
    assert roles == [
        ("user", "[message via telegram from alice]\nmy cat is called Miso"),
        ("assistant", "Nice to meet you, Alice."),
        ("user", "[message via telegram from alice]\nwhat is my cat called?"),
    ]


def _fill_history(workspace: Path) -> None:
    """Three old turns, one with a tool call, about 3 000 characters in all."""
    history = History(workspace.parent / "state", "main", clock)
    for n in range(3):
        history.append({"role": "user", "content": f"old question {n}: " + "x" * 900})
        if n == 1:
            history.append(tool_reply("memory_search", {"query": "Miso"}).to_message())
            history.append({"role": "tool", "tool_call_id": "call_memory_search", "content": "r"})
        history.append({"role": "assistant", "content": f"old answer {n}"})


def test_trimming_writes_durable_facts_to_memory_before_dropping(workspace: Path) -> None:
    _fill_history(workspace)
    agent, model, _ = make_agent(
        workspace,
        [text_reply("- Alice's cat is called Miso."), text_reply("Hello again.")],
        Limits(context_chars=2_500, trim_to=0.5),
    )
    reply = agent.handle(message("hi"))
    assert reply.text == "Hello again." and reply.trimmed > 0

    extract, answer = model.calls
    assert extract.tools == [] and "durable fact" in extract.messages[0]["content"]
    assert "old question 0" in extract.messages[1]["content"]
    note = (workspace / "memory" / "2025-03-16.md").read_text()
    assert "- Alice's cat is called Miso." in note and "## 09:30" in note
    # The dropped turns are gone from the context, the new message is kept,
    # and no tool result is left without its call.
    sent = answer.messages[1:]
    assert all("old question 0" not in str(m.get("content")) for m in sent)
    assert sent[-1]["content"].endswith("\nhi")
    calls = {c["id"] for m in sent for c in m.get("tool_calls") or []}
    assert all(m["tool_call_id"] in calls for m in sent if m["role"] == "tool")
    assert sent[0]["role"] == "user"
    # The trim is recorded on disk: a new instance sees the same context.
    on_disk = History(workspace.parent / "state", "main", clock)
    assert on_disk.messages == [*sent, {"role": "assistant", "content": "Hello again."}]
    assert "old question 0" in on_disk.all[0]["content"]  # still on disk, out of context


def test_trimming_keeps_every_turn_when_memory_cannot_be_written(workspace: Path) -> None:
    _fill_history(workspace)
    shutil.rmtree(workspace / "memory")
    (workspace / "memory").write_text("a file where the notes folder belongs")
    agent, model, _ = make_agent(
        workspace,
        [text_reply("- a fact"), text_reply("Hello again.")],
        Limits(context_chars=2_500, trim_to=0.5),
    )
    reply = agent.handle(message("hi"))
    assert (reply.text, reply.trimmed, reply.model_calls) == ("Hello again.", 0, 2)
    # Nothing was dropped: the answer call still saw the oldest turn.
    assert "old question 0" in model.calls[1].messages[1]["content"]
    history = History(workspace.parent / "state", "main", clock)
    assert "old question 0" in history.messages[0]["content"]


def test_budget_429_becomes_a_reply_not_a_crash(workspace: Path) -> None:
    used_up = ModelUnavailable(
        "claw 'alice' used its daily budget of 200000 tokens; resets at 00:00 UTC",
        budget=True,
        until="00:00 UTC",
    )
    agent, _, _ = make_agent(workspace, [used_up])
    reply = agent.handle(message("hello"))
    assert reply.status == "budget"
    assert reply.text.startswith("Sorry — my model budget is used up until 00:00 UTC")
    # The owner's message is kept, so the claw sees it once the budget resets.
    history = History(workspace.parent / "state", "main", clock)
    assert history.messages[-1]["content"].endswith("hello")


def test_a_crash_between_tool_call_and_result_is_repaired_on_load(workspace: Path) -> None:
    state = workspace.parent / "state"
    history = History(state, "main", clock)
    history.append({"role": "user", "content": "run it"})
    history.append(tool_reply("shell", {"command": "sleep 1000"}).to_message())
    with history.path.open("a") as f:
        f.write('{"t": "torn')  # the agent was killed mid-line
    reloaded = History(state, "main", clock)
    assert reloaded.messages[-1] == {
        "role": "tool",
        "tool_call_id": "call_shell",
        "content": INTERRUPTED,
    }
    assert len(History(state, "main", clock).messages) == 3  # repaired once, on disk


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ([], "JSON object"),
        ({"type": "email"}, "event type"),
        ({"type": "message", "text": "  "}, "needs text"),
        ({"type": "message", "text": 5}, "must be a string"),
    ],
)
def test_malformed_events_are_refused(raw: Any, why: str) -> None:
    with pytest.raises(EventError, match=why):
        Event.from_json(raw)


def test_event_from_json_round_trip() -> None:
    event = Event.from_json(json.loads('{"type": "heartbeat", "model": "small"}'))
    assert event == Event("heartbeat", model="small")
