"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.store import open_db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """A fresh store, fully migrated, in the test's own temp dir."""
    database = open_db(tmp_path / "clawden.db")
    yield database
    database.close()
