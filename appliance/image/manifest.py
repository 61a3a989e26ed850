"""Golden images on disk: the recipe hash that names them, their manifest,
and integrity checks.

An image lives in ``<images_root>/<version>/`` with ``golden.qcow2``,
``vmlinux`` (the unpacked kernel QEMU boots by its PVH entry; images built
before format 3 have the compressed ``vmlinuz`` instead), ``initrd.img`` and
``manifest.json``. The version is derived from
a hash of the recipe, so the same recipe always maps to the same directory and
a build can be skipped when it is already there and intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.core.errors import IntegrityError

SUITE = "bookworm"
MANIFEST = "manifest.json"
GOLDEN = "golden.qcow2"
KERNEL = "vmlinux"
LEGACY_KERNEL = "vmlinuz"
INITRD = "initrd.img"
ARTEFACTS = (GOLDEN, KERNEL, INITRD)

# Bump when the build procedure changes in a way the recipe files do not show
# (mkfs options, the mmdebstrap command line): it changes every version.
# 2: the root ext4 always has 1 KiB blocks (`mkfs.ext4 -b 1024`).
# 3: the kernel is shipped unpacked (``vmlinux``, booted through PVH).
BUILD_FORMAT = "clawden-image-3"

REBUILD_FIX = "rebuild with `clawden image build --force`"

_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class GoldenImage:
    version: str
    dir: Path
    golden: Path
    kernel: Path
    initrd: Path
    manifest: Mapping[str, Any] = field(compare=False, hash=False, repr=False)
    created_at: str = ""


def _tree_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(dirpath) / name


def _hash_tree(digest: Any, label: str, root: Path) -> None:
    # Path, executable bit and content of every file: git tracks exactly
    # these, so a fresh checkout of the same commit hashes the same.
    for path in _tree_files(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            kind, payload = "l", os.readlink(path).encode()
        else:
            kind = "x" if os.access(path, os.X_OK) else "f"
            payload = path.read_bytes()
        digest.update(f"{label}/{rel}\0{kind}\0{len(payload)}\0".encode())
        digest.update(payload)


def recipe_hash(recipe_dir: Path, guest_dir: Path) -> str:
    """SHA-256 over everything that decides what goes into the image: the
    recipe (package list, dpkg filters, overlay, customize script), the guest
    agent copied to /opt/clawden/guest, the suite and the build format."""
    if not (recipe_dir / "packages.txt").is_file():
        raise IntegrityError(
            f"no image recipe at {recipe_dir} (packages.txt missing)",
            "point the build at the repository's images/ directory",
        )
    digest = hashlib.sha256()
    digest.update(f"{BUILD_FORMAT}\0{SUITE}\0".encode())
    _hash_tree(digest, "recipe", recipe_dir)
    if guest_dir.is_dir():
        _hash_tree(digest, "guest", guest_dir)
    return digest.hexdigest()


def version_for(recipe_hex: str) -> str:
    return f"{SUITE}-{recipe_hex[:12]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artefact_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(image_dir: Path, manifest: Mapping[str, Any]) -> None:
    tmp = image_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o644)
    tmp.replace(image_dir / MANIFEST)


def _kernel_name(manifest: Mapping[str, Any]) -> str:
    # An image built before format 3 boots its compressed kernel: claws
    # started on it keep working until a new image is built.
    artefacts = manifest.get("artefacts")
    if isinstance(artefacts, Mapping) and LEGACY_KERNEL in artefacts and KERNEL not in artefacts:
        return LEGACY_KERNEL
    return KERNEL


def load_image(image_dir: Path) -> GoldenImage:
    """Read an image directory's manifest (no hashing: see ``verify_image``)."""
    path = image_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        version = str(manifest["version"])
        created_at = str(manifest["created_at"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"unreadable image manifest {path}: {exc}", REBUILD_FIX) from exc
    return GoldenImage(
        version=version,
        dir=image_dir,
        golden=image_dir / GOLDEN,
        kernel=image_dir / _kernel_name(manifest),
        initrd=image_dir / INITRD,
        manifest=manifest,
        created_at=created_at,
    )


def verify_image(image: GoldenImage) -> None:
    """Raise ``IntegrityError`` unless every artefact matches its recorded sha256."""
    recorded = image.manifest.get("artefacts")
    if not isinstance(recorded, Mapping):
        raise IntegrityError(f"image {image.version}: manifest lists no artefacts", REBUILD_FIX)
    for name in (GOLDEN, image.kernel.name, INITRD):
        entry = recorded.get(name)
        path = image.dir / name
        if not isinstance(entry, Mapping) or "sha256" not in entry:
            raise IntegrityError(f"image {image.version}: {name} not in manifest", REBUILD_FIX)
        if not path.is_file():
            raise IntegrityError(f"image {image.version}: {name} is missing", REBUILD_FIX)
        if sha256_file(path) != entry["sha256"]:
            raise IntegrityError(
                f"image {image.version}: {name} does not match its manifest (sha256 differs)",
                REBUILD_FIX,
            )


def list_images(images_root: Path) -> list[GoldenImage]:
    """Images with a readable manifest, oldest first. Build leftovers (hidden
    directories) and broken directories are not images."""
    if not images_root.is_dir():
        return []
    found: list[GoldenImage] = []
    for child in sorted(images_root.iterdir()):
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue
        try:
            found.append(load_image(child))
        except IntegrityError:
            continue
    return sorted(found, key=lambda image: (image.created_at, image.version))


def latest_image(images_root: Path) -> GoldenImage | None:
    images = list_images(images_root)
    return images[-1] if images else None
