"""Drive pages in a real headless browser: Debian's ``chromium`` through
Playwright's sync API, with everything a page does recorded.

The browser is the one Debian ships (``bash scripts/bootstrap.sh
--with-test-tools`` installs the ``chromium`` package), launched through
``executable_path``: ``playwright install``, which downloads a browser build
from a CDN, is never run. See docs/install.md#browser-tests.

The fixtures are registered for the whole suite by ``tests/conftest.py``
(``pytest_plugins``): a test just names them. (A suite without that line
imports them into its ``conftest.py``; pytest finds fixtures by name there)::

    from tests.support.browser import browser, browser_session, page, page_events  # noqa: F401

``browser_session`` (session scope)
    Starts Playwright and chromium once per test run (about a second; the
    time is in ``BrowserSession.launch_seconds``).
``browser`` (each test)
    That one ``Browser``, usable for the test's duration (see "Event loop").
``page_events`` (each test)
    The ``PageEvents`` of ``page``: console messages, JS dialogs (each one is
    recorded and dismissed), every request URL and uncaught page errors.
``page`` (each test)
    A ``Page`` in a fresh ``BrowserContext`` (no cookies or storage shared
    with other tests), recorded into ``page_events``. If the test fails, a
    full-page screenshot is saved as a test artefact (``save_screenshot``).

A hostile-text test then asserts the page stayed inert::

    page.goto(f"{panel}/claws/alice")
    page_events.assert_inert(panel)   # no dialog, no page error, no request off the origin

Event loop: Playwright's sync API runs an asyncio loop in a greenlet on the
test's own thread, and marks that loop as *running* on the thread between
sync calls. Left like that for a whole session, every later test in the run
would see a running loop: ``asyncio.run()`` and ``anyio.run()`` refuse to
start (measured; Starlette's ``TestClient``, whose loop runs in a thread of
its own, is unaffected). So the loop is marked only while a test holds
the browser: the ``browser`` fixture (and ``BrowserSession.active()``, for
fixtures of a wider scope) marks it, and unmarks it when the test ends. Touch
the session's ``Browser`` only inside one of them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    WebError,
    WebSocket,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

ARTEFACTS_ENV = "CLAWDEN_TEST_ARTEFACTS"
DEFAULT_ARTEFACTS = Path("/var/tmp/clawden-artefacts")
BOOTSTRAP_HINT = "run `bash scripts/bootstrap.sh --with-test-tools` (it installs Debian's chromium)"

# URL schemes that load nothing over the network: a `data:` image or an
# `about:blank` frame does not leave the page's origin.
_LOCAL_SCHEMES = frozenset({"data", "about"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A WebSocket to the page's own host is same-origin for our purposes.
_WS_AS_HTTP = {"ws": "http", "wss": "https"}


class BrowserMissingError(RuntimeError):
    """Debian's chromium is not installed."""


# ---- launching ---------------------------------------------------------------
def chromium_path() -> str:
    """Debian's chromium (its /usr/bin/chromium launcher), found on PATH."""
    path = shutil.which("chromium")
    if path is None:
        raise BrowserMissingError(
            f"no `chromium` on PATH: {BOOTSTRAP_HINT}. Playwright's own "
            "`playwright install` (a download) is not used."
        )
    return path


@dataclass
class BrowserSession:
    """A launched chromium, and the Playwright event loop that drives it."""

    browser: Browser
    launch_seconds: float
    _loop: asyncio.AbstractEventLoop

    @contextmanager
    def active(self) -> Iterator[Browser]:
        """The browser, with Playwright's loop marked running on this thread
        until the block ends (see the module's docstring). Re-entrant."""
        current = asyncio._get_running_loop()
        if current is self._loop:
            yield self.browser
            return
        if current is not None:
            raise RuntimeError(
                "the browser's sync API cannot be used inside a running asyncio event loop"
            )
        asyncio._set_running_loop(self._loop)
        try:
            yield self.browser
        finally:
            asyncio._set_running_loop(None)


@contextmanager
def launch_chromium() -> Iterator[BrowserSession]:
    """Start Playwright's driver and a headless chromium; stop both at the end.

    The loop is left unmarked on exit from every sync call made here: use the
    browser inside ``BrowserSession.active()``.
    """
    executable = chromium_path()
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Makes Playwright pass --no-sandbox. Chromium refuses to start as
            # root with its sandbox on ("Running as root without --no-sandbox
            # is not supported", crbug.com/638180): the sandbox is built to drop
            # a normal user's rights, and a container as a rule lacks the user
            # namespaces it would need anyway. The tests run as root, and the
            # browser only loads pages the tests serve on 127.0.0.1.
            chromium_sandbox=False,
            # Playwright also passes --disable-dev-shm-usage by default: a
            # container's /dev/shm is often 64 MiB, too small for chromium.
        )
        launch_seconds = time.monotonic() - started
        # Marked running by Playwright (see the module docstring): take it,
        # and unmark it until a test asks for the browser.
        loop = asyncio.get_running_loop()
        session = BrowserSession(browser, launch_seconds, loop)
        asyncio._set_running_loop(None)
        try:
            yield session
        finally:
            # Marked again for closing; the driver's exit unmarks it for good.
            asyncio._set_running_loop(loop)
            browser.close()


# ---- recording ---------------------------------------------------------------
@dataclass(frozen=True)
class ConsoleEntry:
    type: str  # "log", "error", "warning", ...
    text: str
    url: str  # the script or page it came from


