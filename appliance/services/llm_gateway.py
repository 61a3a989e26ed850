"""The LLM gateway a claw reaches on its own ``127.0.0.1:7702``.

It is an OpenAI-compatible endpoint (``POST /v1/chat/completions`` with tools
and streaming, ``GET /v1/models``) in front of whatever OpenAI-compatible
upstream the host is configured with. The claw is assumed compromised, so
for each call it:

1. takes the claw's identity from the SSH channel (never from the request);
2. checks the model name (bounded, small alphabet) before anything looks it
   up, stores or logs it, then rebuilds the body from an allowlist of checked
   fields with the completion capped (``core/llm_request.py``);
3. applies the claw's policy: model allowlist (closed by default), rate
   limit, and — in one store transaction — its budgets and how many calls it
   has in flight, *reserving* the call's worst case (``store/usage.py``);
   refusals are OpenAI-shaped errors, so the claw's ``openai`` client raises
   its usual exceptions with our message;
4. forwards the rebuilt body with the *real* key (whatever Authorization the
   guest sent is dropped; the guest never holds a key), streaming SSE through
   event by event and asking the upstream for usage even on streams; a call
   lasting longer than ``max_call_s`` is cut off;
5. replaces the reservation with the tokens and cost actually used (an
   estimate, noted as such, when the upstream reports none).

Upstream failures become 502s that name neither the key nor the upstream's
URL credentials.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx

from appliance.channel.forwarding import ClawIdentity
from appliance.core.errors import ClawdenError
from appliance.core.llm_policy import (
    Denial,
    Ledger,
    RateLimiter,
    check_admission,
    check_model,
    cost_usd,
    exact_models,
    has_patterns,
    model_allowed,
    worst_case,
)
from appliance.core.llm_request import (
    ChatRequest,
    estimate_tokens,
    model_name_problem,
    parse_chat_request,
    preview,
)
from appliance.core.quotas import Pacer
from appliance.llm.config import ConfigLoader, LlmConfig, Upstream, safe_url
from appliance.services.http import HttpLimits, HttpRequest, HttpResponse, HttpService
from appliance.store import Store
from appliance.store.usage import UsageRepository

log = logging.getLogger(__name__)

LLM_GATEWAY_PORT = 7702
# A chat request carries the whole conversation (the agent keeps ~100 k
# characters of history plus its prompt and tools): 4 MiB leaves room for long
# prompts; the host API's 1 MiB default is for small JSON.
MAX_REQUEST_BODY = 4 * 1024 * 1024
# Upstream statuses whose body helps the claw fix its own request; anything
# else (401/403: the host's key; 5xx: the provider) is the host's problem.
_PASS_THROUGH = {400, 404, 413, 422, 429}
# The longest a call may last, streamed or not; a stream still running then
# is cut off with an error event.
MAX_CALL_S = 600.0
# On top of max_call_s and the upstream's read timeout before a reservation
# expires: a claw that stops reading holds a write for up to the HTTP layer's
# socket timeout (300 s) before the deadline is noticed.
RESERVATION_GRACE_S = 360.0
ESTIMATED_NOTE = "upstream sent no usage; tokens estimated"


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    *,
    param: str | None = None,
) -> HttpResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return HttpResponse(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def _denied(denial: Denial) -> HttpResponse:
    return error_response(
        denial.status,
        denial.message,
        denial.type,
        denial.code,
        dict(denial.headers),
        param=denial.param,
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class _Settle(Protocol):
    def __call__(
        self,
        status: str,
        usage: Any = None,
        note: str | None = None,
        *,
        completion_chars: int = 0,
        answered: bool = False,
    ) -> None: ...


class _TooLong(Exception):
    """The call ran past its deadline."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class LlmGateway:
    def __init__(
        self,
        usage: UsageRepository,
        config: Callable[[], LlmConfig],
        *,
        clock: Callable[[], datetime] = _utc_now,
        transport: httpx.BaseTransport | None = None,
        max_call_s: float = MAX_CALL_S,
        pid_alive: Callable[[int], bool] = _pid_alive,
    ) -> None:
        self.usage = usage
        self._config = config
        self._clock = clock
        self._max_call_s = max_call_s
        self._limiter = RateLimiter()
        self._pid = os.getpid()
        # Calls a dead controller left in flight hold budget and concurrency
        # until they expire; its process being gone is proof enough to let go.
        dropped = usage.release_orphans(lambda pid: pid == self._pid or pid_alive(pid))
        if dropped:
            log.info("LLM gateway: released %d reservations of a process that is gone", dropped)
        # One pooled client for every claw: reusing upstream connections is
        # most of what keeps the gateway's overhead small. trust_env=False so
        # the gateway talks to exactly the configured base_url (no proxy or
        # .netrc from the controller's environment).
        self._http = httpx.Client(
            transport=transport, trust_env=False, follow_redirects=False, timeout=120.0
        )

    def close(self) -> None:
        self._http.close()

    def service(self, pacer: Pacer | None = None) -> HttpService:
        return HttpService(
            "llm",
            LLM_GATEWAY_PORT,
            {
                ("POST", "/v1/chat/completions"): self.chat_completions,
                ("GET", "/v1/models"): self.models,
            },
            limits=HttpLimits(max_body=MAX_REQUEST_BODY),
            pacer=pacer,
        )

    # ---- routes ----------------------------------------------------------------
    def chat_completions(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            body = None
        if not (isinstance(body, dict) and "model" in body and "messages" in body):
            return error_response(
                400,
                "the body must be a JSON object with model and messages",
                "invalid_request_error",
                None,
            )
        # The name is the claw's text: check it before anything else sees it.
        problem = model_name_problem(body["model"])
        if problem is not None:
            log.info("claw %s: refused model name %s", claw.name, preview(body["model"]))
            return error_response(
                400, problem, "invalid_request_error", "invalid_model_name", param="model"
            )
        config = self._load_config()
        if isinstance(config, HttpResponse):
            return config
        upstream = config.upstream
        assert upstream is not None  # _load_config answers 503 otherwise
        policy = config.policy_for(claw.name)
        parsed = parse_chat_request(body, policy.max_tokens)
        if isinstance(parsed, Denial):
            log.info("claw %s: refused request (%s, %s)", claw.name, parsed.code, parsed.param)
            return _denied(parsed)
        if parsed.dropped:
            shown = ", ".join(preview(k, 30) for k in parsed.dropped[:8])
            log.debug(
                "claw %s: dropped %d request fields: %s", claw.name, len(parsed.dropped), shown
            )
        model = parsed.model
        now = self._clock()
        denial = check_model(
            claw.name, policy, model, config.provider_table
        ) or self._limiter.admit(claw.name, policy.requests_per_minute, now.timestamp())
        if denial is not None:
            log.info("claw %s: %s for model %r", claw.name, denial.code, model)
            return _denied(denial)
        tokens, cost = worst_case(config.prices, model, parsed.prompt_bound, parsed.completion_cap)

        def admit(ledger: Ledger) -> Denial | None:
            return check_admission(claw.name, policy, ledger, now)

        ttl = self._max_call_s + upstream.timeout_s + RESERVATION_GRACE_S
        reserved = self.usage.reserve(
            claw.name,
            model,
            tokens=tokens,
            cost_usd=cost,
            owner=self._pid,
            now=now,
            expires_at=now + timedelta(seconds=ttl),
            admit=admit,
        )
        if isinstance(reserved, Denial):
            log.info("claw %s: %s for model %r", claw.name, reserved.code, model)
            return _denied(reserved)
        return self._forward(claw, config, upstream, parsed, reserved)

    def models(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        config = self._load_config()
        if isinstance(config, HttpResponse):
            return config
        upstream = config.upstream
        assert upstream is not None
        policy = config.policy_for(claw.name)
        ids = exact_models(policy)
        if has_patterns(policy):
            # Patterns ("gpt-4o*", "*") are resolved against what the upstream has.
            try:
                resp = self._http.get(
                    upstream.base_url + "/models",
                    headers=self._auth(upstream),
                    timeout=upstream.timeout_s,
                )
                listed = [str(m["id"]) for m in resp.raise_for_status().json()["data"]]
                ids += [m for m in listed if model_allowed(policy, m) and m not in ids]
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("upstream %s: /models failed (%s)", upstream.name, type(exc).__name__)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": upstream.name} for m in ids]
        return HttpResponse.json(200, {"object": "list", "data": data})

    # ---- forwarding ----------------------------------------------------------------
    def _load_config(self) -> LlmConfig | HttpResponse:
        try:
            config = self._config()
        except ClawdenError as exc:
            # The operator's problem, explained in the controller log; the
            # claw only learns that the host is misconfigured.
            log.error("LLM gateway configuration: %s", exc)
            return error_response(
                503,
                "the host's LLM configuration is invalid; the operator must fix it",
                "server_error",
                "gateway_misconfigured",
            )
        if config.upstream is None:
            return error_response(
                503,
                "no model provider is configured on the host yet: the admin sets the model "
                "provider in the panel's Settings or in llm.toml",
                "server_error",
                "gateway_misconfigured",
            )
        return config

    @staticmethod
    def _auth(upstream: Upstream) -> dict[str, str]:
        return {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}

    def _forward(
        self,
        claw: ClawIdentity,
        config: LlmConfig,
        upstream: Upstream,
        req: ChatRequest,
        reservation: int,
    ) -> HttpResponse:
        started = time.monotonic()
        deadline = started + self._max_call_s
        settled = False

        def settle(
            status: str,
            usage: Any = None,
            note: str | None = None,
            *,
            completion_chars: int = 0,
            answered: bool = False,
        ) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self._settle(
                    claw,
                    config,
                    req,
                    reservation,
                    status,
                    usage,
                    note,
                    started,
                    completion_chars,
                    answered,
                )

        try:
            return self._call(claw, upstream, req, settle, deadline)
        except BaseException:
            settle("gateway_error")
            raise

    def _call(
        self,
        claw: ClawIdentity,
        upstream: Upstream,
        req: ChatRequest,
        settle: _Settle,
        deadline: float,
    ) -> HttpResponse:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if req.stream else "application/json",
            **self._auth(upstream),
        }
        url = upstream.base_url + "/chat/completions"
        http_request = self._http.build_request(
            "POST",
            url,
            content=json.dumps(req.body).encode(),
            headers=headers,
            timeout=upstream.timeout_s,
        )
        try:
            resp = self._http.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            # The exception text may quote the URL; only its kind is logged.
            log.warning(
                "claw %s: upstream %s unreachable (%s)",
                claw.name,
                safe_url(url),
                type(exc).__name__,
            )
            settle("upstream_unreachable")
            return error_response(
                502,
                f"the host could not reach the model provider ({type(exc).__name__})",
                "server_error",
                "upstream_unreachable",
            )
        if resp.status_code != 200:
            return self._upstream_failed(claw, upstream, resp, settle)
        if req.stream:
            return HttpResponse(
                200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                stream=_Relay(resp, req.wants_usage, settle, deadline, self._max_call_s),
            )
        try:
            raw = _read_until(resp, deadline)
            answer = json.loads(raw)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except _TooLong:
            settle("deadline", answered=True)
            return error_response(
                504,
                f"the model call took longer than {self._max_call_s:g} s",
                "server_error",
                "timeout",
            )
        except (httpx.HTTPError, ValueError) as exc:
            settle("upstream_error", answered=True)
            return error_response(
                502,
                f"the model provider sent an unreadable answer ({type(exc).__name__})",
                "server_error",
                "upstream_error",
            )
        finally:
            resp.close()
        chars = _output_chars(answer.get("choices"), "message")
        settle("ok", answer.get("usage"), completion_chars=chars, answered=True)
        return HttpResponse(200, raw, {"Content-Type": "application/json"})

    def _upstream_failed(
        self,
        claw: ClawIdentity,
        upstream: Upstream,
        resp: httpx.Response,
        settle: _Settle,
    ) -> HttpResponse:
        try:
            text = resp.read().decode("utf-8", "replace")
        except httpx.HTTPError:
            text = ""
        finally:
            resp.close()
        status = resp.status_code
        log.warning("claw %s: upstream %s answered HTTP %d", claw.name, upstream.name, status)
        settle(f"upstream_{status}")
        if status in _PASS_THROUGH:
            try:
                error = json.loads(text)["error"]
                message = str(error.get("message") if isinstance(error, dict) else error)
                code = error.get("code") if isinstance(error, dict) else None
            except (ValueError, KeyError, TypeError):
                message, code = f"the model provider refused the request (HTTP {status})", None
            if upstream.api_key:
                message = message.replace(upstream.api_key, "[redacted]")
            kind = "requests" if status == 429 else "invalid_request_error"
            return error_response(status, message, kind, str(code) if code else None)
        return error_response(
            502,
            f"the model provider failed (HTTP {status}); the host's operator can check the "
            "controller log",
            "server_error",
            "upstream_error",
        )

    def _settle(
        self,
        claw: ClawIdentity,
        config: LlmConfig,
        req: ChatRequest,
        reservation: int,
        status: str,
        usage: Any,
        note: str | None,
        started: float,
        completion_chars: int,
        answered: bool,
    ) -> None:
        """Record what the call used in place of its reservation. When the
        upstream answered but reported no usage (a stream the claw hung up on
        before the usage chunk, a provider that does not count), the tokens
        are estimated rather than recorded as free."""
        model = req.model
        if isinstance(usage, dict):
            prompt = _int(usage.get("prompt_tokens"))
            completion = _int(usage.get("completion_tokens"))
        elif answered:
            prompt, completion = req.prompt_guess, estimate_tokens(completion_chars)
            note = note or ESTIMATED_NOTE
        else:
            prompt = completion = 0
        cost, price_note = cost_usd(config.prices, model, prompt, completion)
        if status != "ok":
            price_note = None
        try:
            self.usage.settle(
                reservation,
                claw.name,
                model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
                status=status,
                note=note or price_note,
                duration_ms=int((time.monotonic() - started) * 1000),
                ts=self._clock(),
            )
        except Exception:  # noqa: BLE001 — the answer is already on its way
            # The reservation then expires on its own.
            log.exception("claw %s: could not record LLM usage", claw.name)
        log.info("claw %s: model %r %s, %d+%d tokens", claw.name, model, status, prompt, completion)


class _Relay:
    """The upstream's SSE events passed to the claw as they arrive, noting
    usage and how much text went by; settles the call exactly once.

    Runs on the connection's thread while the claw reads. The HTTP layer
    closes it when the body is sent or the claw goes away — also if it never
    started iterating — and the upstream call is dropped then, so an
    abandoned stream stops costing tokens.
    """

    def __init__(
        self,
        resp: httpx.Response,
        wants_usage: bool,
        settle: _Settle,
        deadline: float,
        max_call_s: float,
    ) -> None:
        self._resp = resp
        self._wants_usage = wants_usage
        self._settle = settle
        self._deadline = deadline
        self._max_call_s = max_call_s
        self._usage: Any = None
        self._chars = 0
        self._events = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            self._resp.close()
            self._finish("client_gone")  # a no-op when the stream settled itself

    def _finish(self, status: str) -> None:
        self._settle(status, self._usage, completion_chars=self._chars, answered=True)

    def _note(self, data: str) -> bool:
        """Take usage and text from one event; False if the claw should not see it."""
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return True
        if not isinstance(chunk, dict):
            return True
        self._chars += _output_chars(chunk.get("choices"), "delta")
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
            # We asked for the usage-only chunk; a claw that did not ask
            # should not get a chunk with no choices.
            if not self._wants_usage and not chunk.get("choices"):
                return False
        return True

    def _run(self) -> Generator[bytes, None, None]:
        status = "client_gone"
        lines: list[str] = []
        try:
            for line in self._resp.iter_lines():
                if time.monotonic() > self._deadline:
                    status = "deadline"
                    yield _error_event(
                        f"the model call took longer than {self._max_call_s:g} s", "timeout"
                    )
                    return
                if line:
                    lines.append(line)
                    continue
                if not lines:
                    continue
                event, lines = lines, []
                data = "\n".join(x[5:].lstrip() for x in event if x.startswith("data:"))
                if data and data != "[DONE]" and not self._note(data):
                    continue
                if data == "[DONE]":
                    # Record before the claw sees the end: its next call's
                    # budget check must already count this one.
                    self._finish("ok")
                yield ("\n".join(event) + "\n\n").encode()
            if lines:
                yield ("\n".join(lines) + "\n\n").encode()
            status = "ok"
        except httpx.HTTPError as exc:
            status = "upstream_error"
            yield _error_event(
                f"the model provider's stream failed ({type(exc).__name__})", "upstream_error"
            )
        finally:
            self._resp.close()
            self._finish(status)


def _error_event(message: str, code: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def _read_until(resp: httpx.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    for chunk in resp.iter_bytes():
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _TooLong
    return b"".join(chunks)


def _output_chars(choices: Any, key: str) -> int:
    """Characters of text and tool calls in an answer's ``choices`` (``key``
    is ``message``, or ``delta`` for a stream's chunk)."""
    total = 0
    for choice in choices if isinstance(choices, list) else ():
        part = choice.get(key) if isinstance(choice, dict) else None
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("content"), str):
            total += len(part["content"])
        for call in part.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += sum(len(v) for v in function.values() if isinstance(v, str))
    return total


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def llm_gateway_service(store: Store, home: Path, pacer: Pacer | None = None) -> HttpService:
    """The gateway as the controller registers it: usage in the controller's
    ``Store``, and ``llm.toml`` (in ``home``) re-read when it changes."""
    return LlmGateway(store.usage, ConfigLoader(home)).service(pacer)
