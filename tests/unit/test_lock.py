"""The host's Python lock files (requirements/*.lock, written by
``bash scripts/lock.sh``): every entry an exact pin with sha256 hashes, every
dependency pyproject.toml names locked in its layer, openai in step with the
guest image, and the running venv holding exactly what the locks say."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
GUEST_REQUIREMENTS = REPO / "images" / "guest-requirements.txt"
# Install order (scripts/bootstrap.sh): each layer leaves out what an earlier one has.
LAYERS = ("build", "host", "test")
LOCKS = {layer: REPO / "requirements" / f"{layer}.lock" for layer in LAYERS}
FIX = "run `bash scripts/lock.sh` (see docs/install.md)"

_SPEC = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9-]*)==(?P<version>[0-9][0-9A-Za-z.+!-]*)"
    r"(?:\s*;\s*(?P<marker>.+))?$"
)
_HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Pin:
    layer: str
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies_here(self) -> bool:
        """Whether pip installs this entry on the running interpreter."""
        return self.marker is None or self.marker.evaluate()


def _logical_lines(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file: continuations joined,
    comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text(encoding="utf-8"))
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _parse(layer: str) -> list[Pin]:
    pins = []
    for line in _logical_lines(LOCKS[layer]):
        spec, *options = re.split(r"\s+(?=--)", line)
        match = _SPEC.match(spec)
        assert match, f"{layer}.lock: not an exact, normalised pin: {spec!r}"
        bad = [option for option in options if not _HASH.match(option)]
        assert not bad, f"{layer}.lock: {spec}: only --hash=sha256:... may follow, not {bad}"
        assert options, f"{layer}.lock: {spec}: no --hash=sha256:..."
        assert len(set(options)) == len(options), f"{layer}.lock: {spec}: a hash given twice"
        version = match["version"]
        assert str(Version(version)) == version, f"{layer}.lock: {spec}: not a normalised version"
        marker = Marker(match["marker"]) if match["marker"] else None
        pins.append(Pin(layer, match["name"], version, marker, tuple(options)))
    assert pins, f"{layer}.lock lists nothing"
    return pins


def _all_pins() -> list[Pin]:
    return [pin for layer in LAYERS for pin in _parse(layer)]


def _pins_here(layers: tuple[str, ...] = LAYERS) -> dict[str, Pin]:
    """{name: pin} of the entries pip installs here from these layers."""
    return {pin.name: pin for layer in layers for pin in _parse(layer) if pin.applies_here()}


def _pyproject() -> dict[str, list[str]]:
    """pyproject.toml's requirements by the layer they must be locked in (or below)."""
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return {
        "build": data["build-system"]["requires"],
        "host": data["project"]["dependencies"],
        "test": data["project"]["optional-dependencies"]["test"],
    }


def _guest_openai() -> str:
    found = [m[1] for m in re.finditer(r"^openai==(\S+)", GUEST_REQUIREMENTS.read_text(), re.M)]
    assert len(found) == 1, f"{GUEST_REQUIREMENTS.name}: expected one openai==VERSION pin"
    return found[0]


def test_every_entry_is_an_exact_pin_with_sha256_hashes() -> None:
    for layer in LAYERS:
        _parse(layer)  # asserts as it parses


def test_no_package_is_pinned_twice() -> None:
    # One layer per package, so bootstrap's `-r a -r b` never sees two pins of
    # one name; within a layer only a platform fork (disjoint markers) may.
    layer_of: dict[str, str] = {}
    for pin in _all_pins():
        first = layer_of.setdefault(pin.name, pin.layer)
        assert first == pin.layer, f"{pin.name} is in {first}.lock and {pin.layer}.lock"
    for layer in LAYERS:
        unconditional = [pin.name for pin in _parse(layer) if pin.marker is None]
        assert len(set(unconditional)) == len(unconditional), f"{layer}.lock pins a name twice"


@pytest.mark.parametrize("layer", LAYERS)
def test_pyproject_requirements_are_locked_in_their_layer(layer: str) -> None:
    # A requirement is met by its own layer or one installed before it: the
    # appliance (build + host) must not need test.lock.
    layers = LAYERS[: LAYERS.index(layer) + 1]
    available = _pins_here(layers)
    where = " or ".join(f"{name}.lock" for name in layers)
    for text in _pyproject()[layer]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in available, f"{name} ({layer} requirement) is not in {where}: {FIX}"
        version = available[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} in the lock does not satisfy pyproject.toml's {text!r}: {FIX}"
        )


def test_lock_openai_is_the_guest_images_openai() -> None:
    host = _pins_here(("host",))
    assert "openai" in host, "openai must be a runtime (host.lock) package"
    assert host["openai"].version == _guest_openai(), (
        f"requirements/host.lock pins openai=={host['openai'].version} but "
        f"{GUEST_REQUIREMENTS.name} pins {_guest_openai()}: regenerate the guest list "
        f"(see its header), then {FIX}"
    )


def _in_a_venv() -> bool:
    return sys.prefix != sys.base_prefix


@pytest.mark.skipif(not _in_a_venv(), reason="not running in a venv")
def test_the_venv_has_the_locked_versions() -> None:
    drifted = []
    for name, pin in sorted(_pins_here().items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin.version:
            drifted.append(f"{name}: {installed}, locked {pin.version} ({pin.layer}.lock)")
    assert not drifted, (
        "the venv is not what the locks say; run `bash scripts/bootstrap.sh "
        "--with-test-tools`:\n  " + "\n  ".join(drifted)
    )


@pytest.mark.skipif(not _in_a_venv(), reason="not running in a venv")
def test_the_venv_has_nothing_the_locks_do_not_list() -> None:
    listed = {pin.name for pin in _all_pins()} | {"clawden"}
    installed = {
        canonicalize_name(dist.metadata["Name"]) for dist in importlib.metadata.distributions()
    }
    assert not installed - listed, (
        f"installed but in no lock file: {sorted(installed - listed)}; "
        "`bash scripts/bootstrap.sh --with-test-tools` removes them"
    )
