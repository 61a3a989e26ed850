"""The import rules (pyproject.toml ``[tool.importlinter]``) hold on the tree,
fail on a tree that breaks each of them, and govern every top-level package.

``scripts/test.sh`` runs ``lint-imports`` too; this test also proves the
checker is not a check that cannot fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _config() -> dict[str, Any]:
    with open(REPO / "pyproject.toml", "rb") as f:
        section: dict[str, Any] = tomllib.load(f)["tool"]["importlinter"]
    return section


def _contracts() -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in _config()["contracts"]}


def _run(config: Path, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _top_level(root: Path) -> set[str]:
    """Every top-level module and package of the host code, as dotted names."""
    found = {"provisioning", "web"}
    for entry in (root / "appliance").iterdir():
        if entry.name.startswith(("_", ".")):
            continue  # __init__, __main__, __pycache__
        if entry.is_dir() and (entry / "__init__.py").exists():
            found.add(f"appliance.{entry.name}")
        elif entry.suffix == ".py":
            found.add(f"appliance.{entry.stem}")
    return found


def test_the_tree_keeps_every_import_rule() -> None:
    result = _run(REPO / "pyproject.toml", REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in result.stdout


def test_every_top_level_package_is_governed_by_the_rules() -> None:
    """A new package must be named in every rule that lists "all but one"
    (otherwise it could import paramiko or sqlite_utils unnoticed)."""
    everything = _top_level(REPO)
    c = _contracts()
    assert set(c["core-is-pure"]["forbidden_modules"]) >= everything - {"appliance.core"}
    assert set(c["guest-stands-alone"]["forbidden_modules"]) >= everything - {"appliance.guest"}
    for rule, home in (
        ("sql-in-store", "appliance.store"),
        ("ssh-in-channel", "appliance.channel"),
        ("libvirt-in-hypervisor", "appliance.hypervisor"),
        ("openai-in-guest", "appliance.guest"),
    ):
        assert set(c[rule]["source_modules"]) == everything - {home}, rule
    assert set(c["no-cycles"]["ancestors"]) == {"appliance", "provisioning", "web"}


# One violation per rule, in a throwaway tree with the same top-level names.
_BAD_IMPORTS = {
    "appliance/core/__init__.py": "import appliance.store\n",  # core-is-pure
    "appliance/cli/__init__.py": "import sqlite3\n",  # sql-in-store
    "appliance/controller/__init__.py": "import paramiko\n",  # ssh-in-channel
    "appliance/services/__init__.py": "import libvirt\n",  # libvirt-in-hypervisor
    "appliance/store/__init__.py": "import openai\n",  # openai-in-guest
    "appliance/guest/__init__.py": "from appliance.core import errors\n",  # guest-stands-alone
    "appliance/schedule/a.py": "from appliance.schedule import b\n",  # no-cycles
    "appliance/schedule/b.py": "from appliance.schedule import a\n",
}


def _bad_tree(root: Path) -> None:
    for name in _top_level(REPO):
        parts = name.split(".")
        package = root.joinpath(*parts)
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").touch()
    (root / "appliance" / "__init__.py").touch()
    (root / "appliance" / "core" / "errors.py").touch()
    for external in ("sqlite_utils", "paramiko", "libvirt", "openai"):
        (root / f"{external}.py").write_text("")  # stand-ins, so nothing real is needed
    for rel, text in _BAD_IMPORTS.items():
        (root / rel).write_text(text)


def test_the_checker_fails_a_tree_that_breaks_each_rule(tmp_path: Path) -> None:
    _bad_tree(tmp_path)
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject[pyproject.index("[tool.importlinter]") :]
    config = tmp_path / "pyproject.toml"
    config.write_text(section)
    result = _run(config, tmp_path)
    assert result.returncode != 0, result.stdout
    for contract in _contracts().values():
        assert re.search(rf"^{re.escape(contract['name'])} BROKEN$", result.stdout, re.M), (
            f"{contract['id']} was not reported broken:\n{result.stdout}"
        )
    assert "No cycles are allowed in appliance.schedule." in result.stdout
