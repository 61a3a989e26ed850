"""What a route needs to know about htmx: whether a request came from it
(it then wants a fragment, not a page), and how to send it elsewhere."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse, Response


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def redirect(request: Request, to: str) -> Response:
    """A 303 to ``to``; for htmx an ``HX-Redirect`` (a 303 would be
    followed and its page swapped into the target)."""
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": to})
    return RedirectResponse(to, status_code=303)
