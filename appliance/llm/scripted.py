"""A scripted OpenAI-compatible model server, for tests and demos.

It speaks the real protocol (chat completions with tools and SSE streaming,
models) so the ``openai`` client and the LLM gateway talk to it unchanged, but
its answers follow a *scenario*: ordered steps, each optionally matching the
request, giving a reply (text, tool calls, usage) or an injected error. It
logs every request (the Authorization value never, only whether it matched)
so a test can prove what the gateway forwarded, e.g. the real key.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from appliance.core.errors import InvalidInput

_MATCH_KEYS = {"model", "stream", "last_user_contains", "last_message_contains", "last_role"} | {
    "tools_include"
}


class ScenarioError(InvalidInput):
    """The scenario file cannot be used."""


@dataclass(frozen=True)
class Step:
    name: str
    match: Mapping[str, Any] = field(default_factory=dict)
    content: str | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()  # (function name, JSON arguments)
    usage: Mapping[str, int] | None = None
    error: Mapping[str, Any] | None = None  # {"status": 500, "message": ..., ...}
    repeat: bool = False  # answer every following request too (demos, benchmarks)
    delay_s: float = 0.0  # wait this long before answering (a slow model, overlapping calls)
    # Streamed: wait this long before each piece of text after the first (a
    # model that writes as it thinks, so a client sees the pieces apart).
    piece_delay_s: float = 0.0


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...]
    models: tuple[str, ...] = ("scripted-model",)


def load_scenario(source: Path | str | Mapping[str, Any] | list[Any]) -> Scenario:
    """Read a scenario from a JSON/YAML file path or an already-parsed value."""
    data: Any = source
    if isinstance(source, Path | str):
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))  # JSON is YAML
        except (OSError, yaml.YAMLError) as exc:
            raise ScenarioError(f"cannot read scenario {source}: {exc}", "fix the file") from None
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ScenarioError("a scenario needs a list of steps", "see docs/llm.md")
    steps = tuple(_step(i, raw) for i, raw in enumerate(data["steps"], 1))
    models = data.get("models") or sorted(
        {str(s.match["model"]) for s in steps if "model" in s.match}
    )
    return Scenario(steps, tuple(models) or ("scripted-model",))


def _step(number: int, raw: Any) -> Step:
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario step {number} is not a mapping", "see docs/llm.md")
    match = dict(raw.get("match") or {})
    unknown = set(match) - _MATCH_KEYS
    if unknown:
        raise ScenarioError(
            f"scenario step {number}: unknown matchers {sorted(unknown)}",
            f"use {', '.join(sorted(_MATCH_KEYS))}",
        )
    reply = raw.get("reply") or {}
    calls = tuple(
        (
            str(c["name"]),
            c["arguments"]
            if isinstance(c.get("arguments"), str)
            else json.dumps(c.get("arguments") or {}),
        )
        for c in reply.get("tool_calls") or ()
    )
    if raw.get("error") is None and reply.get("content") is None and not calls:
        raise ScenarioError(
            f"scenario step {number} has no reply content, tool_calls or error",
            "give the step a reply or an error",
        )
    delay, piece_delay = raw.get("delay_s", 0), raw.get("piece_delay_s", 0)
    for key, value in (("delay_s", delay), ("piece_delay_s", piece_delay)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 60:
            raise ScenarioError(
                f"scenario step {number}: {key} must be a number of seconds from 0 to 60",
                "see docs/llm.md",
            )
    return Step(
        name=str(raw.get("name") or f"step {number}"),
        match=match,
        content=reply.get("content"),
        tool_calls=calls,
        usage=reply.get("usage"),
        error=raw.get("error"),
        repeat=bool(raw.get("repeat", False)),
        delay_s=float(delay),
        piece_delay_s=float(piece_delay),
    )


def _error(
    status: int, message: str, code: str | None = None, type_: str = "invalid_request_error"
) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def mismatch(step: Step, request: Mapping[str, Any]) -> str | None:
    """Why ``request`` does not fit ``step``'s matcher (None if it does)."""
    messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
    users = [m for m in messages if m.get("role") == "user"]
    tools = {
        str((t.get("function") or {}).get("name"))
        for t in request.get("tools") or []
        if isinstance(t, dict)
    }
    for key, want in step.match.items():
        if key == "model" and request.get("model") != want:
            return f"model {want!r}, got {request.get('model')!r}"
        if key == "stream" and bool(request.get("stream")) != bool(want):
            return f"stream={bool(want)}, got stream={bool(request.get('stream'))}"
        if key == "last_user_contains" and (not users or str(want) not in _text(users[-1])):
            return f"the last user message to contain {want!r}"
        if key == "last_message_contains" and (
            not messages or str(want) not in _text(messages[-1])
        ):
            return f"the last message to contain {want!r}"
        if key == "last_role" and (not messages or messages[-1].get("role") != want):
            got = messages[-1].get("role") if messages else None
            return f"the last message's role to be {want!r}, got {got!r}"
        if key == "tools_include":
            wanted = [want] if isinstance(want, str) else list(want)
            if missing := sorted(str(w) for w in wanted if str(w) not in tools):
                return f"tools offered to include {missing}, got {sorted(tools)}"
    return None