@dataclass(frozen=True)
class DialogEntry:
    type: str  # "alert", "confirm", "prompt" or "beforeunload"
    message: str


def origin_of(url: str) -> str:
    """``scheme://host:port`` of an http(s) or ws(s) URL, the port always
    spelt out (WebSockets counted as http/https); a ``blob:`` URL has the
    origin of the URL inside it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "blob":
        return origin_of(url[len("blob:") :])
    scheme = _WS_AS_HTTP.get(scheme, scheme)
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass
class PageEvents:
    """What the pages of one browser context did, in order of arrival."""

    console: list[ConsoleEntry] = field(default_factory=list)
    dialogs: list[DialogEntry] = field(default_factory=list)
    # Every request the context's pages made (documents, scripts, images,
    # fetch, ...), and WebSocket URLs, as full URLs.
    requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught JS exceptions

    def watch(self, context: BrowserContext) -> None:
        """Record everything from ``context``, and from pages it opens later
        (popups included). Call it before the context opens its first page."""
        context.on("console", self._on_console)
        context.on("dialog", self._on_dialog)
        context.on("weberror", self._on_web_error)
        context.on("request", self._on_request)
        context.on("page", self._on_page)
        for page in context.pages:
            self._on_page(page)

    def requests_leaving(self, origin: str) -> list[str]:
        """The recorded requests to anywhere but ``origin`` (e.g.
        ``http://127.0.0.1:8443``); ``data:`` and ``about:`` URLs stay local."""
        home = origin_of(origin)
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme.lower() not in _LOCAL_SCHEMES and origin_of(url) != home
        ]

    def assert_inert(self, origin: str) -> None:
        """Fail unless the page raised no dialog, threw no uncaught error and
        sent no request off ``origin``: what hostile text must not make it do."""
        problems = [f"dialog: {d.type} {d.message!r}" for d in self.dialogs]
        problems += [f"page error: {error}" for error in self.page_errors]
        problems += [f"request off {origin}: {url}" for url in self.requests_leaving(origin)]
        assert not problems, "the page was not inert:\n  " + "\n  ".join(problems)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(ConsoleEntry(message.type, message.text, message.location["url"]))

    def _on_dialog(self, dialog: Dialog) -> None:
        # With a listener Playwright no longer dismisses dialogs itself: a
        # dialog left open would block the page's script until the timeout.
        self.dialogs.append(DialogEntry(dialog.type, dialog.message))
        dialog.dismiss()

    def _on_web_error(self, web_error: WebError) -> None:
        error = web_error.error
        self.page_errors.append(f"{error.name}: {error.message}")

    def _on_request(self, request: Request) -> None:
        self.requests.append(request.url)

    def _on_page(self, page: Page) -> None:
        # WebSockets are reported per page only.
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, websocket: WebSocket) -> None:
        self.requests.append(websocket.url)


@contextmanager
def recorded_page(
    browser: Browser, events: PageEvents, *, base_url: str | None = None
) -> Iterator[Page]:
    """A page in a fresh context whose events go to ``events``; the context
    (and every page in it) is closed at the end. ``base_url`` lets
    ``page.goto("/login")`` name paths only."""
    context = browser.new_context(base_url=base_url)
    try:
        events.watch(context)
        yield context.new_page()
    finally:
        context.close()


# ---- artefacts ---------------------------------------------------------------
def artefacts_dir() -> Path:
    """``$CLAWDEN_TEST_ARTEFACTS`` (default /var/tmp/clawden-artefacts),
    created if missing. Owner-only: screenshots of the panel can show secrets
    (TOTP enrolment codes of the test accounts)."""
    path = Path(os.environ.get(ARTEFACTS_ENV) or DEFAULT_ARTEFACTS)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def save_screenshot(page: Page, name: str) -> Path:
    """A full-page PNG of ``page`` at ``<artefacts_dir()>/<name>.png`` (the
    name made safe for a file name; an older file of that name is replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:200] or "screenshot"
    path = artefacts_dir() / f"{safe}.png"
    page.screenshot(path=path, full_page=True)
    return path


# ---- fixtures ----------------------------------------------------------------
@pytest.fixture(scope="session")
def browser_session() -> Iterator[BrowserSession]:
    """Playwright and chromium, started once for the run."""
    with launch_chromium() as session:
        yield session


@pytest.fixture
def browser(browser_session: BrowserSession) -> Iterator[Browser]:
    """The session's browser, usable until the test ends."""
    with browser_session.active() as active:
        yield active


@pytest.fixture
def page_events() -> PageEvents:
    """What ``page`` (and pages it opens) did during the test."""
    return PageEvents()


@pytest.fixture
def page(
    browser: Browser, page_events: PageEvents, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh page, recorded into ``page_events``; screenshotted on failure."""
    failed_before = request.session.testsfailed
    with recorded_page(browser, page_events) as new_page:
        yield new_page
        # A failure of this test's setup or call was counted before teardown.
        if request.session.testsfailed > failed_before and not new_page.is_closed():
            try:
                path = save_screenshot(new_page, request.node.nodeid)
            except PlaywrightError as error:  # the failure itself matters more
                request.node.user_properties.append(("screenshot failed", error.message))
            else:
                request.node.user_properties.append(("screenshot", str(path)))
