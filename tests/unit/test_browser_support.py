"""tests/support/browser.py against the real thing: Debian's chromium, driven
through Playwright, loading pages from small HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from playwright.sync_api import Browser, Page

from tests.support.browser import (
    ARTEFACTS_ENV,
    BrowserMissingError,
    BrowserSession,
    PageEvents,
    chromium_path,
    origin_of,
    recorded_page,
    save_screenshot,
)

# The launch took ~1.2 s here (Playwright's driver ~0.9 s, chromium ~0.3 s);
# far more means something is wrong with the browser or the machine.
LAUNCH_BUDGET_S = 30.0


@dataclass
class Site:
    """A tiny web server on 127.0.0.1: ``pages`` by path, 404 otherwise."""

    pages: dict[str, str]
    hits: list[str] = field(default_factory=list)
    origin: str = ""

    def url(self, path: str) -> str:
        return self.origin + path


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # Chromium drops idle and speculative connections when a context
        # closes, perhaps after the test: no traceback on the terminal for that.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve(pages: dict[str, str]) -> Iterator[Site]:
    site = Site(pages)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.hits.append(self.path)
            body = site.pages.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    site.origin = f"http://{host!s}:{port}"
    thread = threading.Thread(target=server.serve_forever, name="test-site", daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


INERT = "<!doctype html><title>inert</title><p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
ALERTING = (
    "<!doctype html><title>before</title>"
    "<script>alert(1); document.title = 'after alert, confirm: ' + confirm('sure?')</script>"
)


def test_launch_is_quick_and_uses_debians_chromium(browser_session: BrowserSession) -> None:
    print(f"browser launch: {browser_session.launch_seconds:.2f} s")
    assert browser_session.launch_seconds < LAUNCH_BUDGET_S
    with browser_session.active() as active:
        assert active.is_connected()
        version = active.version
    # The very browser the chromium launcher on PATH runs, not a download.
    banner = subprocess.run(
        [chromium_path(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"Chromium {version} " in banner


def test_an_inert_page_raises_no_dialog_and_stays_on_its_origin(
    page: Page, page_events: PageEvents
) -> None:
    with serve({"/": INERT}) as site:
        page.goto(site.url("/"))
        assert page.title() == "inert"
    page_events.assert_inert(site.origin)
    assert page_events.dialogs == []
    assert page_events.requests == [site.url("/")]


def test_a_script_that_alerts_is_recorded_and_its_dialogs_dismissed(
    page: Page, page_events: PageEvents
) -> None:
    with serve({"/": ALERTING}) as site:
        page.goto(site.url("/"))
        # Both dialogs were dismissed (confirm() answered false), so the
        # script ran on to its end instead of hanging.
        assert page.title() == "after alert, confirm: false"
    assert [(d.type, d.message) for d in page_events.dialogs] == [
        ("alert", "1"),
        ("confirm", "sure?"),
    ]
    with pytest.raises(AssertionError, match=r"dialog: alert '1'"):
        page_events.assert_inert(site.origin)


def test_a_request_to_another_loopback_origin_is_recorded_as_leaving(
    page: Page, page_events: PageEvents
) -> None:
    with serve({}) as elsewhere, serve({}) as home:
        home.pages["/"] = f"<!doctype html><img src={elsewhere.url('/x')}>"
        page.goto(home.url("/"))
    # The second server really was asked, and the record says so.
    assert elsewhere.hits == ["/x"]
    assert page_events.requests == [home.url("/"), elsewhere.url("/x")]
    assert page_events.requests_leaving(home.origin) == [elsewhere.url("/x")]
    assert page_events.requests_leaving(elsewhere.origin) == [home.url("/")]
    with pytest.raises(AssertionError, match=r"request off http://127\.0\.0\.1:\d+: "):
        page_events.assert_inert(home.origin)


def test_console_messages_and_uncaught_errors_are_recorded(
    page: Page, page_events: PageEvents
) -> None:
    script = "console.log('hello', 42); console.error('bad'); throw new TypeError('boom')"
    with serve({"/": f"<script>{script}</script>"}) as site:
        page.goto(site.url("/"))
    assert [(c.type, c.text, c.url) for c in page_events.console] == [
        ("log", "hello 42", site.url("/")),
        ("error", "bad", site.url("/")),
    ]
    assert page_events.page_errors == ["TypeError: boom"]


def test_popups_and_websockets_are_recorded_too(browser: Browser) -> None:
    events = PageEvents()
    with serve({}) as elsewhere, serve({}) as home:
        home.pages["/"] = "<p>home</p>"
        home.pages["/popup"] = "<script>alert('from the popup')</script>"
        ws = elsewhere.origin.replace("http:", "ws:") + "/socket"
        with recorded_page(browser, events, base_url=home.origin) as page:
            page.goto("/")
            with page.expect_popup() as popup:
                page.evaluate("window.open('/popup')")
            popup.value.wait_for_load_state()
            page.evaluate(f"new WebSocket({ws!r})")
            page.wait_for_timeout(200)
    assert events.dialogs[0].message == "from the popup"
    assert ws in events.requests
    assert events.requests_leaving(home.origin) == [ws]


def test_no_event_loop_is_left_running_between_browser_tests(
    browser_session: BrowserSession,
) -> None:
    # The browser is up (an earlier test or this fixture launched it), and
    # this test does not hold it: asyncio must see no running loop.
    async def answer() -> int:
        return 42

    assert asyncio._get_running_loop() is None
    assert asyncio.run(answer()) == 42
    assert anyio.run(answer) == 42
    with browser_session.active() as active:
        assert asyncio._get_running_loop() is not None
        context = active.new_context()
        context.close()
    assert asyncio.run(answer()) == 42


def test_origins_are_compared_by_scheme_host_and_port() -> None:
    assert origin_of("http://127.0.0.1/x") == "http://127.0.0.1:80"
    assert origin_of("HTTPS://Panel.Local/") == "https://panel.local:443"
    assert origin_of("ws://127.0.0.1:8443/s") == origin_of("http://127.0.0.1:8443")
    assert origin_of("blob:http://[::1]:8/uuid") == "http://[::1]:8"
    events = PageEvents(
        requests=[
            "http://127.0.0.1:8443/",
            "data:image/png;base64,AAAA",
            "about:blank",
            "blob:http://127.0.0.1:8443/0d3e",
            "http://127.0.0.1:8444/",
            "https://127.0.0.1:8443/",
        ]
    )
    assert events.requests_leaving("http://127.0.0.1:8443") == [
        "http://127.0.0.1:8444/",
        "https://127.0.0.1:8443/",
    ]


def test_screenshots_go_to_the_artefacts_directory(
    page: Page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ARTEFACTS_ENV, str(tmp_path / "artefacts"))
    page.set_content("<h1>hello</h1>")
    path = save_screenshot(page, "tests/unit/x.py::test_y[a b]")
    assert path == tmp_path / "artefacts" / "tests_unit_x.py_test_y_a_b.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_a_missing_chromium_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserMissingError, match=r"bash scripts/bootstrap\.sh --with-test-tools"):
        chromium_path()


FAILING_BROWSER_TEST = """
def test_fails(page):
    page.set_content("<h1>what the test saw</h1>")
    assert False, "on purpose"
"""


def test_a_failing_browser_test_leaves_a_screenshot(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An inner run of its own (its own Playwright and chromium), under the
    # suite's rules: warnings are errors, and pytest-timeout is armed.
    artefacts = pytester.path / "artefacts"
    monkeypatch.setenv(ARTEFACTS_ENV, str(artefacts))
    # The fixtures imported into a conftest: how a suite without
    # tests/conftest.py's pytest_plugins line would take them.
    pytester.makeconftest(
        "from tests.support.browser import browser, browser_session, page, page_events\n"
    )
    pytester.makepyfile(test_inner=FAILING_BROWSER_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error", "--timeout=120")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: on purpose*"])
    (shot,) = artefacts.iterdir()
    assert shot.name == "test_inner.py_test_fails.png"
    assert shot.read_bytes().startswith(b"\x89PNG")
