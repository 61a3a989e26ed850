"""What a claw may put in a chat completion request — pure rules.

The body comes from a claw, which is assumed compromised, so the gateway
forwards only what it understands and has checked (``parse_chat_request``):

* the model name is bounded and from a small alphabet, checked before it is
  looked up, stored or logged (``model_name_problem``);
* only the fields in ``FORWARDED_FIELDS`` go upstream, each with its type
  (and range) checked; ``n`` and ``user`` are understood but never forwarded
  (``n`` above 1 is refused: one call must not buy many completions), and
  any other field is dropped;
* the completion is capped: ``max_tokens`` / ``max_completion_tokens`` are
  lowered to the claw's cap, and ``max_tokens`` is set to it when the claw
  sends neither, so no call can generate more than its reservation allows.

Refusals are ``Denial`` s (HTTP 400, ``param`` naming the field) whose
messages never quote more than a short, escaped piece of what was sent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.core.llm_policy import Denial

MODEL_NAME_MAX = 200
MODEL_NAME_CHARS = "A-Z a-z 0-9 . _ : / @ -"
_MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@-]+")

# Forwarded to the upstream when present (and valid); everything else is dropped.
FORWARDED_FIELDS = (
    "model",
    "messages",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "seed",
    "parallel_tool_calls",
)
# Understood, checked, and not forwarded: ``n`` (only 1, the default, is
# accepted) and ``user`` (free text the provider would keep: dropped).
CONSUMED_FIELDS = ("n", "user")

MAX_MESSAGES = 4096
MAX_TOOLS = 128  # OpenAI's own limit
MAX_STOP = 4
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
# A content part that is not text (an image, audio, a file) costs tokens that
# its few bytes of URL or id do not bound; reserve this many for each.
NON_TEXT_PART_TOKENS = 2000
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
_INT64 = 2**63 - 1


def preview(value: object, limit: int = 40) -> str:
    """A short, escaped (ASCII-only) form of untrusted text for logs and errors."""
    text = value if isinstance(value, str) else repr(value)
    shown = ascii(text[:limit])
    return shown + (f"… ({len(text)} characters)" if len(text) > limit else "")


def model_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a model name (None if it can). Never echoes more
    than a short escaped prefix of it."""
    if not isinstance(name, str):
        return "model must be a string"
    if not name:
        return "model must not be empty"
    if len(name) > MODEL_NAME_MAX:
        return f"model name is {len(name)} characters long; at most {MODEL_NAME_MAX} are allowed"
    if _MODEL_NAME.fullmatch(name) is None:
        bad = next(ch for ch in name if _MODEL_NAME.fullmatch(ch) is None)
        return (
            f"model name {preview(name)} has the character {ascii(bad)}; "
            f"only {MODEL_NAME_CHARS} are allowed"
        )
    return None


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: ``body`` is exactly what goes upstream."""

    body: dict[str, Any]
    model: str
    stream: bool
    wants_usage: bool  # the claw asked for the usage-only chunk of a stream
    completion_cap: int  # the most completion tokens the upstream may produce
    prompt_bound: int  # an upper bound on the prompt's tokens (for the reservation)
    prompt_guess: int  # a typical estimate (when the upstream reports no usage)
    dropped: tuple[str, ...]  # unknown fields left out, for the log


def _bad(param: str | None, message: str, code: str = "invalid_value") -> Denial:
    return Denial(400, code, "invalid_request_error", message, param=param)


def _one_of(value: object, choices: frozenset[str]) -> bool:
    # A string test first: ``[] in a_set`` raises TypeError (unhashable).
    return isinstance(value, str) and value in choices


def _is_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    # Only floats can be inf or nan (math.isfinite would overflow on a huge int).
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _count(value: object) -> int | None:
    """A positive whole number (1e9 sent as a float counts), else None."""
    if not _is_number(value):
        return None
    assert isinstance(value, int | float)
    if value < 1 or value != int(value):  # huge is fine: it gets capped
        return None
    return int(value)


def _in_range(low: float, high: float) -> Callable[[str, Any], Denial | None]:
    def check(name: str, value: Any) -> Denial | None:
        if _is_number(value) and low <= value <= high:
            return None
        return _bad(name, f"{name} must be a number from {low:g} to {high:g}")

    return check


def _boolean(name: str, value: Any) -> Denial | None:
    return None if isinstance(value, bool) else _bad(name, f"{name} must be true or false")


def _messages(name: str, value: Any) -> Denial | None:
    if not isinstance(value, list) or not value:
        return _bad(name, "messages must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        return _bad(name, f"at most {MAX_MESSAGES} messages are allowed")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not _one_of(message.get("role"), ROLES):
            return _bad(
                name,
                f"messages[{i}] must be an object whose role is one of {', '.join(sorted(ROLES))}",
            )
    return None


def _tools(name: str, value: Any) -> Denial | None:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        return _bad(name, f"tools must be a list of at most {MAX_TOOLS} tools")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            return _bad(
                name, f'tools[{i}] must be {{"type": "function", "function": {{"name": …}}}}'
            )
    return None


def _tool_choice(name: str, value: Any) -> Denial | None:
    if _one_of(value, TOOL_CHOICES) or (
        isinstance(value, dict) and isinstance(value.get("type"), str)
    ):
        return None
    return _bad(name, "tool_choice must be none, auto, required or an object naming a tool")


def _stream_options(name: str, value: Any) -> Denial | None:
    if isinstance(value, dict) and isinstance(value.get("include_usage", False), bool):
        return None
    return _bad(name, "stream_options must be an object; include_usage true or false")


def _stop(name: str, value: Any) -> Denial | None:
    if isinstance(value, str) or (
        isinstance(value, list)
        and len(value) <= MAX_STOP
        and all(isinstance(s, str) for s in value)
    ):
        return None
    return _bad(name, f"stop must be a string or a list of at most {MAX_STOP} strings")


def _token_limit(name: str, value: Any) -> Denial | None:
    return None if _count(value) is not None else _bad(name, f"{name} must be a whole number ≥ 1")


def _response_format(name: str, value: Any) -> Denial | None:
    if isinstance(value, dict) and _one_of(value.get("type"), RESPONSE_FORMATS):
        return None
    return _bad(name, f"response_format.type must be one of {', '.join(sorted(RESPONSE_FORMATS))}")


def _seed(name: str, value: Any) -> Denial | None:
    if isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value <= _INT64:
        return None
    return _bad(name, "seed must be an integer")


def _model(name: str, value: Any) -> Denial | None:
    problem = model_name_problem(value)
    return None if problem is None else _bad(name, problem, "invalid_model_name")


_CHECKS: Mapping[str, Callable[[str, Any], Denial | None]] = {
    "model": _model,
    "messages": _messages,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "temperature": _in_range(0, 2),
    "top_p": _in_range(0, 1),
    "stream": _boolean,
    "stream_options": _stream_options,
    "stop": _stop,
    "max_tokens": _token_limit,
    "max_completion_tokens": _token_limit,
    "response_format": _response_format,
    "seed": _seed,
    "parallel_tool_calls": _boolean,
}
assert set(_CHECKS) == set(FORWARDED_FIELDS)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _non_text_parts(messages: list[Any]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if not (isinstance(part, dict) and part.get("type") == "text")
    )


def parse_chat_request(body: object, completion_cap: int) -> ChatRequest | Denial:
    """Check ``body`` and build what goes upstream, or say what is wrong."""
    if not isinstance(body, dict) or "model" not in body or "messages" not in body:
        return _bad(None, "the body must be a JSON object with model and messages")
    # The model first: nothing else may see an unchecked name.
    denial = _model("model", body["model"])
    if denial is not None:
        return denial
    out: dict[str, Any] = {}
    for name in FORWARDED_FIELDS:
        value = body.get(name)
        if value is None:  # absent, or null meaning "the default"
            continue
        denial = _CHECKS[name](name, value)
        if denial is not None:
            return denial
        out[name] = value
    if "messages" not in out:
        return _bad("messages", "messages must be a non-empty list")
    n = body.get("n")
    if n is not None and n != 1:
        if _count(n) is None:
            return _bad("n", "n must be a whole number ≥ 1")
        return _bad(
            "n",
            "n > 1 is not supported: the gateway allows one completion per call; "
            "make several calls instead",
            "unsupported_value",
        )
    # Everything forwarded may count as prompt (a JSON schema does, too).
    prompt_size = _json_size(out)
    # Caps: lower what the claw asked for; set one if it asked for none.
    limits = {k: min(_count(out[k]) or 1, completion_cap) for k in _TOKEN_FIELDS if k in out}
    if not limits:
        limits = {"max_tokens": completion_cap}
    out.update(limits)
    stream = bool(out.get("stream"))
    wants_usage = False
    if stream:
        wants_usage = bool(out.get("stream_options", {}).get("include_usage"))
        # Always ask for usage, so streamed calls are counted too.
        out["stream_options"] = {"include_usage": True}
    else:
        out.pop("stream_options", None)
    extra = NON_TEXT_PART_TOKENS * _non_text_parts(out["messages"])
    dropped = tuple(sorted(k for k in body if k not in _CHECKS and k not in CONSUMED_FIELDS))
    return ChatRequest(
        body=out,
        model=out["model"],
        stream=stream,
        wants_usage=wants_usage,
        completion_cap=max(limits.values()),
        # A token is at least one byte of text in byte-level BPE tokenizers,
        # and the JSON punctuation covers the per-message overhead.
        prompt_bound=prompt_size + extra,
        prompt_guess=prompt_size // 4 + extra,
        dropped=dropped,
    )


def estimate_tokens(chars: int) -> int:
    """A typical token count for ``chars`` characters of model output."""
    return (chars + 3) // 4
