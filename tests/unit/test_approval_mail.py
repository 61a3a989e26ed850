"""The e-mail to the admin about a pending approval (appliance/services/
approval_mail.py): sent through a real SMTP dialogue to a sink on loopback
when smtp.toml exists, only for requests left for a person, with the
request's text made visible and no way to decide it from the mail."""

from __future__ import annotations

import email
import json
import logging
import time
from email.policy import default
from pathlib import Path

import pytest

from appliance.channel.forwarding import ClawIdentity
from appliance.core.errors import InvalidInput
from appliance.services.approval_mail import ApprovalMailer, load_smtp
from appliance.services.hostapi import host_api_service
from appliance.services.http import HttpRequest
from appliance.store import Store
from tests.support.panel import Harness
from tests.support.smtp_sink import smtp_sink

HOSTILE = "send 'hi' to grandma\u202e moc.live@ <script>alert(1)</script>\u200b"


def _smtp_toml(home: Path, port: int, extra: str = "") -> None:
    (home / "smtp.toml").write_text(
        f'host = "127.0.0.1"\nport = {port}\nstarttls = false\n'
        'sender = "clawden@home.test"\nto = ["mum@home.test"]\n'
        'panel_url = "http://127.0.0.1:7780/"\n' + extra
    )


def _ask(store: Store, mailer: ApprovalMailer, action: str, claw: str = "alice") -> str:
    api = host_api_service(store, notify=mailer)
    body = json.dumps({"action": action, "details": HOSTILE, "timeout_s": 300}).encode()
    response = api.dispatch(ClawIdentity(claw), HttpRequest("POST", "/v1/approvals", {}, body))
    assert response.status == 201, response.body
    return str(json.loads(response.body)["status"])


def test_a_pending_request_mails_the_admin(panel: Harness) -> None:
    panel.add_claw("alice")
    with smtp_sink() as sink:
        _smtp_toml(panel.home, sink.port)
        assert _ask(panel.store, ApprovalMailer(panel.home), "message.send") == "pending"
        assert sink.arrived.wait(10)
    [received] = sink.messages
    assert received.recipients == ["<mum@home.test>"]
    mail = email.message_from_bytes(received.data, policy=default)
    assert mail["Subject"] == "clawden: alice asks to message.send"
    text = mail.get_content()
    # The claw's own words, escapes visible; a link to the panel, nothing to click to approve.
    assert "\\u202e moc.live@ <script>alert(1)</script>\\u200b" in text
    assert "\u202e" not in text and "\u200b" not in text
    assert "http://127.0.0.1:7780/approvals" in text and "fresh code" in text


def test_no_mail_for_what_the_policy_decides_or_without_smtp(panel: Harness) -> None:
    panel.add_claw("alice")
    panel.store.policy.set("alice", "message.send", "deny", "root@cli", panel.clock.now)
    with smtp_sink() as sink:
        _smtp_toml(panel.home, sink.port)
        assert _ask(panel.store, ApprovalMailer(panel.home), "message.send") == "denied"
        (panel.home / "smtp.toml").unlink()
        assert _ask(panel.store, ApprovalMailer(panel.home), "skill.install") == "pending"
        assert not sink.arrived.wait(1)
    assert sink.messages == []


def test_a_mail_server_that_is_down_is_a_warning_and_the_claw_still_gets_its_answer(
    panel: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    panel.add_claw("alice")
    with smtp_sink() as sink:
        port = sink.port
    _smtp_toml(panel.home, port, 'username = "u"\npassword = "pw-canary-123"\n')
    (panel.home / "smtp.toml").chmod(0o600)
    mailer = ApprovalMailer(panel.home)
    with caplog.at_level(logging.INFO):
        assert _ask(panel.store, mailer, "message.send") == "pending"
        for record in list(caplog.records):
            assert "pw-canary-123" not in record.getMessage()
    # The sending thread fails at the closed port: its warning names no password.
    deadline = time.monotonic() + 10
    while not any("failed" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all("pw-canary-123" not in r.getMessage() for r in caplog.records)


def test_bad_settings_are_clear_errors(tmp_path: Path) -> None:
    assert load_smtp(tmp_path) is None
    (tmp_path / "smtp.toml").write_text('host = "x"\n')
    with pytest.raises(InvalidInput, match="needs host, sender and to"):
        load_smtp(tmp_path)
    (tmp_path / "smtp.toml").write_text(
        'host = "x"\nsender = "a@b"\nto = "c@d"\npassword = "secret-pw"\n'
    )
    (tmp_path / "smtp.toml").chmod(0o644)
    with pytest.raises(InvalidInput, match="other users can read it") as refused:
        load_smtp(tmp_path)
    assert "secret-pw" not in str(refused.value)
    (tmp_path / "smtp.toml").chmod(0o600)
    settings = load_smtp(tmp_path)
    assert settings is not None and settings.to == ("c@d",)
    assert "secret-pw" not in repr(settings)
