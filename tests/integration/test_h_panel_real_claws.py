"""The admin panel against real claws: the session's `clawden serve` (the
controller with the panel inside, on a free loopback port), its booted claw
VMs, the scripted model behind the LLM gateway, and Debian's chromium.

1. The admin (made and enrolled with the CLI) logs in with password + TOTP.
2. A real claw, asked to, calls its `request_approval` tool: the request
   travels from the VM over its channel to the host API and shows in the
   inbox, its hostile arguments made visible, the page inert.
3. The admin approves it in the browser with a fresh TOTP code.
4. The claw's agent receives the decision: its tool result says APPROVED
   (the scripted model sees it) and its final reply comes back.

Then a member logs in and chats with their claw: the reply streams into the
page from the VM.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from appliance.accounts import totp
from tests.integration.conftest import Env, RunningController, scripted_llm
from tests.support.browser import PageEvents, save_screenshot

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
DETAILS = (
    "Send 'see you at 6' to grandma <script>alert('x')</script>"
    " <img src=x onerror=alert('y')> via\u202e moc.evil\u200b"
)


REPLY = "Today: **swimming** at 4, then homework. <img src=x onerror=alert(1)>"


class Authenticator:
    """The admin's phone: codes from the enrolled secret, each from a time
    step later than the last one used (a code works once)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.last_step = totp.step_at(datetime.now(UTC))  # the one enrolment used

    def fresh_code(self) -> str:
        while totp.step_at(datetime.now(UTC)) <= self.last_step:
            time.sleep(0.5)
        now = datetime.now(UTC)
        self.last_step = totp.step_at(now)
        return totp.code_at(self.secret, now)


def _add_user(env: Env, tmp_path: Path, name: str, *args: str) -> None:
    password_file = tmp_path / f"{name}.password"
    password_file.write_text(PASSWORD + "\n")
    env.run("user", "add", name, *args, "--password-file", str(password_file))


def _enrol(env: Env, tmp_path: Path, name: str) -> Authenticator:
    uri_file = tmp_path / f"{name}.uri"
    env.run("user", "totp", name, "--uri-file", str(uri_file))
    secret = uri_file.read_text().split("secret=")[1].split("&")[0]
    env.run("user", "totp", name, "--confirm", totp.code_at(secret, datetime.now(UTC)))
    return Authenticator(secret)


def _log_in(page: Page, url: str, name: str, code: str = "") -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=code]", code)
    page.click("button[type=submit]")
    expect(page.locator(".who")).to_contain_text(name)


def test_the_admin_approves_a_real_claws_request_in_the_browser(
    clawden_env: Env,
    two_claws: tuple[str, str],
    controller: RunningController,
    page: Page,
    page_events: PageEvents,
    tmp_path: Path,
) -> None:
    url = controller.panel_url
    _add_user(clawden_env, tmp_path, "mum", "--role", "admin")
    phone = _enrol(clawden_env, tmp_path, "mum")
    scenario = {
        "models": ["tiny"],
        "steps": [
            {
                "name": "ask first",
                "match": {"last_user_contains": "grandma"},
                "reply": {
                    "tool_calls": [
                        {
                            "name": "request_approval",
                            "arguments": {
                                "action": "message.send",
                                "details": DETAILS,
                                "timeout_s": 600,
                            },
                        }
                    ]
                },
            },
            {
                "name": "tell",
                "match": {"last_role": "tool"},
                "reply": {"content": "Mum said yes: the message is on its way."},
            },
        ],
    }
    with scripted_llm(clawden_env, scenario) as upstream:
        say = clawden_env.popen(
            "claw", "say", "alice", "tell grandma I'll be there at 6", "--timeout", "900"
        )
        try:
            _log_in(page, url, "mum", phone.fresh_code())
            # The claw's request reaches the inbox (the badge polls every 5 s).
            page.goto(f"{url}/approvals")
            request = page.locator("article.approval").filter(has_text="message.send")
            deadline = time.monotonic() + 600
            while request.count() == 0:
                assert say.poll() is None, f"claw say ended early: {say.communicate()}"
                assert time.monotonic() < deadline, "the claw's request never reached the inbox"
                time.sleep(2)
                page.reload()
            details = request.locator("pre.details")
            expect(details).to_contain_text("via\\u202e moc.evil\\u200b")
            expect(details).to_contain_text("<script>alert('x')</script>")
            expect(request).to_contain_text("alice asks")
            save_screenshot(page, "panel-real-claw-inbox")
            page_events.assert_inert(url)

            request.locator("input[name=code]").fill(phone.fresh_code())
            request.locator("button[value=approve]").click()
            expect(page.locator("article.approval").filter(has_text="message.send")).to_have_count(
                0
            )
            out, err = say.communicate(timeout=600)
        finally:
            if say.poll() is None:
                say.kill()
                say.communicate()
        assert say.returncode == 0, err
        assert "Mum said yes" in out
        # The claw's agent got the decision: its tool result, as the model saw it.
        chats = [r for r in upstream.requests if r["path"] == "/v1/chat/completions"]
        tool_results = [
            m["content"] for m in chats[-1]["body"]["messages"] if m.get("role") == "tool"
        ]
        assert any("APPROVED" in str(t) for t in tool_results), tool_results
    audit = clawden_env.run("audit", "list", "--limit", "50").stdout
    assert "approval.approve" in audit and "user:mum" in audit


def test_a_member_chats_with_their_real_claw_and_sees_the_reply_stream(
    clawden_env: Env,
    two_claws: tuple[str, str],
    controller: RunningController,
    page: Page,
    page_events: PageEvents,
    tmp_path: Path,
) -> None:
    url = controller.panel_url
    _add_user(clawden_env, tmp_path, "ana", "--member-of", "alice")
    scenario = {
        "models": ["tiny"],
        "steps": [
            {
                "name": "answer",
                "match": {"last_user_contains": "today"},
                "reply": {"content": REPLY},
            }
        ],
    }
    with scripted_llm(clawden_env, scenario):
        _log_in(page, url, "ana")
        page.goto(f"{url}/claws/alice/chat")
        page.fill("#chat-form textarea[name=text]", "what's on today?")
        page.click("#chat-form button[type=submit]")
        log = page.locator("#chat-log")
        expect(log).to_contain_text("swimming", timeout=600_000)
        # The stored reply replaces the stream, rendered by the server.
        expect(log.locator(".msg-pending")).to_have_count(0, timeout=60_000)
        expect(log.locator("strong")).to_contain_text("swimming")
        assert log.locator("img").count() == 0
        save_screenshot(page, "panel-real-claw-chat")
        page_events.assert_inert(url)
    # Both sides are stored, the message under the member's own name.
    messages = clawden_env.run("claw", "messages", "alice", "--limit", "2").stdout
    assert "what's on today?" in messages and "swimming" in messages
    # bob is not ana's: the panel says no such claw.
    response = page.request.get(f"{url}/claws/bob/chat")
    assert response.status == 404
