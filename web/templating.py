"""The panel's Jinja2 environment: autoescaping on, and the filters that
show hostile text safely (``visible``: control, bidi and zero-width
characters as visible escapes; ``markdown``: ``web/markdown.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from appliance.core.textsafe import printable
from web.markdown import render_markdown

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.autoescape = True
templates.env.filters["visible"] = lambda text: printable(str(text))
templates.env.filters["markdown"] = render_markdown
templates.env.filters["fingerprint"] = lambda sha256: f"{sha256[:4]} {sha256[4:8]} {sha256[8:12]}"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """ "3 min ago", for people; the exact time goes in a title attribute."""
    if when is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - when).total_seconds())
    if seconds < 0:
        return "just now" if seconds > -60 else f"in {_span(-seconds)}"
    if seconds < 60:
        return "just now"
    return f"{_span(seconds)} ago"


def _span(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


templates.env.filters["ago"] = ago


def page(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    """Render ``name`` with the logged-in user and CSRF token (if any)."""
    ctx: dict[str, Any] = {
        "user": getattr(request.state, "user", None),
        "csrf": getattr(request.state, "csrf", ""),
    }
    ctx.update(context or {})
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)
