"""The admin's LLM settings: the provider (a write-only key), "test
connection", the default budget and model allowlist, per-claw overrides.

Every form posts to a route that changes ``llm.toml`` through
``LlmSettings`` (checked, written atomically 0600, audited) and redirects
back; bad input is a 400 with the file untouched. The key is never put in
a page, a URL, a log line or an audit entry.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.core.errors import InvalidInput
from appliance.llm.config import LlmConfigError
from appliance.llm.probe import ProbeResult, probe_upstream
from appliance.llm.settings import POLICY_FIELDS, LlmSettings
from web.auth import AdminUser, Csrf
from web.panel import Panel, panel_of
from web.templating import page

router = APIRouter()
Field = Annotated[str, Form(max_length=2000)]


def _settings(panel: Panel) -> LlmSettings:
    return LlmSettings(panel.store, panel.home)


def _context(panel: Panel, probe: ProbeResult | None = None) -> dict[str, Any]:
    settings = _settings(panel)
    try:
        provider, policies, error = settings.provider(), settings.policies(), None
    except LlmConfigError as exc:
        # The page still loads, so the admin can see what to mend.
        provider, policies, error = None, [], str(exc)
    overridden = {p.claw for p in policies}
    return {
        "provider": provider,
        "policies": policies,
        "config_error": error,
        "fields": POLICY_FIELDS,
        "claws_without": [c.name for c in panel.store.claws.list() if c.name not in overridden],
        "probe": probe,
    }


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request, user: AdminUser) -> HTMLResponse:
    return page(request, "settings.html", _context(panel_of(request)))


def _back() -> Response:
    return RedirectResponse("/settings", status_code=303)


@router.post("/settings/provider", dependencies=[Csrf])
def set_provider(
    request: Request,
    user: AdminUser,
    base_url: Field = "",
    default_model: Field = "",
    timeout_s: Annotated[str, Form(max_length=20)] = "",
    api_key: Annotated[str, Form(max_length=4096)] = "",
    forget_key: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    _settings(panel_of(request)).set_provider(
        user.actor, base_url, default_model, timeout_s, api_key, forget_key == "yes"
    )
    return _back()


@router.post("/settings/test", response_class=HTMLResponse, dependencies=[Csrf])
def test_connection(request: Request, user: AdminUser) -> HTMLResponse:
    panel = panel_of(request)
    upstream = _settings(panel).config().upstream
    if upstream is None:
        raise InvalidInput("no model provider is set yet", "fill in the provider form first")
    return page(request, "settings.html", _context(panel, probe_upstream(upstream)))


@router.post("/settings/policy", dependencies=[Csrf])
async def set_policy(request: Request, user: AdminUser) -> Response:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str) and len(v) <= 2000}
    claw = values.get("claw", "").strip() or None
    _settings(panel_of(request)).set_policy(user.actor, claw, values)
    return _back()


@router.post("/settings/policy/{claw}/remove", dependencies=[Csrf])
def remove_policy(request: Request, user: AdminUser, claw: str) -> Response:
    _settings(panel_of(request)).clear_claw_policy(user.actor, claw)
    return _back()
