"""The panel's FastAPI app: routers, static files, guards and error pages.

``create_app`` is all a caller needs: ``clawden serve`` hands it the
controller's store and channels (``web/server.py``), a test hands it a store
on a temporary file and a ``FakeClawOps``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from appliance.core.accounts import Forbidden
from appliance.core.errors import ClawdenError, Conflict, InvalidInput, NotFound, OverQuota
from web.auth import CsrfRefused, EnrolmentRequired, LoginRequired
from web.htmx import is_htmx, redirect
from web.panel import Panel
from web.routes import (
    account,
    approvals,
    audit,
    chat,
    claws,
    dashboard,
    heartbeat,
    policy,
    settings,
    skills,
)
from web.security import PanelGuard
from web.templating import page

STATIC = Path(__file__).parent / "static"
DEFAULT_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(panel: Panel, allowed_hosts: Iterable[str] = DEFAULT_HOSTS) -> FastAPI:
    app = FastAPI(
        title="clawden panel",
        docs_url=None,  # the interactive docs load scripts from a CDN
        redoc_url=None,
    )
    app.state.panel = panel
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        account, dashboard, claws, heartbeat, skills, chat, approvals, policy, settings, audit,
    ):  # fmt: skip
        app.include_router(module.router)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(EnrolmentRequired, _enrolment_required)
    app.add_exception_handler(ClawdenError, _clawden_error)
    app.add_middleware(PanelGuard, allowed_hosts=allowed_hosts, secure=panel.secure)
    return app


async def _login_required(request: Request, exc: Exception) -> Response:
    if request.method == "GET" or is_htmx(request):
        return redirect(request, "/login")
    return JSONResponse({"error": "log in first"}, status_code=401)


async def _enrolment_required(request: Request, exc: Exception) -> Response:
    return redirect(request, "/account/totp")


def status_for(exc: ClawdenError) -> int:
    for kind, status in (
        (NotFound, 404),
        (Forbidden, 403),
        (CsrfRefused, 403),
        (InvalidInput, 400),
        (Conflict, 409),
        (OverQuota, 429),
    ):
        if isinstance(exc, kind):
            return status
    return 503


async def _clawden_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClawdenError)
    status = status_for(exc)
    name = "_error.html" if is_htmx(request) else "error.html"
    response = page(request, name, {"what": exc.what, "fix": exc.fix}, status_code=status)
    if is_htmx(request):
        # Errors land in the page's error slot, whatever the target was.
        response.headers["HX-Retarget"] = "#errors"
        response.headers["HX-Reswap"] = "innerHTML"
    return response
