"""clawden serve as a service: its log (INFO, to the file and, under
systemd, to the journal with priorities), what it tells its operator, the
setup link kept out of the journal, and the doctor's panel and service checks."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from appliance import app
from appliance.accounts.service import Accounts
from appliance.cli import doctor, main
from appliance.config import Settings
from appliance.store import Store
from web import setup_link
from web.ports import FakeClawOps
from web.security import CSP
from web.server import Listen, PanelServer


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home", libvirt_uri="test:///default")
    s.ensure_dirs()
    return s


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    logger = logging.Logger("test.always_on", logging.WARNING)
    yield logger
    for handler in logger.handlers:
        handler.close()
    app.SAID.handlers.clear()


def _journal_env(stream: io.TextIOWrapper) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_the_file_gets_info_and_what_the_controller_told_its_operator(
    settings: Settings, root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    app.controller_logging(settings, root, stderr=io.StringIO())
    assert root.level == logging.INFO
    root.info("channel to alice ready")
    root.debug("chatter")
    app.controller_say("reconciled: restarted 2")
    for handler in root.handlers:
        handler.flush()
    text = settings.controller_log.read_text()
    assert "INFO test.always_on: channel to alice ready" in text
    assert "INFO appliance.controller.said: reconciled: restarted 2" in text
    assert "chatter" not in text
    assert capsys.readouterr().out == "reconciled: restarted 2\n"
    # httpx would log each request's full URL (a provider URL may hold a password).
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING


def test_stderr_to_the_journal_carries_priorities(
    settings: Settings, root: logging.Logger, tmp_path: Path
) -> None:
    with (tmp_path / "journal").open("w+") as journal:
        app.controller_logging(settings, root, stderr=journal, env=_journal_env(journal))
        root.warning("libvirt slow")
        root.info("channel to bob ready")
        try:
            raise ValueError("boom")
        except ValueError:
            root.exception("handler failed")
        journal.seek(0)
        lines = journal.read().splitlines()
    assert lines[0] == "<4>test.always_on: libvirt slow"
    assert lines[1] == "<6>test.always_on: channel to bob ready"
    assert lines[2] == "<3>test.always_on: handler failed"
    # Each traceback line is a journal entry of its own: each gets the priority.
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[2:])


def test_stderr_elsewhere_is_plain(
    settings: Settings, root: logging.Logger, tmp_path: Path
) -> None:
    with (tmp_path / "terminal").open("w+") as terminal, (tmp_path / "j").open("w") as other:
        # JOURNAL_STREAM names another stream (a redirect in between): plain.
        app.controller_logging(settings, root, stderr=terminal, env=_journal_env(other))
        root.warning("libvirt slow")
        terminal.seek(0)
        assert terminal.read() == "libvirt slow\n"
    assert not app.journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


# --- the setup link never goes to the journal ---------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_service_panel_makes_no_setup_link_and_says_how_to_get_one(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "clawden.db", audit_head=tmp_path / "audit.head")
    server = PanelServer(store, tmp_path, FakeClawOps(), Listen("127.0.0.1", _free_port()))
    try:
        lines = server.start(show_setup_link=False)
    finally:
        server.stop()
    assert "/setup/" not in "\n".join(lines)
    assert "clawden panel setup-link" in "\n".join(lines)
    assert not (tmp_path / "panel" / "setup-token").exists()


def test_panel_setup_link_prints_the_address_and_a_working_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CLAWDEN_HOME", str(home))
    monkeypatch.setenv("CLAWDEN_LIBVIRT_URI", "test:///default")
    home.joinpath("run").mkdir(parents=True)
    (home / "run" / "panel.url").write_text("https://192.168.1.20:7780\n")
    assert main(["panel", "setup-link"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "panel: https://192.168.1.20:7780/"
    token = out[1].split("/setup/", 1)[1]
    assert setup_link.matches(home, token)
    # Again: a new link, and the first one is dead.
    assert main(["panel", "setup-link"]) == 0
    assert not setup_link.matches(home, token)
    capsys.readouterr()
    # With an admin there is nothing to set up: where to sign in, no link.
    store = app.open_store(Settings.from_env())
    Accounts(store).add("root", "admin", "correct horse battery staple", (), actor="test")
    assert main(["panel", "setup-link"]) == 0
    said = capsys.readouterr().out
    assert "/setup/" not in said and "sign in at https://192.168.1.20:7780/login" in said


# --- doctor --------------------------------------------------------------------


class _Panelish(BaseHTTPRequestHandler):
    csp = CSP

    def do_GET(self) -> None:  # noqa: N802 — http.server's name
        self.send_response(200 if self.path == "/login" else 404)
        self.send_header("Content-Security-Policy", self.csp)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def local_server() -> Iterator[tuple[str, type[_Panelish]]]:
    handler = type("Handler", (_Panelish,), {})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_doctor_finds_the_panel_answering_with_our_csp(
    settings: Settings, local_server: tuple[str, type[_Panelish]]
) -> None:
    url, handler = local_server
    (settings.run_dir / "panel.url").write_text(url + "\n")
    check = doctor._panel(settings)
    assert check.ok and check.detail == f"{url}/ answers"
    handler.csp = "default-src *"  # someone else's server on that port
    check = doctor._panel(settings)
    assert not check.ok and not check.blocking
    assert "without clawden's CSP" in check.detail


def test_doctor_notes_a_panel_that_does_not_answer(settings: Settings) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    (settings.run_dir / "panel.url").write_text(url + "\n")
    check = doctor._panel(settings)
    assert not check.ok and not check.blocking
    assert check.detail.startswith(f"{url} does not answer")
    (settings.run_dir / "panel.url").unlink()
    assert "--no-panel" in doctor._panel(settings).fix


def test_doctor_service_check(tmp_path: Path) -> None:
    systemd = tmp_path / "systemd"
    # No systemd: nothing to check, but the operator learns what a reboot means.
    check = doctor._service(systemd, lambda unit: pytest.fail("systemctl asked"))
    assert check.ok and "scripts/up.sh" in check.detail
    systemd.mkdir()
    asked: list[str] = []

    def enabled(unit: str) -> str:
        asked.append(unit)
        return "enabled"

    check = doctor._service(systemd, enabled)
    assert check.ok and asked == ["clawden.service"]
    check = doctor._service(systemd, lambda unit: "disabled")
    assert not check.ok and not check.blocking
    assert "disabled" in check.detail and "clawden host provision" in check.fix


def test_serve_treats_stdout_under_a_service_as_a_log(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.cli import controller

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert not controller._stdout_is_a_log()  # a terminal or a file: the link is printed
    # systemd may name only stderr's stream: its presence is enough.
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert controller._stdout_is_a_log()
