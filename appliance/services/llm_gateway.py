"""The LLM gateway a claw reaches on its own ``127.0.0.1:7702``.

It is an OpenAI-compatible endpoint (``POST /v1/chat/completions`` with tools
and streaming, ``GET /v1/models``) in front of whatever OpenAI-compatible
upstream the host is configured with. For each call it:

1. takes the claw's identity from the SSH channel (never from the request);
2. applies the claw's policy: model allowlist, rate limit, daily and monthly
   token and cost budgets — refusals are OpenAI-shaped errors, so the claw's
   ``openai`` client raises its usual exceptions with our message;
3. forwards the body with the *real* key (whatever Authorization the guest
   sent is dropped; the guest never holds a key), streaming SSE through event
   by event and asking the upstream for usage even on streams;
4. records tokens and cost in the store.

Upstream failures become 502s that name neither the key nor the upstream's
URL credentials.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from appliance.channel.forwarding import ClawIdentity
from appliance.core.errors import ClawdenError
from appliance.core.llm_policy import (
    Denial,
    RateLimiter,
    check_budget,
    check_model,
    cost_usd,
    exact_models,
    has_patterns,
    model_allowed,
)
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


def error_response(
    status: int, message: str, type_: str, code: str | None, headers: dict[str, str] | None = None
) -> HttpResponse:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return HttpResponse(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def _denied(denial: Denial) -> HttpResponse:
    return error_response(
        denial.status, denial.message, denial.type, denial.code, dict(denial.headers)
    )


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
    ) -> None:
        self.usage = usage
        self._config = config
        self._clock = clock
        self._limiter = RateLimiter()
        # One pooled client for every claw: reusing upstream connections is
        # most of what keeps the gateway's overhead small. trust_env=False so
        # the gateway talks to exactly the configured base_url (no proxy or
        # .netrc from the controller's environment).
        self._http = httpx.Client(
            transport=transport, trust_env=False, follow_redirects=False, timeout=120.0
        )

    def close(self) -> None:
        self._http.close()

    def service(self) -> HttpService:
        return HttpService(
            "llm",
            LLM_GATEWAY_PORT,
            {
                ("POST", "/v1/chat/completions"): self.chat_completions,
                ("GET", "/v1/models"): self.models,
            },
            limits=HttpLimits(max_body=MAX_REQUEST_BODY),
        )

    # ---- routes ----------------------------------------------------------------
    def chat_completions(self, claw: ClawIdentity, request: HttpRequest) -> HttpResponse:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not (
            isinstance(body, dict)
            and isinstance(body.get("model"), str)
            and isinstance(body.get("messages"), list)
        ):
            return error_response(
                400,
                "the body must be a JSON object with model and messages",
                "invalid_request_error",
                None,
            )
        config = self._load_config()
        if isinstance(config, HttpResponse):
            return config
        upstream = config.upstream
        assert upstream is not None  # _load_config answers 503 otherwise
        policy = config.policy_for(claw.name)
        model = str(body["model"])
        now = self._clock()
        denial = (
            check_model(claw.name, policy, model)
            or self._limiter.admit(claw.name, policy.requests_per_minute, now.timestamp())
            or check_budget(claw.name, policy, *self.usage.period_totals(claw.name, now), now)
        )
        if denial is not None:
            log.info("claw %s: %s for model %r", claw.name, denial.code, model)
            return _denied(denial)
        return self._forward(claw, config, upstream, body, model)

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
                "no LLM upstream is configured on the host",
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
        body: dict[str, Any],
        model: str,
    ) -> HttpResponse:
        started = time.monotonic()
        stream = bool(body.get("stream"))
        wants_usage = False
        if stream:
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            wants_usage = bool(options.get("include_usage"))
            body["stream_options"] = {**options, "include_usage": True}
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            **self._auth(upstream),
        }
        url = upstream.base_url + "/chat/completions"
        req = self._http.build_request(
            "POST",
            url,
            content=json.dumps(body).encode(),
            headers=headers,
            timeout=upstream.timeout_s,
        )

        def record(status: str, usage: Any = None, note: str | None = None) -> None:
            self._record(claw, config, model, status, usage, note, started)

        try:
            resp = self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            # The exception text may quote the URL; only its kind is logged.
            log.warning(
                "claw %s: upstream %s unreachable (%s)",
                claw.name,
                safe_url(url),
                type(exc).__name__,
            )
            record("upstream_unreachable")
            return error_response(
                502,
                f"the host could not reach the model provider ({type(exc).__name__})",
                "server_error",
                "upstream_unreachable",
            )
        if resp.status_code != 200:
            return self._upstream_failed(claw, upstream, resp, record)
        if stream:
            return HttpResponse(
                200,
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                stream=self._relay(resp, wants_usage, record),
            )
        try:
            raw = resp.read()
            usage = json.loads(raw).get("usage")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            record("upstream_error")
            return error_response(
                502,
                f"the model provider sent an unreadable answer ({type(exc).__name__})",
                "server_error",
                "upstream_error",
            )
        finally:
            resp.close()
        record("ok", usage)
        return HttpResponse(200, raw, {"Content-Type": "application/json"})

    def _upstream_failed(
        self,
        claw: ClawIdentity,
        upstream: Upstream,
        resp: httpx.Response,
        record: Callable[..., None],
    ) -> HttpResponse:
        try:
            text = resp.read().decode("utf-8", "replace")
        except httpx.HTTPError:
            text = ""
        finally:
            resp.close()
        status = resp.status_code
        log.warning("claw %s: upstream %s answered HTTP %d", claw.name, upstream.name, status)
        record(f"upstream_{status}")
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

    def _relay(
        self, resp: httpx.Response, wants_usage: bool, record: Callable[..., None]
    ) -> Iterator[bytes]:
        """Pass the upstream's SSE events through as they arrive, noting usage.

        Runs on the connection's thread while the claw reads; if the claw
        hangs up, the generator is closed and the upstream call is dropped
        (``finally``), so an abandoned stream stops costing tokens.
        """
        usage: Any = None
        status = "client_gone"
        recorded = False
        lines: list[str] = []

        def finish(final: str) -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                note = None if usage is not None else "upstream sent no usage for this stream"
                record(final, usage, note)

        try:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                    continue
                if not lines:
                    continue
                event, lines = lines, []
                data = "\n".join(x[5:].lstrip() for x in event if x.startswith("data:"))
                if data and data != "[DONE]":
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        chunk = None
                    if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                        # We asked for the usage-only chunk; a claw that did not
                        # ask should not get a chunk with no choices.
                        if not wants_usage and not chunk.get("choices"):
                            continue
                if data == "[DONE]":
                    # Record before the claw sees the end: its next call's
                    # budget check must already count this one.
                    finish("ok")
                yield ("\n".join(event) + "\n\n").encode()
            if lines:
                yield ("\n".join(lines) + "\n\n").encode()
            status = "ok"
        except httpx.HTTPError as exc:
            status = "upstream_error"
            error = {
                "message": f"the model provider's stream failed ({type(exc).__name__})",
                "type": "server_error",
                "param": None,
                "code": "upstream_error",
            }
            yield b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        finally:
            resp.close()
            finish(status)

    def _record(
        self,
        claw: ClawIdentity,
        config: LlmConfig,
        model: str,
        status: str,
        usage: Any,
        note: str | None,
        started: float,
    ) -> None:
        usage = usage if isinstance(usage, dict) else {}
        prompt = _int(usage.get("prompt_tokens"))
        completion = _int(usage.get("completion_tokens"))
        cost, price_note = cost_usd(config.prices, model, prompt, completion)
        if status != "ok":
            price_note = None
        try:
            self.usage.record(
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
            log.exception("claw %s: could not record LLM usage", claw.name)
        log.info("claw %s: model %r %s, %d+%d tokens", claw.name, model, status, prompt, completion)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def llm_gateway_service(store: Store, home: Path) -> HttpService:
    """The gateway as the controller registers it: usage in the controller's
    ``Store``, and ``llm.toml`` (in ``home``) re-read when it changes."""
    return LlmGateway(store.usage, ConfigLoader(home)).service()
