"""Installing a skill from the claw page: an admin, a fresh TOTP code, an
archive checked like `clawden skill add` checks one, and the copy through
``ClawOps.put_tree`` (the fake records what reached the claw)."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from appliance.core.errors import InvalidInput, Unavailable
from appliance.core.model import ClawState
from appliance.workspace.skill_install import staging
from appliance.workspace.skills import SkillLimits, prepare_skill
from tests.support.panel import ORIGIN, Harness

HOSTILE = (
    "<script>alert(1)</script> <img src=x onerror=alert(2)> flip \u202eevil\u202c zero\u200bwidth"
)
SKILL_MD = f"---\nname: hello\ndescription: {HOSTILE}\n---\n\n# Hello\n\nSay hello.\n".encode()
NOTES = b"remember the milk\n" * 20
HOSTILE_NAME = "<svg onload=alert(3)>.tgz"


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


GOOD = _tar([("hello/SKILL.md", SKILL_MD), ("hello/notes.txt", NOTES)])


@pytest.fixture
def home(panel: Harness) -> Harness:
    """Alice's and bob's claws, the admin mum, alice (owner) and bob."""
    panel.add_claw("alice")
    panel.add_claw("bob")
    panel.add_user("mum", "admin")
    panel.add_user("alice", "member", ("alice",), with_totp=False)
    panel.add_user("bob", "member", ("bob",), with_totp=False)
    return panel


def _post(
    client: TestClient,
    csrf: str | None,
    code: str,
    archive: bytes = GOOD,
    *,
    claw: str = "alice",
    filename: str = "hello.tgz",
    htmx: bool = True,
) -> Response:
    headers = {"Origin": ORIGIN}
    if htmx:
        headers["HX-Request"] = "true"
    data = {"code": code}
    if csrf is not None:
        data["csrf"] = csrf  # the form's hidden field, as a browser sends it
    files = {"archive": (filename, archive, "application/gzip")}
    return client.post(f"/claws/{claw}/skills", data=data, files=files, headers=headers)


def _actions(home: Harness) -> list[str]:
    return [e.action for e in home.store.audit.entries()]


def _nothing_installed(home: Harness) -> None:
    assert home.claws.copied == []
    assert home.store.skills.list() == []
    assert "skill.add" not in _actions(home)
    staging = home.home / "tmp"
    assert not staging.exists() or list(staging.iterdir()) == []  # staging removed


def test_the_admin_installs_with_a_fresh_code(home: Harness, tmp_path: Path) -> None:
    client = home.client()
    csrf = home.login(client, "mum")
    response = _post(client, csrf, home.code("mum"), filename=HOSTILE_NAME)
    assert response.status_code == 200, response.text
    (tmp_path / "hello.tgz").write_bytes(GOOD)
    with prepare_skill(None, tmp_path / "hello.tgz") as expected:
        sha = expected.content_hash
    # What reached the claw: the skill's files, the wrapping folder stripped.
    assert home.claws.copied == [
        ("alice", "skills/hello", "replace", {"SKILL.md": SKILL_MD, "notes.txt": NOTES})
    ]
    recorded = home.store.skills.get("alice", "hello")
    assert recorded is not None and recorded.content_hash == sha
    assert recorded.source == f"uploaded in the panel: {HOSTILE_NAME}"
    added = [e for e in home.store.audit.entries() if e.action == "skill.add"]
    assert len(added) == 1
    assert (added[0].actor, added[0].target) == ("user:mum", "alice")
    assert added[0].details["skill"] == "hello" and added[0].details["sha256"] == sha
    assert sha in response.text and 'id="claw-skills"' in response.text
    assert list((home.home / "tmp").iterdir()) == []
    # Without htmx the browser is sent back to the claw page, which lists it.
    again = _post(client, csrf, home.code("mum"), _zip([("SKILL.md", SKILL_MD)]), htmx=False)
    assert again.status_code == 303 and again.headers["location"] == "/claws/alice"
    assert len(home.claws.copied) == 2
    replaced = home.store.skills.get("alice", "hello")
    assert replaced is not None and replaced.source == "uploaded in the panel: hello.tgz"


def test_hostile_text_from_the_skill_and_the_browser_is_inert(home: Harness) -> None:
    client = home.client()
    csrf = home.login(client, "mum")
    confirmed = _post(client, csrf, home.code("mum"), filename=HOSTILE_NAME).text
    listed = client.get("/claws/alice").text.split("</head>")[-1]
    for html in (confirmed, listed):
        for markup in ("<script>alert", "<img src=x", "<svg onload"):
            assert markup not in html
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)
        assert "&lt;svg onload=alert(3)&gt;.tgz" in html  # the file name, as text
    # The description (SKILL.md's own text) is shown once, as text.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in confirmed
    assert "\u202e" not in confirmed and "\\u202e" in confirmed and "\\u200b" in confirmed


def test_a_replayed_or_wrong_code_is_refused_and_counted(home: Harness) -> None:
    client = home.client()
    csrf = home.login(client, "mum")
    code = home.code("mum")
    assert _post(client, csrf, code).status_code == 200
    replay = _post(client, csrf, code)
    assert replay.status_code == 400 and "already used" in replay.text
    wrong = _post(client, csrf, "000000")
    assert wrong.status_code == 400
    assert len(home.claws.copied) == 1
    failed = [e for e in home.store.audit.entries() if e.action == "skill.totp_failed"]
    assert [(e.details["reason"], e.target) for e in failed] == [
        ("reused", "alice"),
        ("wrong", "alice"),
    ]
    assert len(home.store.sessions.failures("totp", home.clock.now, user="mum")) == 2


def test_lockout_after_repeated_failures(home: Harness) -> None:
    client = home.client()
    csrf = home.login(client, "mum")
    for _ in range(5):
        assert _post(client, csrf, "000000").status_code == 400
    locked = _post(client, csrf, home.code("mum"))
    assert locked.status_code == 403 and "locked after too many failed attempts" in locked.text
    assert home.claws.copied == []
    assert "user.locked_out" in _actions(home)


def test_members_get_not_found_or_forbidden(home: Harness) -> None:
    tries = (("bob", "alice", 404), ("alice", "bob", 404), ("alice", "alice", 403))
    for member, claw, status in tries:
        client = home.client()
        csrf = home.login(client, member)
        assert _post(client, csrf, "123456", claw=claw).status_code == status
    anonymous = _post(home.client(), None, "123456", htmx=False)
    assert anonymous.status_code == 401  # no session: told to log in
    _nothing_installed(home)


def test_without_the_csrf_token_nothing_happens(home: Harness) -> None:
    client = home.client()
    home.login(client, "mum")
    assert _post(client, None, home.code("mum")).status_code == 403
    assert _post(client, "0" * 64, home.code("mum")).status_code == 403
    assert home.claws.copied == [] and home.store.skills.list() == []


def test_a_stopped_claw_is_refused_before_the_code_is_spent(home: Harness) -> None:
    home.store.claws.set_state("alice", ClawState.STOPPED)
    client = home.client()
    csrf = home.login(client, "mum")
    code = home.code("mum")
    refused = _post(client, csrf, code)
    assert refused.status_code == 409 and "files are copied into a running claw" in refused.text
    _nothing_installed(home)
    home.store.claws.set_state("alice", ClawState.RUNNING)
    assert _post(client, csrf, code).status_code == 200  # the code was not spent


def test_a_claw_that_cannot_be_reached_records_nothing(home: Harness) -> None:
    home.claws.errors["alice"] = Unavailable("claw 'alice' has no channel", "retry")
    client = home.client()
    csrf = home.login(client, "mum")
    response = _post(client, csrf, home.code("mum"))
    assert response.status_code == 503 and "no channel" in response.text
    assert home.store.skills.list() == [] and "skill.add" not in _actions(home)


BAD: list[tuple[str, Callable[[], bytes], str]] = [
    ("traversal", lambda: _tar([("SKILL.md", SKILL_MD), ("../x", b"x")]), "path traversal"),
    ("absolute", lambda: _tar([("SKILL.md", SKILL_MD), ("/etc/x", b"x")]), "absolute path"),
    ("symlink", lambda: _tar([("SKILL.md", SKILL_MD), _symlink("x", "/etc/passwd")]), "link"),
    ("zip traversal", lambda: _zip([("SKILL.md", SKILL_MD), ("a/../../x", b"x")]), "traversal"),
    ("no SKILL.md", lambda: _tar([("notes.txt", NOTES)]), "no SKILL.md"),
    ("not an archive", lambda: b"just some text", "neither a folder nor"),
    ("damaged", lambda: GOOD[: len(GOOD) // 2], "damaged"),
    ("too big", lambda: _tar([("SKILL.md", SKILL_MD), ("big", b"\0" * 3000)]), "cap"),
]


@pytest.mark.parametrize(("make", "message"), [pytest.param(m, w, id=i) for i, m, w in BAD])
def test_a_bad_archive_is_refused_and_nothing_installed(
    home: Harness, make: Callable[[], bytes], message: str
) -> None:
    home.panel.skill_limits = SkillLimits(max_file_bytes=2048)
    client = home.client()
    csrf = home.login(client, "mum")
    code = home.code("mum")
    refused = _post(client, csrf, code, make())
    assert refused.status_code == 400 and message in refused.text, refused.text
    _nothing_installed(home)
    assert _post(client, csrf, code).status_code == 200  # refused before the code was spent


def test_an_upload_over_the_cap_is_refused_before_it_is_parsed(home: Harness) -> None:
    home.panel.skill_limits = SkillLimits(max_archive_bytes=4096)
    client = home.client()
    csrf = home.login(client, "mum")
    # Over the archive cap but inside the form's slack: refused as read.
    over = _post(client, csrf, home.code("mum"), GOOD + b"\0" * 8192)
    assert over.status_code == 400 and "over the 4096-byte cap" in over.text
    # Far over: refused from Content-Length alone, even before the CSRF check.
    huge = _post(client, None, home.code("mum"), b"\0" * (200 * 1024))
    assert huge.status_code == 400 and "over the 4096-byte cap" in huge.text
    _nothing_installed(home)


def test_the_form_is_the_admins_only(home: Harness) -> None:
    admin = home.client()
    home.login(admin, "mum")
    html = admin.get("/claws/alice").text
    assert 'enctype="multipart/form-data"' in html and 'action="/claws/alice/skills"' in html
    assert re.search(r'<input type="hidden" name="csrf" value="[0-9a-f]{64}">', html)
    member = home.client()
    home.login(member, "alice")
    assert 'action="/claws/alice/skills"' not in member.get("/claws/alice").text


def test_the_controller_adapter_copies_only_staged_folders(tmp_path: Path) -> None:
    """``ControllerClawOps.put_tree`` is the controller's own ``put_tree``
    op: a folder outside ``tmp/`` is refused before the claw is reached."""
    from appliance.controller.context import Context
    from appliance.controller.daemon import Controller
    from web.controller_ops import COPY_CHANNEL_WAIT, ControllerClawOps

    asked: list[tuple[str, float]] = []

    def transport_for(claw: str, wait: float) -> object:
        asked.append((claw, wait))
        raise Unavailable(f"claw {claw!r} has no channel", "retry")

    controller = SimpleNamespace(transport_for=transport_for)
    ctx = SimpleNamespace(settings=SimpleNamespace(home=tmp_path))
    ops = ControllerClawOps(cast(Controller, controller), cast(Context, ctx))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(InvalidInput, match="not a folder staged"):
        ops.put_tree("alice", tmp_path / "elsewhere", "skills/hello", "replace")
    assert asked == []
    with staging(tmp_path) as stage, pytest.raises(Unavailable):
        ops.put_tree("alice", stage, "skills/hello", "replace")
    assert asked == [("alice", COPY_CHANNEL_WAIT)]
