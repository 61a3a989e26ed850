"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.store import open_db

# The admin panel over a real store and a FakeClawOps (tests/support/panel.py).
from tests.support.panel import panel  # noqa: F401


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh store, fully migrated, in the test's own temp dir."""
    database = open_db(tmp_path / "clawden.db")
    yield database
    database.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty CLAWDEN_HOME on libvirt's test driver, for in-process CLI
    tests (modules that need more in it override this, requesting it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("CLAWDEN_HOME", str(home))
    monkeypatch.setenv("CLAWDEN_LIBVIRT_URI", "test:///default")
    home.mkdir()
    return home
