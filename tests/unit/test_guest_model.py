"""The real ``openai`` client path: OpenAIChatModel against the scripted model server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.guest.agent import Agent, Event
from appliance.guest.hostapi import FakeHostApi
from appliance.guest.model import ModelUnavailable, OpenAIChatModel
from appliance.guest.tools import ToolContext, default_toolbox
from appliance.llm.scripted import ScriptedModelServer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openclaw-new"
KEY = "clawden-no-key"
SCENARIO = {
    "models": ["tiny"],
    "steps": [
        {
            "name": "write the note",
            "match": {
                "model": "tiny",
                "stream": True,
                "last_user_contains": "remember the plumber",
                "tools_include": ["file_write", "memory_append"],
            },
            "reply": {
                "tool_calls": [
                    {
                        "name": "file_write",
                        "arguments": {"path": "notes/plumber.md", "content": "Tue 10:00 Zoë"},
                    }
                ],
                "usage": {"prompt_tokens": 900, "completion_tokens": 20},
            },
        },
        {
            "name": "confirm",
            "match": {"last_role": "tool", "last_message_contains": "notes/plumber.md"},
            "reply": {"content": "Noted: the plumber comes on Tuesday at 10:00."},
        },
        {
            "name": "budget used up",
            "error": {
                "status": 429,
                "code": "insufficient_quota",
                "type": "insufficient_quota",
                "message": "claw 'alice' used its daily budget of 200000 tokens; "
                "resets at 00:00 UTC",
            },
        },
    ],
}


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(SCENARIO, api_key=KEY) as srv:
        yield srv


def test_openai_adapter_streams_tool_calls_and_text(
    server: ScriptedModelServer, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    shutil.copytree(FIXTURE, workspace)
    model = OpenAIChatModel(server.base_url, KEY, max_retries=0)
    try:

        def clock() -> datetime:
            return datetime(2025, 3, 16, 9, 30, tzinfo=UTC)

        tools = default_toolbox(ToolContext(workspace, FakeHostApi(), clock))
        agent = Agent(workspace, tmp_path / "state", model, tools, clock)
        reply = agent.handle(Event("message", "please remember the plumber", channel="web"))
        assert (reply.status, reply.text) == (
            "reply",
            "Noted: the plumber comes on Tuesday at 10:00.",
        )
        assert (reply.model_calls, reply.tool_calls) == (2, 1)
        assert reply.prompt_tokens >= 900 and reply.completion_tokens >= 20  # usage streamed
        # The arguments arrived in 8-byte fragments and were put back together.
        assert (workspace / "notes" / "plumber.md").read_text() == "Tue 10:00 Zoë"
        chats = [r for r in server.requests if r["path"] == "/v1/chat/completions"]
        assert [r["body"]["stream"] for r in chats] == [True, True]
        assert chats[0]["body"]["model"] == "tiny"  # picked from GET /v1/models
        assert all(r["authorization_matched"] for r in server.requests)

        with pytest.raises(ModelUnavailable) as caught:
            model.complete([{"role": "user", "content": "hi"}], [], None)
        assert caught.value.budget and caught.value.until == "00:00 UTC"
        assert "daily budget of 200000 tokens" in str(caught.value)
    finally:
        model.close()


def test_each_delivery_of_a_long_lived_client_picks_its_model_afresh() -> None:
    # The warm agent keeps one client; the gateway's models can change under
    # it (llm.toml edited, an allowlist changed). A model listed for one
    # delivery must not be asked for in the next.
    first = {"models": ["old"], "steps": [{"name": "a", "reply": {"content": "from old"}}]}
    second = {"models": ["new"], "steps": [{"name": "b", "reply": {"content": "from new"}}]}
    with ScriptedModelServer(first, api_key=KEY) as old:
        warm = OpenAIChatModel(old.base_url, KEY, max_retries=0)
        try:
            one = warm.for_delivery()
            assert one.complete([{"role": "user", "content": "hi"}], [], None).content == (
                "from old"
            )
            assert one.default_model == "old" and warm.default_model is None
            with ScriptedModelServer(second, api_key=KEY) as new:
                # The same client (its connection pool), now pointed at a
                # gateway that lists another model.
                warm._client = warm._client.with_options(base_url=new.base_url)
                two = warm.for_delivery()
                answer = two.complete([{"role": "user", "content": "hi"}], [], None)
                assert answer.content == "from new"
                [chat] = [r for r in new.requests if r["path"] == "/v1/chat/completions"]
                assert chat["body"]["model"] == "new"
        finally:
            warm.close()
