"""The admin panel on a real SQLite store and a ``FakeClawOps``, driven
through Starlette's TestClient: for the panel's fast tests (the browser
tests drive the same app through uvicorn and Chromium)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from appliance.accounts import totp
from appliance.accounts.credentials import Passwords
from appliance.accounts.service import Accounts
from appliance.core.accounts import ROOT_CLI_ACTOR
from appliance.core.model import Claw, ClawState
from appliance.store import Store
from web.app import create_app
from web.panel import Panel
from web.ports import FakeClawOps

PASSWORD = "correct horse battery"
# Cheap argon2 parameters: the tests check behaviour, not the cost.
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ORIGIN = "http://127.0.0.1"
T0 = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 30) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    store: Store
    accounts: Accounts
    claws: FakeClawOps
    panel: Panel
    clock: Clock
    home: Path
    secrets: dict[str, str]

    def client(self) -> TestClient:
        return TestClient(create_app(self.panel), base_url=ORIGIN, follow_redirects=False)

    def add_claw(self, name: str, member: str | None = None) -> None:
        self.store.claws.add(
            Claw(name, member or name.title(), ClawState.RUNNING, "v1", 1, 512,
                 "2026-03-01T00:00:00.000000Z")
        )  # fmt: skip

    def add_user(
        self, name: str, role: str, claws: tuple[str, ...] = (), with_totp: bool = True
    ) -> None:
        self.accounts.add(name, role, PASSWORD, claws, ROOT_CLI_ACTOR)
        if with_totp:
            uri = self.accounts.start_totp(name, ROOT_CLI_ACTOR)
            secret = uri.split("secret=")[1].split("&")[0]
            self.accounts.confirm_totp(name, totp.code_at(secret, self.clock.now), ROOT_CLI_ACTOR)
            self.secrets[name] = secret
            self.clock.tick()  # the confirming step is spent

    def code(self, name: str) -> str:
        """A fresh TOTP code for ``name`` (the clock moves on a step, so the
        next call gives a code that was not used yet)."""
        code = totp.code_at(self.secrets[name], self.clock.now)
        self.clock.tick()
        return code

    def login(self, client: TestClient, name: str) -> str:
        """Log ``name`` in on ``client``; returns the page's CSRF token."""
        form = {
            "name": name,
            "password": PASSWORD,
            "code": self.code(name) if name in self.secrets else "",
        }
        response = client.post("/login", data=form, headers={"Origin": ORIGIN})
        assert response.status_code == 303, response.text
        return csrf_of(client.get("/").text)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on uvicorn on a free loopback port, for a real browser;
    yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def csrf_of(html: str) -> str:
    match = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


@pytest.fixture
def panel(tmp_path: Path) -> Iterator[Harness]:
    home = tmp_path / "home"
    home.mkdir()
    store = Store.open(home / "clawden.db", audit_head=home / "audit.head")
    clock = Clock()
    accounts = Accounts(store, Passwords(FAST), clock)
    claws = FakeClawOps()
    the_panel = Panel(store, accounts, claws, home, csrf_key=b"k" * 32, clock=clock)
    yield Harness(store, accounts, claws, the_panel, clock, home, {})
    store.db.close()
