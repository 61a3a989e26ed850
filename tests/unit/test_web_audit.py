"""The audit page (web/routes/audit.py, web/audit_check.py,
AuditLog.search): admin only, newest first in pages, filters, the chain's
verification on top, and claw-supplied details shown inert."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from appliance.store import AuditQuery
from tests.support.panel import ORIGIN, Harness
from web import audit_check

POST = {"Origin": ORIGIN}


def _admin(panel: Harness) -> tuple[TestClient, str]:
    panel.add_user("mum", "admin")
    client = panel.client()
    return client, panel.login(client, "mum")


def _seqs(html: str) -> list[int]:
    return [int(s) for s in re.findall(r'<tr id="audit-(\d+)">', html)]


def test_members_get_403_on_the_audit_routes(panel: Harness) -> None:
    panel.add_user("bob", "member")
    client = panel.client()
    csrf = panel.login(client, "bob")
    assert client.get("/audit").status_code == 403
    assert client.post("/audit/verify", data={"csrf": csrf}, headers=POST).status_code == 403


def test_verify_needs_the_csrf_token(panel: Harness) -> None:
    client, _ = _admin(panel)
    assert client.post("/audit/verify", headers=POST).status_code == 403


def test_newest_first_a_hundred_a_page(panel: Harness) -> None:
    client, _ = _admin(panel)
    for i in range(150):
        panel.store.audit.append("controller", "claw.start", f"c{i % 3}", {"n": i})
    last = panel.store.audit.last_seq()
    first = client.get("/audit").text
    assert _seqs(first) == list(range(last, last - 100, -1))
    older = re.search(r'href="(/audit\?[^"]*before_seq=\d+)"', first)
    assert older
    second = client.get(older.group(1).replace("&amp;", "&")).text
    assert _seqs(second) == list(range(last - 100, 0, -1))[:100]
    assert 'href="/audit?' in second and "Newest" in second


def test_filters(panel: Harness) -> None:
    client, _ = _admin(panel)
    log = panel.store.audit
    log.append("claw:alice", "approval.request", "alice", {})
    log.append("admin:mum", "settings.budget", "alice", {})
    log.append("admin:mum", "settings.llm_provider", "main", {})
    log.append("controller", "claw.start", "bob", {})

    def shown(**params: str) -> list[str]:
        html = client.get("/audit", params=params).text
        return [log.search(AuditQuery(before_seq=s + 1), 1)[0].action for s in _seqs(html)]

    assert shown(action="settings.") == ["settings.llm_provider", "settings.budget"]
    assert shown(actor="claw:alice") == ["approval.request"]
    assert shown(target="alice") == ["settings.budget", "approval.request"]
    assert shown(target="alice", actor="admin:mum") == ["settings.budget"]
    # A prefix is a prefix, not a LIKE pattern.
    assert shown(action="settings%") == [] and shown(action="settings_") == []
    today = datetime.now(UTC).date()
    assert "claw.start" in shown(since=str(today), until=str(today))
    assert shown(since=str(today + timedelta(days=1))) == []
    assert shown(until=str(today - timedelta(days=1))) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [({"since": "yesterday"}, "from must be a date"), ({"before_seq": "1 OR 1"}, "whole number")],
)
def test_bad_filters_are_400(panel: Harness, params: dict[str, str], message: str) -> None:
    client, _ = _admin(panel)
    response = client.get("/audit", params=params)
    assert response.status_code == 400 and message in response.text


def test_hostile_details_are_inert(panel: Harness) -> None:
    client, _ = _admin(panel)
    panel.store.audit.append(
        "claw:alice", "approval.request", "alice",
        {"why": "<script>alert(1)</script>\u202e\x1b[31m", "<img src=x onerror=alert(1)>": 1},
    )  # fmt: skip
    html = client.get("/audit").text
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\u202e" not in html and "\\u202e" in html


def test_a_tampered_row_shows_the_chain_broken(panel: Harness) -> None:
    client, _ = _admin(panel)
    assert "Chain verified: ok" in client.get("/audit").text
    db = panel.store.db
    db.executescript("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
    db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
    html = client.get("/audit").text
    assert "Chain broken" in html and "Chain verified: ok" not in html
    assert re.search(r"<li>[^<]*\b1\b[^<]*</li>", html)  # the problem names the row


def test_a_big_log_is_verified_on_request(panel: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_check, "AUTO_VERIFY_ROWS", 0)
    client, csrf = _admin(panel)
    page = client.get("/audit").text
    assert "has not been verified since the panel started" in page
    done = client.post("/audit/verify", data={"csrf": csrf}, headers={**POST, "HX-Request": "true"})
    assert done.status_code == 200 and "Chain verified: ok" in done.text
    # The result is kept (not re-run) and says how much of the log it covered.
    panel.store.audit.append("controller", "claw.start", "c", {})
    assert "1 newer entries not covered" in client.get("/audit").text
