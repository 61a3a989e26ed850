"""`clawden user add|list|rm|passwd|totp` in-process on a real SQLite home."""

from __future__ import annotations

import io
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.accounts import totp
from appliance.accounts.credentials import Passwords
from appliance.cli import main
from appliance.config import Settings
from appliance.store import Store, open_db
from tests.unit.test_schedule_store import add_claw

PASSWORD = "correct horse battery"


@pytest.fixture
def home(home: Path) -> Path:
    db = open_db(Settings.from_env().db_path)
    add_claw(db, "alice")
    db.close()
    return home


def _add_admin(password_file: Path) -> None:
    assert (
        main(["user", "add", "mum", "--role", "admin", "--password-file", str(password_file)]) == 0
    )


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw"
    path.write_text(PASSWORD + "\n")
    return path


def store() -> Store:
    settings = Settings.from_env()
    return Store.open(settings.db_path, audit_head=settings.audit_head_path)


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0]
    return lines[0]


def test_add_list_passwd_rm(
    home: Path, password_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["user", "add", "mum", "--role", "admin", "--password-file", str(password_file)]
    assert main(argv) == 0
    assert "added admin mum" in capsys.readouterr().out
    argv = ["user", "add", "kid", "--member-of", "alice", "--password-file", str(password_file)]
    assert main(argv) == 0
    assert main(["user", "list"]) == 0
    out = capsys.readouterr().out
    assert "mum" in out and "kid" in out and "alice" in out and PASSWORD not in out

    new = tmp_path / "new"
    new.write_text("a brand new password\n")
    assert main(["user", "passwd", "kid", "--password-file", str(new)]) == 0
    s = store()
    try:
        stored = s.users.password_hash("kid")
        assert Passwords().verify(stored, "a brand new password")
        entries = s.audit.entries()
        assert [e.action for e in entries] == ["user.add", "user.add", "user.passwd"]
        assert {e.actor for e in entries} == {"root@cli"}
        assert all(PASSWORD not in str(e.details) for e in entries)
    finally:
        s.db.close()
    assert main(["user", "rm", "kid"]) == 0
    assert "removed kid" in capsys.readouterr().out
    assert main(["user", "list"]) == 0
    assert "kid" not in capsys.readouterr().out


def test_password_from_stdin(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["user", "add", "mum", "--role", "admin", "--password-file", "-"]) == 0


@pytest.mark.parametrize(
    ("argv", "expected", "code"),
    [
        (["user", "add", "Mum", "--password-file", "PW"], "invalid user name 'Mum'", 2),
        (["user", "add", "kid", "--member-of", "nobody", "--password-file", "PW"], "no claw", 2),
        (["user", "add", "kid", "--password-file", "/nonexistent"], "cannot read", 2),
        (["user", "add", "kid", "--password-file", "SHORT"], "at least 10", 2),
        (["user", "add", "kid"], "pass --password-file", 2),
        (["user", "passwd", "nobody", "--password-file", "PW"], "no user named", 2),
        (["user", "rm", "nobody"], "no user named", 2),
        (["user", "totp", "nobody", "--uri-file", "URI"], "no user named", 2),
        (["user", "totp", "mum"], "--uri-file PATH", 2),
        (["user", "totp", "mum", "--confirm", "123456"], "no TOTP enrolment waiting", 3),
    ],
)
def test_bad_input_is_one_line_and_loses_nothing(
    home: Path,
    password_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
    code: int,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    _add_admin(password_file)
    capsys.readouterr()
    short = tmp_path / "short"
    short.write_text("tiny\n")
    subst = {"PW": str(password_file), "SHORT": str(short), "URI": str(tmp_path / "uri")}
    before = store()
    try:
        users, audit = before.users.list(), before.audit.entries()
    finally:
        before.db.close()
    assert main([subst.get(a, a) for a in argv]) == code
    line = one_error(capsys)
    assert expected in line and PASSWORD not in line and "tiny" not in line
    after = store()
    try:
        assert (after.users.list(), after.audit.entries()) == (users, audit)
    finally:
        after.db.close()


def test_totp_enrolment_through_a_0600_uri_file_then_confirm(
    home: Path, password_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_admin(password_file)
    uri_file = tmp_path / "mum.uri"
    uri_file.write_text("old")
    os.chmod(uri_file, 0o644)  # an existing file is tightened, not trusted
    assert main(["user", "totp", "mum", "--uri-file", str(uri_file)]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(uri_file.stat().st_mode) == 0o600
    uri = uri_file.read_text().strip()
    assert uri.startswith("otpauth://totp/clawden:mum?") and "issuer=clawden" in uri
    secret = uri.split("secret=")[1].split("&")[0]
    assert secret not in out and "█" not in out and "▀" not in out  # no QR into a pipe

    assert main(["user", "totp", "mum", "--confirm", "000000"]) == 2
    assert "does not match" in one_error(capsys)
    code = totp.code_at(secret, datetime.now(UTC))
    assert main(["user", "totp", "mum", "--confirm", code]) == 0
    out = capsys.readouterr().out
    codes = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert len(codes) == 10 and "TOTP is on for mum" in out
    s = store()
    try:
        assert s.users.require("mum").totp_active
        assert not any(c in str(list(s.db["recovery_codes"].rows)) for c in codes)
        actions = [e.action for e in s.audit.entries()]
        assert actions == ["user.add", "user.totp_enrol", "user.totp_confirm"]
        assert secret not in str([e.details for e in s.audit.entries()])
    finally:
        s.db.close()
    assert main(["user", "list"]) == 0
    assert " on " in capsys.readouterr().out


def test_a_uri_file_that_cannot_be_written_keeps_the_active_secret(
    home: Path, password_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _add_admin(password_file)
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main(["user", "totp", "mum", "--uri-file", str(link)]) == 2
    assert "cannot write" in one_error(capsys)
    assert target.read_text() == ""


def test_on_a_terminal_the_uri_is_drawn_as_a_qr_code_only(
    home: Path,
    password_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _add_admin(password_file)
    capsys.readouterr()
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(["user", "totp", "mum"]) == 0
    out = capsys.readouterr().out
    assert "otpauth://" not in out and "secret=" not in out
    assert len(out.splitlines()) > 10  # the QR code's rows
    assert "then: clawden user totp mum --confirm CODE" in out
