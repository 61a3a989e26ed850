"""The panel's browser-facing guards, as one ASGI middleware.

* **Host** — only the names the panel was told it serves (127.0.0.1 and
  localhost by default, plus the ``--listen`` address): a DNS-rebinding page
  that points its own name at 127.0.0.1 gets a 400, never the panel.
* **Origin** — a state-changing request (anything but GET/HEAD/OPTIONS)
  whose ``Origin`` is another site, or whose ``Sec-Fetch-Site`` says it came
  from another site, is refused before any route runs. The CSRF token is
  checked by the routes that need a session (``web/auth.py``).
* **Headers** — a strict Content-Security-Policy (scripts, styles, images
  and requests from the panel itself only; no inline script or style, no
  eval), no framing, no referrer to other sites, no caching of pages that hold family data.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # Not "no-referrer": with it, Chromium sends "Origin: null" on the
    # panel's own form posts, and the Origin check would refuse them.
    # "same-origin" still sends nothing to any other site.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser says of a request its own page made (or the user typed).
SAME_SITE_FETCH = frozenset({"same-origin", "none"})


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port (IPv6 kept bracketed)."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0] if ":" in host_header else host_header


class PanelGuard:
    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], secure: bool) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.secure = secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await PlainTextResponse(refusal[1], status_code=refusal[0])(
                scope, receive, self._with_headers(send, static=False)
            )
            return
        static = str(scope.get("path", "")).startswith("/static/")
        await self.app(scope, receive, self._with_headers(send, static))

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        host = host_name(headers.get("host", "")).lower()
        if host not in self.allowed_hosts:
            return 400, "unknown host: open the panel at the address `clawden serve` printed\n"
        if scope["method"] in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        scheme = "https" if self.secure else "http"
        if origin is not None and origin != f"{scheme}://{headers.get('host', '')}":
            return 403, "refused: this request came from another site\n"
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in SAME_SITE_FETCH:
            return 403, "refused: this request came from another site\n"
        return None

    def _with_headers(self, send: Send, static: bool) -> Send:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if not static:
                    # Pages hold family data: never kept by the browser or a proxy.
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return send_with_headers
