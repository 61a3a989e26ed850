"""The panel served for real by uvicorn (web/server.py): on loopback over
plain HTTP, on any other address over TLS with a self-signed certificate
made on first use, and `--listen` parsing."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.core.errors import InvalidInput, Unavailable
from appliance.store import Store
from tests.support.panel import free_port
from web import setup_link
from web.ports import FakeClawOps
from web.server import Listen, PanelServer, csrf_key, parse_listen


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "clawden.db", audit_head=tmp_path / "audit.head")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1", "127.0.0.1", 7780),
        ("192.168.1.20:8443", "192.168.1.20", 8443),
        ("[::1]:9000", "::1", 9000),
        ("::1", "::1", 7780),
        ("localhost:81", "localhost", 81),
    ],
)
def test_parse_listen(text: str, host: str, port: int) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port) == (host, port)


@pytest.mark.parametrize("text", ["panel.example", "1.2.3.4:0", "1.2.3.4:http", "[::1]:99999"])
def test_parse_listen_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_listen(text)


def test_only_loopback_goes_without_tls() -> None:
    assert not Listen("127.0.0.1", 1).tls and not Listen("::1", 1).tls
    assert Listen("192.168.1.20", 1).tls and Listen("0.0.0.0", 1).tls
    assert Listen("192.168.1.20", 7780).url == "https://192.168.1.20:7780"


def test_serves_on_loopback_and_prints_a_setup_link_once(tmp_path: Path, store: Store) -> None:
    port = free_port()
    server = PanelServer(store, tmp_path, FakeClawOps(), Listen("127.0.0.1", port))
    lines = server.start()
    try:
        assert lines[0] == f"panel: http://127.0.0.1:{port}/"
        link = lines[1].split(" at ", 1)[1]
        token = link.rsplit("/", 1)[1]
        assert setup_link.matches(tmp_path, token)
        response = httpx.get(link, timeout=10)
        assert response.status_code == 200 and "Create the admin account" in response.text
        assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    finally:
        server.stop()
    # The key that signs CSRF tokens is the same on the next start, and private.
    key_file = tmp_path / "panel" / "csrf.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert csrf_key(tmp_path) == key_file.read_bytes()


def test_other_addresses_get_tls_with_a_self_signed_certificate(
    tmp_path: Path, store: Store
) -> None:
    # 127.0.0.2 is loopback too, but not one of the names served without TLS.
    port = free_port()
    server = PanelServer(store, tmp_path, FakeClawOps(), Listen("127.0.0.2", port))
    server.start()
    try:
        cert = tmp_path / "panel" / "tls-127.0.0.2.crt"
        key = tmp_path / "panel" / "tls-127.0.0.2.key"
        assert key.stat().st_mode & 0o777 == 0o600
        context = ssl.create_default_context(cafile=str(cert))
        response = httpx.get(f"https://127.0.0.2:{port}/login", verify=context, timeout=10)
        assert response.status_code == 200
        with pytest.raises(httpx.TransportError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.2:{port}/login", timeout=5)
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error(tmp_path: Path, store: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PanelServer(store, tmp_path, FakeClawOps(), Listen("127.0.0.1", port))
        with pytest.raises(Unavailable, match="could not listen"):
            server.start()


def test_clawden_serve_ends_its_start_with_the_panel_address(tmp_path: Path) -> None:
    """The real command, on libvirt's test driver: the panel's address and
    the setup link are the last lines it prints, after "controller ready"
    (a first reconcile may print many), and the link works."""
    port = free_port()
    env = dict(
        os.environ,
        CLAWDEN_HOME=str(tmp_path / "home"),
        CLAWDEN_LIBVIRT_URI="test:///default",
        PYTHONUNBUFFERED="1",
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("first run: ") for line in lines):
            assert time.monotonic() < deadline and serve.poll() is None, lines
            lines.append(serve.stdout.readline().rstrip("\n"))
        ready = next(i for i, line in enumerate(lines) if line.startswith("controller ready"))
        assert lines[ready + 1] == f"panel: http://127.0.0.1:{port}/"
        assert lines[ready + 2].startswith("first run: create the admin at ")
        link = lines[ready + 2].rsplit(" ", 1)[1]
        assert httpx.get(link, timeout=10).status_code == 200
    finally:
        serve.terminate()
        serve.communicate(timeout=60)
    assert serve.returncode == 0
