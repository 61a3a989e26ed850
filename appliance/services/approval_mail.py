"""An e-mail to the admin when a claw asks for approval, if SMTP is set up.

Until messaging channels exist, the panel's badge is where an admin sees a
pending request; a parent away from the panel gets an e-mail too when
``CLAWDEN_HOME/smtp.toml`` exists::

    host = "smtp.example.org"
    port = 587                      # default 587
    starttls = true                 # default true; false only for a local relay
    username = "clawden@example.org"  # optional
    password = "…"                  # optional; the file must then be 0600
    sender = "clawden@example.org"
    to = ["parent@example.org"]
    panel_url = "https://192.168.1.20:7780"  # optional: a link in the mail

The mail says which claw asks for what, with the request's own text made
visible (control, bidi and zero-width characters as escapes), its
fingerprint and expiry — never a decision link that would approve anything:
deciding still needs the panel and a fresh TOTP code. It is sent on a thread
of its own, so the claw's request never waits on a mail server; a failure
is a warning in the controller's log (without the password).
"""

from __future__ import annotations

import logging
import smtplib
import threading
import tomllib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from appliance.core.approvals import Approval
from appliance.core.errors import InvalidInput
from appliance.core.textsafe import printable

log = logging.getLogger(__name__)
CONFIG_NAME = "smtp.toml"
SEND_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    sender: str
    to: tuple[str, ...]
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = None
    panel_url: str | None = None

    def __repr__(self) -> str:  # never the password
        return f"SmtpSettings(host={self.host!r}, port={self.port}, to={self.to!r})"


def load_smtp(home: Path) -> SmtpSettings | None:
    """The settings, or None when ``smtp.toml`` does not exist."""
    path = home / CONFIG_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    fix = f"fix {path} (see docs/panel.md)"
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not valid TOML ({exc})", fix) from None
    if data.get("password") and path.stat().st_mode & 0o077:
        raise InvalidInput(
            f"{path} holds a password but other users can read it", f"run `chmod 600 {path}`"
        )
    to = data.get("to")
    if isinstance(to, str):
        to = [to]
    fields = (data.get("host"), data.get("sender"))
    if not all(isinstance(f, str) and f for f in fields) or not (
        isinstance(to, list) and to and all(isinstance(t, str) and t for t in to)
    ):
        raise InvalidInput(f"{path} needs host, sender and to", fix)
    port = data.get("port", 587)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidInput(f"{path}: port must be a number from 1 to 65535", fix)
    return SmtpSettings(
        host=str(data["host"]),
        sender=str(data["sender"]),
        to=tuple(to),
        port=port,
        starttls=bool(data.get("starttls", True)),
        username=data.get("username") or None,
        password=data.get("password") or None,
        panel_url=data.get("panel_url") or None,
    )


def approval_mail(settings: SmtpSettings, approval: Approval) -> EmailMessage:
    action = printable(approval.action).replace("\n", " ")
    lines = [
        f"Claw {approval.claw} asks for approval to: {action}",
        "",
        "Exactly what it will do (the claw's own words, escapes made visible):",
        "",
        printable(approval.details),
        "",
        f"Fingerprint: {approval.sha256[:4]} {approval.sha256[4:8]} {approval.sha256[8:12]}",
        f"Asked at {approval.created_at:%Y-%m-%d %H:%M} UTC;"
        f" expires at {approval.expires_at:%Y-%m-%d %H:%M} UTC.",
        "",
        "Decide it in the panel's Approvals page, with a fresh code from your authenticator"
        + (f": {settings.panel_url.rstrip('/')}/approvals" if settings.panel_url else "."),
    ]
    mail = EmailMessage()
    mail["Subject"] = f"clawden: {approval.claw} asks to {action[:60]}"
    mail["From"] = settings.sender
    mail["To"] = ", ".join(settings.to)
    mail.set_content("\n".join(lines))
    return mail


def send(settings: SmtpSettings, mail: EmailMessage) -> None:
    with smtplib.SMTP(settings.host, settings.port, timeout=SEND_TIMEOUT_S) as smtp:
        if settings.starttls:
            smtp.starttls()
        if settings.username and settings.password:
            smtp.login(settings.username, settings.password)
        smtp.send_message(mail)


class ApprovalMailer:
    """``notify(approval)`` for the host API: mails the admin about a request
    left for a person to decide, on a thread of its own."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, approval: Approval) -> threading.Thread | None:
        try:
            settings = load_smtp(self.home)
        except InvalidInput as exc:
            log.warning("approval e-mail not sent: %s", exc)
            return None
        if settings is None:
            return None
        thread = threading.Thread(
            target=self._send, args=(settings, approval), name="approval-mail", daemon=True
        )
        thread.start()
        return thread

    def _send(self, settings: SmtpSettings, approval: Approval) -> None:
        try:
            send(settings, approval_mail(settings, approval))
        except (OSError, smtplib.SMTPException) as exc:
            # The exception names the server's answer or the socket error,
            # never the password we sent.
            log.warning(
                "approval e-mail for %s to %s:%d failed: %s",
                approval.id, settings.host, settings.port, type(exc).__name__,
            )  # fmt: skip
        else:
            log.info("approval e-mail for %s sent to %d address(es)", approval.id, len(settings.to))
