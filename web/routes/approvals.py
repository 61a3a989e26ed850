"""The approvals inbox: pending requests exactly as the claw asked them,
repeats grouped, the nav badge, deciding with a TOTP code bound to the shown
sha256 (``appliance/accounts/decisions.py: decide``), grants and their
revocation. Admins only: a member gets "not found" for every route here, as
for a page that does not exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from appliance.accounts.decisions import decide, revoke_grant
from appliance.core.accounts import User
from appliance.core.errors import InvalidInput, NotFound
from web.approvals_view import badge_text, inbox_view
from web.auth import Csrf, current_user
from web.htmx import is_htmx
from web.panel import panel_of
from web.templating import page

router = APIRouter()


def inbox_admin(user: Annotated[User, Depends(current_user)]) -> User:
    """An admin; a member is told this page does not exist."""
    if not user.is_admin:
        raise NotFound("there is no such page", "go back to the dashboard")
    return user


InboxAdmin = Annotated[User, Depends(inbox_admin)]


def _list(request: Request) -> HTMLResponse:
    return page(request, "_approval_list.html", {"inbox": inbox_view(panel_of(request))})


@router.get("/approvals", response_class=HTMLResponse)
def approvals_page(request: Request, user: InboxAdmin) -> HTMLResponse:
    return page(request, "approvals.html", {"inbox": inbox_view(panel_of(request))})


@router.get("/approvals/list", response_class=HTMLResponse)
def approvals_list(request: Request, user: InboxAdmin) -> HTMLResponse:
    return _list(request)


@router.get("/approvals/badge", response_class=PlainTextResponse)
def approvals_badge(request: Request, user: InboxAdmin) -> PlainTextResponse:
    return PlainTextResponse(badge_text(panel_of(request)))


def _decision(decision: str) -> bool:
    if decision not in ("approve", "deny"):
        raise InvalidInput(f"unknown decision {decision[:20]!r}", "press Approve or Deny")
    return decision == "approve"


def _done(request: Request) -> Response:
    if is_htmx(request):
        return _list(request)
    return RedirectResponse("/approvals", status_code=303)


@router.post("/approvals/{approval_id}/decide", dependencies=[Csrf])
def approvals_decide(
    request: Request,
    user: InboxAdmin,
    approval_id: str,
    sha256: Annotated[str, Form(max_length=64)],
    code: Annotated[str, Form(max_length=64)],
    decision: Annotated[str, Form(max_length=16)],
    reason: Annotated[str, Form(max_length=500)] = "",
    grant_minutes: Annotated[int, Form(ge=0, le=1440)] = 0,
) -> Response:
    panel = panel_of(request)
    approved = _decision(decision)
    decide(
        panel.store,
        user.name,
        approval_id[:40],
        sha256.strip(),
        code.strip(),
        approved,
        reason.strip() or None,
        clock=panel.clock,
        grant_minutes=grant_minutes if approved else 0,
    )
    return _done(request)


@router.post("/approvals/grants/{grant_id}/revoke", dependencies=[Csrf])
def approvals_revoke(request: Request, user: InboxAdmin, grant_id: str) -> Response:
    panel = panel_of(request)
    revoke_grant(panel.store, user, grant_id[:40], clock=panel.clock)
    return _done(request)
