"""The panel inside ``clawden serve``: uvicorn on a thread of the controller
process, over the controller's own store and channels.

It listens on 127.0.0.1 unless told otherwise. Any other address gets TLS,
with the admin's certificate or a self-signed one made on first use (kept in
``CLAWDEN_HOME/panel``), since passwords and TOTP codes cross the LAN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.accounts.service import Accounts
from appliance.core.errors import InvalidInput, Unavailable
from appliance.store import Store
from web import setup_link
from web.app import DEFAULT_HOSTS, create_app
from web.panel import Panel, RecentWarnings, no_warnings
from web.ports import ClawOps

log = logging.getLogger(__name__)
DEFAULT_PORT = 7780
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    cert: Path | None = None
    key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.host not in LOOPBACK or self.cert is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``ADDR``, ``ADDR:PORT`` or ``[IPv6]:PORT`` (default port 7780)."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, raw = text.split(":")
        port = _port(raw, text)
    try:
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(
            f"--listen {text!r} is not an IP address",
            "give the address to listen on, e.g. 192.168.1.20 or 192.168.1.20:7780",
        ) from None
    return Listen(host, port)


def _port(raw: str, text: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise InvalidInput(f"--listen {text!r} has no valid port", "use a port from 1 to 65535")
    return int(raw)


def csrf_key(home: Path) -> bytes:
    """The panel's HMAC key, made once and kept 0600 in the home."""
    path = home / "panel" / "csrf.key"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    return path.read_bytes()


def self_signed(home: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` made on first use (and when the address
    changes), valid ten years: the admin accepts it once in the browser."""
    folder = home / "panel"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = folder / f"tls-{host}.crt", folder / f"tls-{host}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"clawden {host}")])
    now = dt.datetime.now(dt.UTC)
    alt = x509.IPAddress(ipaddress.ip_address(host)) if host != "localhost" else x509.DNSName(host)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class PanelServer:
    """uvicorn on a daemon thread; ``stop`` asks it to finish."""

    def __init__(
        self,
        store: Store,
        home: Path,
        claws: ClawOps,
        listen: Listen,
        recent_warnings: RecentWarnings = no_warnings,
    ) -> None:
        cert, key = listen.cert, listen.key
        if listen.tls and cert is None:
            cert, key = self_signed(home, listen.host)
        self.listen = listen
        panel = Panel(
            store=store,
            accounts=Accounts(store),
            claws=claws,
            home=home,
            csrf_key=csrf_key(home),
            secure=listen.tls,
            recent_warnings=recent_warnings,
        )
        hosts = {*DEFAULT_HOSTS, listen.host, f"[{listen.host}]"}
        self.app = create_app(panel, allowed_hosts=hosts)
        config = uvicorn.Config(
            self.app,
            host=listen.host,
            port=listen.port,
            ssl_certfile=None if cert is None else str(cert),
            ssl_keyfile=None if key is None else str(key),
            log_level="warning",
            access_log=False,  # URLs would name claws and setup links
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="panel", daemon=True)
        self._store = store
        self._home = home

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:
            # uvicorn exits when it cannot bind (it has logged why); start()
            # sees the thread gone and says so.
            pass

    def start(self, wait_s: float = 10.0, show_setup_link: bool = True) -> list[str]:
        """Start serving; returns the lines to show the operator (never to
        a log: the setup link is a secret until it is used). Without
        ``show_setup_link`` (stdout is the journal, a log) no link is made, and
        the lines say how to get one."""
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise Unavailable(
                    f"the panel could not listen on {self.listen.url}",
                    "is another program using that port? pick another with --listen ADDR:PORT,"
                    " or run without the panel: --no-panel",
                )
            time.sleep(0.05)
        lines = [f"panel: {self.listen.url}/"]
        if self._store.users.admin_count() == 0 and not show_setup_link:
            lines.append("first run: no admin yet; `sudo clawden panel setup-link` prints")
            lines.append("the one-time link that creates one")
        elif self._store.users.admin_count() == 0:
            token = setup_link.mint(self._home)
            lines.append(f"first run: create the admin at {self.listen.url}/setup/{token}")
            lines.append("(it works once; `clawden panel setup-link` makes a new one)")
        return lines

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
