"""The scripted model server answers the real ``openai`` client over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from appliance.llm.scripted import ScenarioError, ScriptedModelServer, load_scenario

KEY = "sk-scripted-test-key"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
SCENARIO = """
models: [tiny]
steps:
  - name: ask for weather
    match: {model: tiny, last_user_contains: weather, tools_include: [get_weather]}
    reply:
      tool_calls:
        - name: get_weather
          arguments: {city: "Zürich"}
      usage: {prompt_tokens: 30, completion_tokens: 7}
  - name: answer with the tool result
    match: {last_role: tool, last_message_contains: sunny}
    reply: {content: "It is sunny in Zürich.", usage: {prompt_tokens: 50, completion_tokens: 6}}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ScriptedModelServer]:
    scenario = tmp_path / "weather.yaml"
    scenario.write_text(SCENARIO)
    with ScriptedModelServer(scenario, api_key=KEY, log_path=tmp_path / "log.jsonl") as srv:
        yield srv


@pytest.fixture
def client(server: ScriptedModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as c:
        yield c


def _tool_result(call_id: str) -> list[Any]:
    return [
        {"role": "user", "content": "what's the weather in Zürich?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 °C"},
    ]


def test_tool_call_then_answer_without_streaming(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "what's the weather?"}], tools=TOOLS
    )
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Zürich"}
    assert first.usage is not None and first.usage.total_tokens == 37
    second = client.chat.completions.create(
        model="tiny", messages=_tool_result(call.id), tools=TOOLS
    )
    assert second.choices[0].message.content == "It is sunny in Zürich."


def test_tool_call_then_answer_streaming(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "weather please"}],
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    assert len(deltas) > 2  # the arguments arrive in fragments
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(arguments) == {"city": "Zürich"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    text = client.chat.completions.create(
        model="tiny", messages=_tool_result(deltas[0].id or ""), stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in text if c.choices]
    assert "".join(pieces) == "It is sunny in Zürich."
    assert len([p for p in pieces if p]) == 5  # word by word


def test_models_come_from_the_scenario(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_request_off_script_is_a_400_naming_the_step(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert "step 1 ('ask for weather') expected" in info.value.message


def test_an_exhausted_scenario_is_a_400(tmp_path: Path) -> None:
    steps = [{"reply": {"content": "once"}}]
    with (
        ScriptedModelServer(steps) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="any", max_retries=0) as client,
    ):
        ask: Any = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        assert client.chat.completions.create(**ask).choices[0].message.content == "once"
        with pytest.raises(openai.BadRequestError, match="scenario exhausted"):
            client.chat.completions.create(**ask)


def test_injected_errors_reach_the_client(tmp_path: Path) -> None:
    steps = [{"error": {"status": 503, "message": "overloaded", "code": "busy"}}]
    with (
        ScriptedModelServer(steps) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="any", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 503 and info.value.code == "busy"


def test_wrong_key_is_refused_and_the_log_never_holds_a_key(
    server: ScriptedModelServer, tmp_path: Path
) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as good:
        good.models.list()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["authorization_matched"] for r in records] == [False, True]
    assert all("authorization" not in r["headers"] for r in records)
    assert KEY not in "".join(lines) and "sk-wrong" not in "".join(lines)
    assert records == server.requests


def test_the_log_holds_the_request_body(server: ScriptedModelServer) -> None:
    with httpx.Client() as http:
        http.post(
            server.base_url + "/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "weather"}]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    [record] = server.requests
    assert record["method"] == "POST" and record["path"] == "/v1/chat/completions"
    assert record["body"]["messages"][0]["content"] == "weather"


def test_bad_scenarios_are_refused_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown matchers"):
        load_scenario([{"match": {"colour": "red"}, "reply": {"content": "x"}}])
    with pytest.raises(ScenarioError, match="no reply"):
        load_scenario({"steps": [{"name": "empty"}]})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ScenarioError) as info:
        load_scenario(broken)
    assert info.value.fix


def test_a_step_can_be_slow(tmp_path: Path) -> None:
    scenario = load_scenario([{"delay_s": 0.2, "reply": {"content": "late"}}])
    assert scenario.steps[0].delay_s == 0.2
    for bad in (-1, 61, "soon", True):
        with pytest.raises(ScenarioError, match="delay_s"):
            load_scenario([{"delay_s": bad, "reply": {"content": "x"}}])
    with (
        ScriptedModelServer(scenario) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0) as client,
    ):
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.choices[0].message.content == "late"
    assert srv.timings[0]["handled_s"] >= 0.2
