""" "Test connection": ask the configured provider for its model list, then
check that the default model answers a tool call (claws work through tools).

The same requests the gateway makes (``GET {base_url}/models``, ``POST
{base_url}/chat/completions``) with the real key, through httpx with the
gateway's settings (no proxy or ``.netrc`` from the environment, no
redirects), but with a short timeout: an admin is waiting on the page. The
tool-call check is one tiny completion (a forced call of a ``ping`` tool,
at most 32 tokens), made only when the admin presses the button.
Results never carry the key, the URL's credentials, or the provider's reply
body (which might quote either); only what went wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from appliance.llm.config import Upstream, safe_url

PROBE_TIMEOUT_S = 5.0
# A completion takes longer than a model list, even for one forced call.
TOOL_PROBE_TIMEOUT_S = 30.0
MAX_MODELS_SHOWN = 20
PING_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Answer clawden's connection test.",
        "parameters": {"type": "object", "properties": {}},
    },
}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    summary: str
    models: tuple[str, ...] = ()


def probe_upstream(upstream: Upstream, transport: httpx.BaseTransport | None = None) -> ProbeResult:
    listed = _list_models(upstream, transport)
    if not listed.ok or not upstream.default_models:
        return listed
    model = upstream.default_models[0]
    if model not in listed.models:
        return ProbeResult(
            False,
            f"{listed.summary}; the default model {model!r} is not among them:"
            " pick one the provider has (that supports tool calls)",
            listed.models,
        )
    called = _probe_tool_call(upstream, model, transport)
    return ProbeResult(called.ok, f"{listed.summary}; {called.summary}", listed.models)


def _request(
    upstream: Upstream,
    method: str,
    path: str,
    transport: httpx.BaseTransport | None,
    timeout: float,
    body: dict[str, Any] | None = None,
) -> httpx.Response | ProbeResult:
    """The provider's response, or a result saying why there is none."""
    url = upstream.base_url + path
    where = safe_url(url)
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    try:
        with httpx.Client(
            transport=transport, trust_env=False, follow_redirects=False, timeout=timeout
        ) as client:
            resp = client.request(method, url, headers=headers, json=body)
    except httpx.TimeoutException:
        return ProbeResult(False, f"{where} did not answer within {timeout:g} s")
    except httpx.ConnectError:
        return ProbeResult(
            False,
            f"could not connect to {where} (refused, or no such host): "
            "check the base URL and that the provider is running",
        )
    except httpx.HTTPError as exc:
        # The exception's text may quote the URL; its kind is enough.
        return ProbeResult(False, f"{where} failed: {type(exc).__name__}")
    except (httpx.InvalidURL, ValueError):
        # The config checks refuse such URLs; an IDNA host the resolver
        # still cannot encode ends here, as a result, not a crash.
        return ProbeResult(False, f"{where} is not a URL the client can use: check the base URL")
    if resp.status_code in (401, 403):
        return ProbeResult(
            False,
            f"{where} refused the API key (HTTP {resp.status_code}): set the right key",
        )
    return resp


def _list_models(upstream: Upstream, transport: httpx.BaseTransport | None) -> ProbeResult:
    resp = _request(upstream, "GET", "/models", transport, PROBE_TIMEOUT_S)
    if isinstance(resp, ProbeResult):
        return resp
    where = safe_url(upstream.base_url + "/models")
    if resp.status_code != 200:
        return ProbeResult(
            False,
            f"{where} answered HTTP {resp.status_code}: is the base URL the API's root "
            "(it usually ends in /v1)?",
        )
    try:
        models = tuple(str(m["id"]) for m in resp.json()["data"])
    except (ValueError, KeyError, TypeError):
        return ProbeResult(False, f"{where} answered, but not with an OpenAI-style model list")
    shown = ", ".join(models[:MAX_MODELS_SHOWN]) + (" …" if len(models) > MAX_MODELS_SHOWN else "")
    return ProbeResult(True, f"{where} answered: {len(models)} models ({shown})", models)


def _probe_tool_call(
    upstream: Upstream, model: str, transport: httpx.BaseTransport | None
) -> ProbeResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Connection test: call the ping tool."}],
        "tools": [PING_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "ping"}},
        "max_tokens": 32,
    }
    resp = _request(upstream, "POST", "/chat/completions", transport, TOOL_PROBE_TIMEOUT_S, body)
    if isinstance(resp, ProbeResult):
        return resp
    no_tools = (
        f"the default model {model!r} did not answer with a tool call: claws act through"
        " tools, so pick a model that supports them"
    )
    if resp.status_code != 200:
        return ProbeResult(False, f"{no_tools} (HTTP {resp.status_code})")
    try:
        calls = resp.json()["choices"][0]["message"].get("tool_calls") or []
        names = [str(c["function"]["name"]) for c in calls]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return ProbeResult(False, f"{no_tools} (not an OpenAI-style completion)")
    if "ping" not in names:
        return ProbeResult(False, no_tools)
    return ProbeResult(True, f"the default model {model!r} answered a tool call")