def _usage(step: Step, request: Mapping[str, Any]) -> dict[str, int]:
    # Without numbers in the scenario, a deterministic rough count (4 chars/token).
    given = step.usage or {}
    prompt = int(given.get("prompt_tokens", len(json.dumps(request.get("messages"))) // 4))
    body = (step.content or "") + "".join(a for _, a in step.tool_calls)
    completion = int(given.get("completion_tokens", len(body) // 4 + 1))
    return dict(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


class _Script:
    """The scenario's cursor, shared by the server's handler threads."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.position = 0
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def answer(self, request: Mapping[str, Any]) -> tuple[int, Any]:
        """(status, JSON body) or (200, iterator of SSE bytes) for one call."""
        with self.lock:
            steps = self.scenario.steps
            if self.position >= len(steps):
                return _error(
                    400,
                    f"scripted model: scenario exhausted (all {len(steps)} steps used)",
                    "scenario_exhausted",
                )
            number, step = self.position + 1, steps[self.position]
            why = mismatch(step, request)
            if why is not None:
                return _error(
                    400,
                    f"scripted model: step {number} ({step.name!r}) expected {why}",
                    "scenario_mismatch",
                )
            if not step.repeat:
                self.position += 1
            call_id = next(self.ids)
        if step.delay_s:
            time.sleep(step.delay_s)  # outside the lock: delayed calls overlap
        if step.error is not None:
            e = step.error
            text, code = str(e.get("message", "injected error")), e.get("code")
            return _error(int(e.get("status", 500)), text, code, e.get("type", "server_error"))
        model = str(request.get("model"))
        usage = _usage(step, request)
        calls = [
            {
                "id": f"call_{call_id}_{i}",
                "type": "function",
                "function": {"name": n, "arguments": a},
            }
            for i, (n, a) in enumerate(step.tool_calls)
        ]
        finish = "tool_calls" if calls else "stop"
        head = {"id": f"chatcmpl-scripted-{call_id}", "created": int(time.time()), "model": model}
        if request.get("stream"):
            want_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            usage_chunk = usage if want_usage else None
            return 200, _sse(head, step.content, calls, finish, usage_chunk, step.piece_delay_s)
        message: dict[str, Any] = {"role": "assistant", "content": step.content}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return 200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage}


def _sse(
    head: dict[str, Any],
    content: str | None,
    calls: list[dict[str, Any]],
    finish: str,
    usage: dict[str, int] | None,
    piece_delay_s: float = 0.0,
) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        body = {**head, "object": "chat.completion.chunk", "choices": [choice]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for i, piece in enumerate(re.findall(r"\s*\S+", content or "")):  # word by word
        if i and piece_delay_s:
            time.sleep(piece_delay_s)  # the handler's thread: only this response waits
        yield chunk({"content": piece})
    for i, call in enumerate(calls):
        fn = call["function"]
        opening = {"index": i, "id": call["id"], "type": "function"}
        yield chunk(
            {"tool_calls": [{**opening, "function": {"name": fn["name"], "arguments": ""}}]}
        )
        args = fn["arguments"]
        for start in range(0, len(args), 8):  # arguments arrive in fragments
            piece = args[start : start + 8]
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield chunk({}, finish)
    if usage is not None:
        body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


class ScriptedModelServer:
    """``with ScriptedModelServer(scenario, api_key="sk-real") as srv: srv.base_url``."""

    def __init__(
        self,
        scenario: Scenario | Path | str | Mapping[str, Any] | list[Any],
        *,
        api_key: str | None = None,
        port: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self.script = _Script(
            scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        )
        self.api_key = api_key
        self.log_path = log_path
        self.requests: list[dict[str, Any]] = []  # what the log file holds, for tests
        # Per answered request: path, arrival (epoch s) and handling time (s).
        self.timings: list[dict[str, Any]] = []
        self._log_lock = threading.Lock()
        self._httpd = _Httpd(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def steps_used(self) -> int:
        return self.script.position

    def start(self) -> ScriptedModelServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="scripted-model"
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.hang_up_all()
        self._httpd.server_close()  # joins the handler threads

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def timed(self, path: str, received_at: float, handled_s: float) -> None:
        with self._log_lock:
            self.timings.append({"path": path, "received_at": received_at, "handled_s": handled_s})

    def log(self, record: dict[str, Any]) -> None:
        with self._log_lock:
            self.requests.append(record)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    def authorized(self, header: str | None) -> bool:
        if self.api_key is None:
            return True
        expected = f"Bearer {self.api_key}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)


class _Httpd(ThreadingHTTPServer):
    # Non-daemon handler threads, joined by server_close(); open keep-alive
    # connections are hung up first so that join cannot wait on a client.
    daemon_threads = False
    owner: ScriptedModelServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def hang_up_all(self) -> None:
        with self.sockets_lock:
            for sock in self.open_sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Httpd
    timeout = 60  # an idle keep-alive client cannot pin a thread forever
    # TCP_NODELAY, as real model servers set it: headers and body go out in
    # two writes, and with Nagle the body waits for the client's delayed ACK
    # (~40 ms per call on Linux keep-alive connections).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802
        self._handle(None)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._handle(body)

    def _handle(self, body: Any) -> None:
        received_at, started = time.time(), time.perf_counter()
        owner = self.server.owner
        ok = owner.authorized(self.headers.get("Authorization"))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        owner.log(
            {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "authorization_matched": ok,
                "body": body,
            }
        )
        try:
            self._answer(owner, ok, body)
        finally:
            # How long this "model" took, from the request read to the answer
            # sent: benchmarks subtract it to report what is not model time.
            owner.timed(self.path, received_at, time.perf_counter() - started)

    def _answer(self, owner: ScriptedModelServer, ok: bool, body: Any) -> None:
        path = self.path.split("?", 1)[0]
        result: tuple[int, Any]
        if not ok:
            result = _error(401, "scripted model: missing or wrong API key", "invalid_api_key")
        elif (self.command, path) == ("GET", "/v1/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "scripted"}
                for m in owner.script.scenario.models
            ]
            result = 200, {"object": "list", "data": data}
        elif (self.command, path) == ("POST", "/v1/chat/completions") and isinstance(body, dict):
            result = owner.script.answer(body)
        elif (self.command, path) == ("POST", "/v1/chat/completions"):
            result = _error(400, "scripted model: the body is not a JSON object")
        else:
            result = _error(404, f"scripted model: no route {self.command} {path}")
        status, payload = result
        if isinstance(payload, Iterator):
            self._send_stream(payload)
        else:
            data_bytes = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data_bytes)))
            self.end_headers()
            self.wfile.write(data_bytes)

    def _send_stream(self, events: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # every request is in the JSON-lines log already
