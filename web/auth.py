"""Who is asking: the session cookie, the CSRF token, and the role checks
every route depends on.

A session is a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie
(``Secure`` under TLS) whose digest lives in the store's sessions table, so
logging out or changing a password ends it on the server. The CSRF token is
an HMAC of the session token under the panel's key: it is put in every page
(``hx-headers`` on ``<body>``, a hidden field in plain forms) and every
state-changing route requires it, on top of ``PanelGuard``'s Origin check.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from appliance.core.accounts import (
    SESSION_TTL,
    Forbidden,
    User,
    may_see_claw,
    unknown_claw_for,
)
from appliance.core.errors import ClawdenError
from web.panel import Panel, panel_of

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


class LoginRequired(Exception):
    """No live session: pages redirect to the login form, the API says 401."""


class EnrolmentRequired(Exception):
    """An admin without TOTP may do nothing but enrol it."""


class CsrfRefused(ClawdenError):
    """A state-changing request without this session's CSRF token."""


def cookie_name(panel: Panel) -> str:
    # The __Host- prefix pins the cookie to this origin, but needs Secure.
    return "__Host-clawden" if panel.secure else "clawden_session"


def session_token(request: Request) -> str | None:
    return request.cookies.get(cookie_name(panel_of(request)))


def csrf_token(panel: Panel, token: str) -> str:
    return hmac.new(panel.csrf_key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


def session_cookie(panel: Panel, token: str) -> str:
    """The Set-Cookie value for a new session."""
    return _cookie(panel, token, int(SESSION_TTL.total_seconds()))


def clear_session_cookie(panel: Panel) -> str:
    return _cookie(panel, "", 0)


def _cookie(panel: Panel, value: str, max_age: int) -> str:
    parts = [f"{cookie_name(panel)}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    parts.append(f"Max-Age={max_age}")
    if panel.secure:
        parts.append("Secure")
    return "; ".join(parts)


def _user(request: Request) -> User:
    token = session_token(request)
    user = None if token is None else panel_of(request).accounts.session_user(token)
    if user is None:
        raise LoginRequired()
    request.state.user = user
    request.state.csrf = csrf_token(panel_of(request), token or "")
    return user


def any_user(request: Request) -> User:
    """A logged-in account, admin or member, TOTP enrolled or not."""
    return _user(request)


def current_user(request: Request) -> User:
    """A logged-in account that may use the panel: an admin must have TOTP."""
    user = _user(request)
    if user.is_admin and not user.totp_active:
        raise EnrolmentRequired()
    return user


async def check_csrf(request: Request) -> None:
    """The request carries this session's CSRF token (header or form field)."""
    token = session_token(request) or ""
    expected = csrf_token(panel_of(request), token)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        field = form.get(CSRF_FIELD)
        sent = field if isinstance(field, str) else None
    if not token or sent is None or not hmac.compare_digest(sent, expected):
        raise CsrfRefused(
            "refused: the form's security token is missing or stale",
            "reload the page and try again",
        )


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("only the admin may do this", "ask the admin of this home")
    return user


def visible_claw(user: User, claw: str) -> str:
    """``claw`` if ``user`` may see it; otherwise the same "not found" a
    claw that does not exist gets, so a member learns nothing of others."""
    if not may_see_claw(user, claw):
        raise unknown_claw_for(user, claw)
    return claw


AnyUser = Annotated[User, Depends(any_user)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
Csrf = Depends(check_csrf)
