"""Per-claw approval policy: a table of capability → rule (allow, deny,
ask) and a form to change one rule with a fresh TOTP code
(``appliance/accounts/policy.py: set_policy``, audited ``policy.set``).
Admins only; a member is told the page does not exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.accounts.policy import set_policy
from appliance.core.accounts import unknown_claw_for
from web.approvals_view import policy_view
from web.auth import Csrf
from web.htmx import is_htmx
from web.panel import panel_of
from web.routes.approvals import InboxAdmin
from web.templating import page

router = APIRouter()


@router.get("/policy", response_class=HTMLResponse)
def policy_index(request: Request, user: InboxAdmin) -> HTMLResponse:
    claws = [c.name for c in panel_of(request).store.claws.list()]
    return page(request, "policy_index.html", {"claws": claws})


def _existing(request: Request, user: InboxAdmin, claw: str) -> str:
    if panel_of(request).store.claws.get(claw) is None:
        raise unknown_claw_for(user, claw)
    return claw


@router.get("/claws/{claw}/policy", response_class=HTMLResponse)
def policy_page(request: Request, user: InboxAdmin, claw: str) -> HTMLResponse:
    view = policy_view(panel_of(request), _existing(request, user, claw))
    return page(request, "policy.html", {"view": view, "changed": None})


@router.post("/claws/{claw}/policy", response_class=HTMLResponse, dependencies=[Csrf])
def policy_set(
    request: Request,
    user: InboxAdmin,
    claw: str,
    capability: Annotated[str, Form(max_length=200)],
    rule: Annotated[str, Form(max_length=16)],
    code: Annotated[str, Form(max_length=64)],
) -> Response:
    panel = panel_of(request)
    _existing(request, user, claw)
    old = set_policy(
        panel.store, user.name, claw, capability.strip(), rule, code.strip(), clock=panel.clock
    )
    if not is_htmx(request):
        return RedirectResponse(f"/claws/{claw}/policy", status_code=303)
    changed = (capability.strip(), old, rule)
    view = policy_view(panel, claw)
    return page(request, "_policy_table.html", {"view": view, "changed": changed})
