""" "Test connection": ask the configured provider for its model list.

The same request the gateway makes when it resolves model patterns
(``GET {base_url}/models`` with the real key), through httpx with the
gateway's settings (no proxy or ``.netrc`` from the environment, no
redirects), but with a short timeout: an admin is waiting on the page.
Results never carry the key, the URL's credentials, or the provider's reply
body (which might quote either); only what went wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from appliance.llm.config import Upstream, safe_url

PROBE_TIMEOUT_S = 5.0
MAX_MODELS_SHOWN = 20


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    summary: str
    models: tuple[str, ...] = ()


def probe_upstream(upstream: Upstream, transport: httpx.BaseTransport | None = None) -> ProbeResult:
    url = upstream.base_url + "/models"
    where = safe_url(url)
    headers = {"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {}
    try:
        with httpx.Client(
            transport=transport, trust_env=False, follow_redirects=False, timeout=PROBE_TIMEOUT_S
        ) as client:
            resp = client.get(url, headers=headers)
    except httpx.TimeoutException:
        return ProbeResult(False, f"{where} did not answer within {PROBE_TIMEOUT_S:g} s")
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
