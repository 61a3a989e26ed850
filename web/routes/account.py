"""Logging in and out, the one-time setup link, and TOTP enrolment."""

from __future__ import annotations

from typing import Annotated

import segno
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from appliance.core.accounts import ADMIN
from appliance.core.errors import InvalidInput, NotFound
from web import setup_link
from web.auth import AnyUser, Csrf, clear_session_cookie, session_cookie, session_token
from web.panel import panel_of
from web.templating import page

router = APIRouter()


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html")


@router.post("/login")
def login(
    request: Request,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    panel = panel_of(request)
    done = panel.accounts.login(name.strip(), password, code.strip(), _address(request))
    response = RedirectResponse("/", status_code=303)
    response.headers["set-cookie"] = session_cookie(panel, done.token)
    return response


@router.post("/logout", dependencies=[Csrf])
def logout(request: Request, user: AnyUser) -> Response:
    panel = panel_of(request)
    token = session_token(request)
    if token:
        panel.accounts.logout(token)
    response = RedirectResponse("/login", status_code=303)
    response.headers["set-cookie"] = clear_session_cookie(panel)
    return response


def _setup_token(request: Request, token: str) -> str:
    panel = panel_of(request)
    if panel.store.users.admin_count() > 0 or not setup_link.matches(panel.home, token):
        raise NotFound(
            "this setup link is not valid (it was used already, or a newer one was printed)",
            "log in at /login, or restart `clawden serve` for a new link while no admin exists",
        )
    return token


@router.get("/setup/{token}", response_class=HTMLResponse)
def setup_form(request: Request, token: str) -> HTMLResponse:
    return page(request, "setup.html", {"token": _setup_token(request, token)})


@router.post("/setup/{token}")
def setup(
    request: Request,
    token: str,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    password_again: Annotated[str, Form(max_length=1024)],
) -> Response:
    panel = panel_of(request)
    _setup_token(request, token)
    if password != password_again:
        raise InvalidInput("the two passwords differ", "type the same password twice")
    panel.accounts.add(name.strip(), ADMIN, password, (), actor="setup-link")
    setup_link.spend(panel.home)
    done = panel.accounts.login(name.strip(), password, "", _address(request))
    response = RedirectResponse("/account/totp", status_code=303)
    response.headers["set-cookie"] = session_cookie(panel, done.token)
    return response


@router.get("/account/totp", response_class=HTMLResponse)
def totp_page(request: Request, user: AnyUser) -> HTMLResponse:
    return page(request, "totp.html", {"enrolling": False})


@router.post("/account/totp/start", response_class=HTMLResponse, dependencies=[Csrf])
def totp_start(request: Request, user: AnyUser) -> HTMLResponse:
    uri = panel_of(request).accounts.start_totp(user.name, actor=user.actor)
    # segno writes the SVG itself from the URI: markup we made, not input.
    qr = Markup(segno.make(uri, error="m").svg_inline(scale=4, omitsize=False))  # noqa: S704
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    return page(request, "totp.html", {"enrolling": True, "qr": qr, "secret": secret})


@router.post("/account/totp/confirm", response_class=HTMLResponse, dependencies=[Csrf])
def totp_confirm(
    request: Request, user: AnyUser, code: Annotated[str, Form(max_length=16)]
) -> HTMLResponse:
    codes = panel_of(request).accounts.confirm_totp(user.name, code.strip(), actor=user.actor)
    return page(request, "totp.html", {"enrolling": False, "recovery_codes": codes})
