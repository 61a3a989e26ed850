"""The guest agent's Python dependencies in the image: pinned, hash-checked,
covered by the recipe hash, and started by /usr/local/bin/clawden-agent
(no build, no VM, no network)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

import pytest

from appliance.image import builder
from appliance.image import manifest as mf

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "images"
REQUIREMENTS = RECIPE / builder.GUEST_REQUIREMENTS
WRAPPER = RECIPE / "overlay/usr/local/bin/clawden-agent"

_PIN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9-]*)==(?P<version>[0-9][0-9A-Za-z.+-]*)$")
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def _requirements() -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [--hash=...])} from the requirements file, strictly parsed."""
    text = REQUIREMENTS.read_text()
    logical = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        match = _PIN.match(spec)
        assert match, f"not an exact, normalised pin: {spec!r}"
        assert options and all(_HASH.match(o) for o in options), f"{spec}: needs sha256 hashes"
        assert match["name"] not in pins, f"{match['name']} pinned twice"
        pins[match["name"]] = (match["version"], options)
    return pins


def test_requirements_pin_exact_versions_with_hashes() -> None:
    pins = _requirements()
    assert "openai" in pins
    # openai's runtime closure (as of the pinned release): the agent imports it.
    for needed in ("pydantic", "pydantic-core", "anyio", "jiter", "typing-extensions", "sniffio"):
        assert needed in pins, f"{needed} missing from {REQUIREMENTS.name}"
    # Nothing that would build or install code inside the image.
    for forbidden in ("pip", "setuptools", "wheel", "cython"):
        assert forbidden not in pins


def test_guest_openai_is_the_one_the_adapter_is_tested_against() -> None:
    try:
        host = importlib.metadata.version("openai")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("openai is not installed on the host")
    assert _requirements()["openai"][0] == host, (
        "the image pins a different openai than the test suite uses: update "
        f"{REQUIREMENTS.name} (see its header) or the host's openai"
    )


def _copy_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "images"
    shutil.copytree(RECIPE, recipe, symlinks=True)
    return recipe


def test_recipe_hash_covers_the_requirements_file(tmp_path: Path) -> None:
    recipe = _copy_recipe(tmp_path)
    guest = builder.GUEST_DIR
    assert mf.recipe_hash(recipe, guest) == mf.recipe_hash(RECIPE, guest)
    original = (recipe / builder.GUEST_REQUIREMENTS).read_text()
    version = _requirements()["openai"][0]

    bumped = original.replace(f"openai=={version}", f"openai=={version}.post1")
    assert bumped != original
    (recipe / builder.GUEST_REQUIREMENTS).write_text(bumped)
    assert mf.recipe_hash(recipe, guest) != mf.recipe_hash(RECIPE, guest)

    (recipe / builder.GUEST_REQUIREMENTS).unlink()
    assert mf.recipe_hash(recipe, guest) != mf.recipe_hash(RECIPE, guest)


def test_pip_installs_hash_checked_wheels_for_the_guest_python(tmp_path: Path) -> None:
    args = builder._pip_args(REQUIREMENTS, tmp_path / "site")
    # The builder's own interpreter, never a venv path baked into the code.
    assert args[:4] == [sys.executable, "-m", "pip", "install"]
    for flag in ("--require-hashes", "--only-binary=:all:", "--no-compile", "--no-cache-dir"):
        assert flag in args
    assert "--no-deps" not in args  # pip must check that the pins are the whole closure
    pairs = dict(zip(args, args[1:], strict=False))
    assert pairs["--python-version"] == "3.11" and pairs["--abi"] == "cp311"
    assert pairs["--target"] == str(tmp_path / "site")
    assert pairs["-r"] == str(REQUIREMENTS)
    platforms = [b for a, b in zip(args, args[1:], strict=False) if a == "--platform"]
    # bookworm's glibc is 2.36: nothing newer may be picked.
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert not any(p.startswith("manylinux_2_37") for p in platforms)


def test_site_packages_are_read_from_dist_info(tmp_path: Path) -> None:
    for name, version in (("typing_extensions", "4.16.0"), ("Pydantic_Core", "2.50.4")):
        info = tmp_path / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n\nName: not-a-header\n"
        )
    assert builder._site_packages(tmp_path) == {
        "pydantic-core": "2.50.4",
        "typing-extensions": "4.16.0",
    }


def test_customize_hook_gets_the_site_directory(tmp_path: Path) -> None:
    rootfs, mirror = tmp_path / "rootfs", "http://mirror.invalid/debian"
    args = builder._mmdebstrap_args(
        RECIPE, builder.GUEST_DIR, rootfs, mirror, None, tmp_path / "site"
    )
    hook = next(a for a in args if "customize.sh customize" in a)
    assert hook.endswith(f" {tmp_path / 'site'}")
    without = builder._mmdebstrap_args(RECIPE, builder.GUEST_DIR, rootfs, mirror, None)
    assert next(a for a in without if "customize.sh customize" in a).endswith(" ''")


def test_agent_wrapper_runs_the_guest_package_without_writing() -> None:
    assert WRAPPER.is_file() and WRAPPER.stat().st_mode & 0o111, "must be executable in git"
    text = WRAPPER.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "PYTHONPATH=/opt/clawden/site:/opt/clawden\n" in text
    assert "PYTHONDONTWRITEBYTECODE=1\n" in text
    assert "export PYTHONPATH PYTHONDONTWRITEBYTECODE\n" in text
    assert text.rstrip().endswith('exec /usr/bin/python3 -P -s -m guest.serve "$@"')
