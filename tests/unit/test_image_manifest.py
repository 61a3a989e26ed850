"""Recipe hashing, manifests and integrity checks of golden images (no VM, no build)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance.core.errors import ClawdenError, IntegrityError
from appliance.image import builder
from appliance.image import manifest as mf

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path) -> tuple[Path, Path]:
    recipe = tmp_path / "images"
    (recipe / "overlay/etc").mkdir(parents=True)
    (recipe / "packages.txt").write_text("systemd-sysv\nopenssh-server\n")
    (recipe / "customize.sh").write_text("#!/bin/sh\necho hi\n")
    (recipe / "overlay/etc/fstab").write_text("/dev/vda / ext4 ro 0 0\n")
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "__init__.py").write_text("")
    return recipe, guest


def test_recipe_hash_is_stable(tmp_path: Path) -> None:
    recipe, guest = _recipe(tmp_path)
    first = mf.recipe_hash(recipe, guest)
    assert first == mf.recipe_hash(recipe, guest)
    assert len(first) == 64
    assert mf.version_for(first) == f"bookworm-{first[:12]}"


def test_recipe_hash_ignores_bytecode_caches(tmp_path: Path) -> None:
    recipe, guest = _recipe(tmp_path)
    before = mf.recipe_hash(recipe, guest)
    (guest / "__pycache__").mkdir()
    (guest / "__pycache__/x.cpython-311.pyc").write_bytes(b"\0junk")
    (guest / "stale.pyc").write_bytes(b"junk")
    assert mf.recipe_hash(recipe, guest) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda r, g: (r / "packages.txt").write_text("systemd-sysv\nopenssh-server\ngcc\n"),
        lambda r, g: (r / "overlay/etc/fstab").write_text("/dev/vda / ext4 rw 0 0\n"),
        lambda r, g: (r / "overlay/etc/new.conf").write_text(""),
        lambda r, g: (r / "overlay/etc/fstab").rename(r / "overlay/etc/fstab2"),
        lambda r, g: os.chmod(r / "customize.sh", 0o755),
        lambda r, g: (g / "agent.py").write_text("print('x')\n"),
    ],
    ids=["package", "overlay-content", "overlay-new-file", "rename", "exec-bit", "guest-agent"],
)
def test_recipe_hash_changes_with_anything_that_shapes_the_image(tmp_path: Path, change) -> None:  # type: ignore[no-untyped-def]
    recipe, guest = _recipe(tmp_path)
    before = mf.recipe_hash(recipe, guest)
    change(recipe, guest)
    assert mf.recipe_hash(recipe, guest) != before


def test_recipe_hash_needs_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as err:
        mf.recipe_hash(tmp_path, tmp_path)
    assert "packages.txt" in err.value.what


def test_repository_recipe_hashes(tmp_path: Path) -> None:
    # The real recipe is complete enough to hash and names its packages.
    packages = (REPO / "images/packages.txt").read_text()
    for needed in ("linux-image-amd64", "openssh-server", "socat", "systemd-sysv"):
        assert needed in packages
    assert "gcc" not in packages and "ifupdown" not in packages
    assert mf.version_for(mf.recipe_hash(REPO / "images", builder.GUEST_DIR)).startswith(
        "bookworm-"
    )


def _image(
    tmp_path: Path, version: str = "bookworm-000000000000", when: str = "2026-01-01T00:00:00Z"
) -> mf.GoldenImage:
    image_dir = tmp_path / version
    image_dir.mkdir()
    for name, payload in (
        (mf.GOLDEN, b"QFI\xfb" + b"\0" * 4096),
        (mf.KERNEL, b"kernel"),
        (mf.INITRD, b"initrd"),
    ):
        (image_dir / name).write_bytes(payload)
    manifest = {
        "version": version,
        "created_at": when,
        "artefacts": {name: mf.artefact_entry(image_dir / name) for name in mf.ARTEFACTS},
        "packages": {"openssh-server": "1:9.2p1-2+deb12u3"},
    }
    mf.write_manifest(image_dir, manifest)
    return mf.load_image(image_dir)


def test_verify_accepts_an_intact_image(tmp_path: Path) -> None:
    image = _image(tmp_path)
    mf.verify_image(image)
    assert image.golden == tmp_path / image.version / "golden.qcow2"
    assert json.loads((image.dir / "manifest.json").read_text())["version"] == image.version


@pytest.mark.parametrize("name", list(mf.ARTEFACTS))
def test_verify_detects_a_flipped_byte(tmp_path: Path, name: str) -> None:
    image = _image(tmp_path)
    path = image.dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        mf.verify_image(image)
    assert name in err.value.what
    assert "--force" in err.value.fix


def test_verify_detects_a_missing_artefact(tmp_path: Path) -> None:
    image = _image(tmp_path)
    image.initrd.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        mf.verify_image(image)


def test_list_and_latest_skip_build_leftovers_and_order_by_time(tmp_path: Path) -> None:
    assert mf.latest_image(tmp_path) is None
    old = _image(tmp_path, "bookworm-aaaaaaaaaaaa", "2026-01-01T00:00:00Z")
    new = _image(tmp_path, "bookworm-bbbbbbbbbbbb", "2026-02-01T00:00:00Z")
    leftover = tmp_path / ".build-bookworm-cccccccccccc-x"
    leftover.mkdir()
    shutil.copy(new.dir / "manifest.json", leftover / "manifest.json")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/manifest.json").write_text("{not json")
    assert [i.version for i in mf.list_images(tmp_path)] == [old.version, new.version]
    latest = mf.latest_image(tmp_path)
    assert latest is not None and latest.version == new.version


def test_build_returns_cached_image_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, guest = _recipe(tmp_path)
    images = tmp_path / "store"
    images.mkdir()
    version = mf.version_for(mf.recipe_hash(recipe, guest))
    _image(images, version)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    messages: list[str] = []
    image = builder.build_image(images, recipe, messages.append, guest_dir=guest)
    assert image.version == version
    assert any(m.startswith("cached") for m in messages)


def test_build_rejects_damaged_cache_and_non_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe, guest = _recipe(tmp_path)
    images = tmp_path / "store"
    images.mkdir()
    cached = _image(images, mf.version_for(mf.recipe_hash(recipe, guest)))
    cached.kernel.write_bytes(b"tampered")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    messages: list[str] = []
    with pytest.raises(ClawdenError) as err:
        builder.build_image(images, recipe, messages.append, guest_dir=guest)
    assert "root" in err.value.what and "sudo" in err.value.fix
    assert any("damaged" in m for m in messages)


def test_mmdebstrap_command_follows_the_recipe(tmp_path: Path) -> None:
    recipe = REPO / "images"
    args = builder._mmdebstrap_args(recipe, builder.GUEST_DIR, tmp_path / "rootfs",
                                    "http://mirror.invalid/debian", tmp_path / "cache")  # fmt: skip
    assert args[0] == "mmdebstrap" and "--variant=minbase" in args
    assert args[-3:] == ["bookworm", str(tmp_path / "rootfs"), "http://mirror.invalid/debian"]
    include = next(a for a in args if a.startswith("--include="))
    assert include.split("=", 1)[1].split(",") == builder._read_list(recipe / "packages.txt")
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in args
    assert "--dpkgopt=path-include=/usr/share/doc/*/copyright" in args
    hooks = [a for a in args if a.startswith("--customize-hook=")]
    # The .deb cache is saved before customize.sh purges apt's directories.
    assert "sync-out" in hooks[0] and "customize.sh customize" in hooks[-1]
    assert not any("customize.sh customize" in a for a in args if a.startswith("--essential"))


def test_an_image_from_before_format_3_boots_its_compressed_kernel(tmp_path: Path) -> None:
    image_dir = tmp_path / "bookworm-0000000000aa"
    image_dir.mkdir()
    names = (mf.GOLDEN, mf.LEGACY_KERNEL, mf.INITRD)
    for name in names:
        (image_dir / name).write_bytes(name.encode())
    manifest = {
        "version": image_dir.name,
        "created_at": "2026-01-01T00:00:00Z",
        "artefacts": {name: mf.artefact_entry(image_dir / name) for name in names},
    }
    mf.write_manifest(image_dir, manifest)
    image = mf.load_image(image_dir)
    assert image.kernel == image_dir / "vmlinuz"
    mf.verify_image(image)
    (image_dir / mf.LEGACY_KERNEL).write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="vmlinuz does not match"):
        mf.verify_image(image)
