"""Writing llm.toml (appliance/llm/edit.py): TOML that reads back as the
same data, checked before it replaces the file, atomic and 0600; and what
`clawden doctor` says while no provider is set."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from appliance.cli.doctor import _llm_provider
from appliance.config import Settings
from appliance.llm.config import LlmConfigError
from appliance.llm.edit import render_toml, write_llm_toml

TRICKY = 'quote " back \\ tab \t nl \n cr \r del \x7f nul \x00 bell \x07 é 🦀 \u202e'


def test_render_reads_back_as_the_same_data() -> None:
    data = {
        "provider": "a b",
        "providers": {"a b": {"base_url": "http://h/v1", "api_key": TRICKY, "timeout_s": 1.5}},
        "prices": {"gpt-4o-mini": {"prompt_per_million": 0.15, "completion_per_million": 1e-07}},
        "policy": {"models": ["x", "y*"], "daily_tokens": 3, "flag": True},
        "claws": {"alice": {}, "bob": {"daily_cost_usd": 2.0}},
    }
    assert tomllib.loads(render_toml(data)) == data


def test_render_refuses_what_it_cannot_write() -> None:
    with pytest.raises(LlmConfigError, match="does not write"):
        render_toml({"policy": {"when": object()}})
    with pytest.raises(LlmConfigError, match="finite"):
        render_toml({"policy": {"daily_cost_usd": float("inf")}})


def test_a_write_is_checked_first_and_private(tmp_path: Path) -> None:
    path = tmp_path / "llm.toml"
    path.write_text("# by hand\n")
    with pytest.raises(LlmConfigError, match="unknown keys"):
        write_llm_toml(tmp_path, {"policy": {"daily_tokns": 5}}, env={})
    assert path.read_text() == "# by hand\n"
    # A leftover temporary file with a loose mode does not loosen the new file.
    leftover = tmp_path / f".llm.toml.{os.getpid()}.tmp"
    leftover.write_text("")
    leftover.chmod(0o644)
    config = write_llm_toml(
        tmp_path, {"providers": {"m": {"base_url": "http://h/v1", "api_key": "sk-1"}}}, env={}
    )
    assert config.upstream is not None and config.upstream.api_key == "sk-1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm.toml"]


def test_doctor_notes_a_missing_provider_without_failing(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, libvirt_uri="test:///default")
    check = _llm_provider(settings)
    assert (check.ok, check.blocking, check.detail) == (False, False, "none configured")
    assert "panel's Settings" in check.fix and "llm.toml" in check.fix
    (tmp_path / "llm.toml").write_text('[providers.m]\nbase_url = "http://u:pw@h:1/v1"\n')
    check = _llm_provider(settings)
    assert check.ok and check.detail == "m: http://h:1/v1"
