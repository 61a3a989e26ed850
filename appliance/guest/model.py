"""The agent's view of a chat model, a scripted fake, and the ``openai`` adapter.

The loop depends only on the small ``ChatModel`` protocol, so it is tested
without a server and runs in an image where ``openai`` is not installed yet:
``openai`` is imported lazily, inside ``OpenAIChatModel`` only. The adapter
always streams (the host gateway streams event by event) and assembles the
streamed tool-call fragments into whole calls.

Failures the owner should hear about in plain words become ``ModelUnavailable``
(budget used up, rate limited, gateway unreachable); anything else the model
side gets wrong is a ``ModelError``. Neither ever escapes the agent loop.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

GATEWAY_URL = "http://127.0.0.1:7702/v1"
DUMMY_KEY = "clawden-no-key"  # the gateway injects the real key; the guest holds none

Message = dict[str, Any]
# Where the streamed text of a model's answer goes, piece by piece, as it
# arrives (the warm agent relays it to the host); the whole answer is
# still returned at the end.
TextSink = Callable[[str], None]


class ModelError(Exception):
    """The model call failed in a way the loop reports but cannot explain better."""


class ModelUnavailable(ModelError):
    """No model answers for now: ``budget`` when a budget is used up, ``until`` when known."""

    def __init__(self, message: str, *, budget: bool = False, until: str | None = None) -> None:
        super().__init__(message)
        self.budget = budget
        self.until = until


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text exactly as the model wrote it; parsed by the toolbox


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class AssistantMessage:
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None

    def to_message(self) -> Message:
        """The OpenAI chat message, as stored in history and sent back to the model."""
        out: Message = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.tool_calls
            ]
        return out


class ChatModel(Protocol):
    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[Message],
        model: str | None,
        on_text: TextSink | None = None,
    ) -> AssistantMessage: ...


def text_reply(content: str) -> AssistantMessage:
    return AssistantMessage(content)


def tool_reply(
    name: str, arguments: dict[str, Any], call_id: str | None = None
) -> AssistantMessage:
    call = ToolCall(call_id or f"call_{name}", name, json.dumps(arguments))
    return AssistantMessage(None, (call,))


Scripted = AssistantMessage | Exception | Callable[[Sequence[Message]], AssistantMessage]


@dataclass
class FakeCall:
    messages: list[Message]
    tools: list[str]
    model: str | None


@dataclass
class FakeChatModel:
    """Answers from a script, in order; records every call for the test to inspect."""

    script: list[Scripted]
    calls: list[FakeCall] = field(default_factory=list)

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[Message],
        model: str | None,
        on_text: TextSink | None = None,
    ) -> AssistantMessage:
        names = [str(t["function"]["name"]) for t in tools]
        # A deep copy: the loop keeps appending to its list after the call.
        self.calls.append(FakeCall(json.loads(json.dumps(list(messages))), names, model))
        if len(self.calls) > len(self.script):
            raise ModelError(f"fake model: script exhausted after {len(self.script)} replies")
        step = self.script[len(self.calls) - 1]
        if isinstance(step, Exception):
            raise step
        answer = step if isinstance(step, AssistantMessage) else step(messages)
        if on_text is not None and answer.content:
            # Word by word, as a streaming model would send it.
            for piece in re.findall(r"\s*\S+", answer.content):
                on_text(piece)
        return answer


def script_from_json(data: Any) -> FakeChatModel:
    """A fake from JSON (``serve.py``'s test hook): [{"content"}, {"tool": name, "arguments"},
    {"unavailable": message, "budget": true}]."""
    if not isinstance(data, list):
        raise ValueError("a fake model script is a JSON list")
    steps: list[Scripted] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            raise ValueError(f"fake model step {i} is not an object")
        if "tool" in raw:
            steps.append(
                tool_reply(str(raw["tool"]), dict(raw.get("arguments") or {}), f"call_{i}")
            )
        elif "unavailable" in raw:
            msg = str(raw["unavailable"])
            steps.append(ModelUnavailable(msg, budget=bool(raw.get("budget")), until=_until(msg)))
        else:
            steps.append(text_reply(str(raw.get("content", ""))))
    return FakeChatModel(steps)


def _until(message: str) -> str | None:
    # The gateway's budget message ends "...; resets at 00:00 UTC" (docs/llm.md).
    found = re.search(r"resets at ([^;.]+(?:\.\d+)?)", message)
    return found.group(1).strip() if found else None


class OpenAIChatModel:
    """The real client against the host gateway, streaming; ``close()`` when done."""

    def __init__(
        self,
        base_url: str = GATEWAY_URL,
        api_key: str = DUMMY_KEY,
        *,
        default_model: str | None = None,
        timeout_s: float = 180.0,
        max_retries: int = 2,
    ) -> None:
        import openai  # lazily: the loop and its tests must not need the package

        self._openai = openai
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )
        self.configured_model = default_model
        self.default_model = default_model

    def close(self) -> None:
        self._client.close()

    def for_delivery(self) -> OpenAIChatModel:
        """This client (its connections kept) for one more delivery, with the
        model chosen afresh: the warm agent outlives ``llm.toml`` changes, and
        a model the gateway listed for the last delivery may be gone."""
        fresh = copy.copy(self)
        fresh.default_model = self.configured_model
        return fresh

    def _model_name(self, model: str | None) -> str:
        if model:
            return model
        if not self.default_model:
            # No name configured: the gateway lists only this claw's allowed models.
            listed = [m.id for m in self._client.models.list().data]
            if not listed:
                raise ModelUnavailable("the model gateway offers no model to this claw")
            self.default_model = listed[0]
        return self.default_model

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[Message],
        model: str | None,
        on_text: TextSink | None = None,
    ) -> AssistantMessage:
        oa = self._openai
        try:
            name = self._model_name(model)
            extra: dict[str, Any] = {"tools": list(tools)} if tools else {}
            # Typed as Any: our messages are plain dicts, not the SDK's TypedDicts.
            create: Any = self._client.chat.completions.create
            stream = create(
                model=name,
                messages=list(messages),
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
            with stream:
                return _assemble(stream, on_text)
        except oa.RateLimitError as exc:
            message = _error_message(exc)
            budget = _error_code(exc) == "insufficient_quota"
            raise ModelUnavailable(message, budget=budget, until=_until(message)) from exc
        except oa.APIConnectionError as exc:
            raise ModelUnavailable(f"the model gateway cannot be reached ({exc})") from exc
        except oa.APIStatusError as exc:
            raise ModelError(
                f"the model gateway answered {exc.status_code}: {_error_message(exc)}"
            ) from exc
        except oa.OpenAIError as exc:
            raise ModelError(f"the model call failed: {exc}") from exc


def _error_body(exc: Any) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return dict(body) if isinstance(body, dict) else {}


def _error_message(exc: Any) -> str:
    return str(_error_body(exc).get("message") or getattr(exc, "message", None) or exc)


def _error_code(exc: Any) -> str | None:
    code = _error_body(exc).get("code") or getattr(exc, "code", None)
    return str(code) if code else None


def _assemble(chunks: Any, on_text: TextSink | None = None) -> AssistantMessage:
    """One message from streamed chunks: text pieces joined (and passed to
    ``on_text`` as they come), tool calls by index."""
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    usage: Usage | None = None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                text.append(delta.content)
                if on_text is not None:
                    on_text(delta.content)
            for part in delta.tool_calls or ():
                slot = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                if part.id:
                    slot["id"] = part.id
                if part.function is not None:
                    slot["name"] += part.function.name or ""
                    slot["arguments"] += part.function.arguments or ""
    tool_calls = tuple(
        ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
        for i, c in sorted(calls.items())
    )
    return AssistantMessage("".join(text) or None, tool_calls, usage)
