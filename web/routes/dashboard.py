"""The dashboard: every claw the account may see as a card, and the host's
CPU, memory and disk; the cards refresh themselves every few seconds."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from web.auth import CurrentUser
from web.panel import panel_of
from web.templating import page
from web.views import dashboard_view

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, user: CurrentUser) -> HTMLResponse:
    return page(request, "dashboard.html", {"view": dashboard_view(panel_of(request), user)})


@router.get("/dashboard/cards", response_class=HTMLResponse)
def dashboard_cards(request: Request, user: CurrentUser) -> HTMLResponse:
    return page(request, "_dashboard_cards.html", {"view": dashboard_view(panel_of(request), user)})
