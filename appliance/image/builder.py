"""Build the golden image: Debian bookworm bootstrapped with mmdebstrap from
the recipe in ``images/``, packed as a journal-less ext4 (no partition table)
in ``golden.qcow2``, with the kernel and initrd beside it for direct boot.

A build works in a hidden ``.build-*`` directory next to its target and
renames the finished directory into place, so an interrupted build never
leaves a half image where ``list_images`` would find it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import appliance
from appliance.core.errors import ClawdenError, IntegrityError
from appliance.image import manifest as mf
from appliance.image.pvh import unpack_pvh_kernel
from appliance.image.tools import require_tool, run_tool, stream_tool

DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "CLAWDEN_DEBIAN_MIRROR"
GUEST_DIR = Path(appliance.__file__).parent / "guest"
# The guest agent's Python dependencies (openai and its closure), pinned with
# hashes; installed by pip on the host into /opt/clawden/site of the image.
GUEST_REQUIREMENTS = "guest-requirements.txt"
# Wheels for the guest's interpreter, whatever Python runs the build: bookworm's
# CPython 3.11 on x86_64 with glibc 2.36, so manylinux_2_36 down to _2_17.
_GUEST_PYTHON = ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")
_GUEST_PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1))

# Free space on top of the files: the root is read-only, this only has to
# absorb ext4 metadata so `mkfs.ext4 -d` never runs out of room.
_HEADROOM_MIB = 64
_HEADROOM_RATIO = 1.10

Progress = Callable[[str], None]


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB"


def _read_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@contextmanager
def _build_lock(images_root: Path) -> Iterator[None]:
    # Two builds of the same recipe would race for the same final directory.
    with (images_root / ".build.lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ClawdenError(
                "another image build is running", "wait for it to finish, then retry"
            ) from exc
        yield


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p.startswith(prefix)]


def _remove_build_dir(path: Path) -> None:
    # mmdebstrap mounts /proc, /sys and /dev/pts inside the chroot; a build
    # killed hard (SIGKILL, power loss) leaves them mounted, and deleting
    # through a mounted /sys or /dev would be a disaster. They are ours (inside
    # our hidden build directory), so unmount them, deepest first; if that
    # fails, refuse to delete anything.
    for point in sorted(_mounts_under(path), key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)
    mounted = _mounts_under(path)
    if mounted:
        raise ClawdenError(
            f"leftover build directory {path} still has mounts ({mounted[0]})",
            f"unmount them with `umount -R {mounted[0]}` and retry",
        )
    shutil.rmtree(path, ignore_errors=True)


def _pip_args(requirements: Path, target: Path) -> list[str]:
    """pip, run by the builder's own interpreter, installing the guest's wheels.

    Wheels only (``--only-binary``): no package code runs on the host at
    install time and no compiler is needed anywhere. ``--require-hashes``
    makes the requirements file the whole truth: every distribution pip
    installs must be listed there with the sha256 of its file. Bytecode is
    compiled later by the guest's own python3, in the chroot.
    """
    args = [
        sys.executable, "-m", "pip", "install",
        "--no-cache-dir", "--no-input", "--disable-pip-version-check",
        "--root-user-action=ignore", "--no-warn-script-location",
        "--require-hashes", "--only-binary=:all:", "--no-compile",
        *_GUEST_PYTHON,
    ]  # fmt: skip
    for platform in _GUEST_PLATFORMS:
        args += ["--platform", platform]
    args += ["--target", str(target), "-r", str(requirements)]
    return args


def _install_guest_python(recipe_dir: Path, site: Path, progress: Progress) -> dict[str, str]:
    """Install the pinned guest packages into ``site``; return {name: version}.

    Does nothing (and returns ``{}``) for a recipe without a requirements file.
    """
    requirements = recipe_dir / GUEST_REQUIREMENTS
    if not requirements.is_file():
        return {}
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise ClawdenError(
            f"pip is not available to {sys.executable}; it installs the guest's Python packages",
            "install pip for the Python that runs clawden (apt-get install python3-pip, "
            "or run clawden from its virtualenv)",
        )
    progress(f"guest python: pip installing {requirements.name} (wheels, hash-checked)")
    run_tool(
        _pip_args(requirements, site),
        "installing the guest's Python packages (pip)",
        f"check that PyPI (or the pip index configured on the host) is reachable and that "
        f"images/{GUEST_REQUIREMENTS} pins every dependency with the right hash",
    )
    # Console scripts carry the host interpreter's path in their #! line; the
    # agent never runs them.
    shutil.rmtree(site / "bin", ignore_errors=True)
    return _site_packages(site)


def _site_packages(site: Path) -> dict[str, str]:
    """{normalised name: version} of the distributions pip put in ``site``."""
    found: dict[str, str] = {}
    for metadata in sorted(site.glob("*.dist-info/METADATA")):
        headers = HeaderParser().parsestr(metadata.read_text(errors="replace"))
        name, version = headers.get("Name"), headers.get("Version")
        if name and version:
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def _mmdebstrap_args(
    recipe_dir: Path,
    guest_dir: Path,
    rootfs: Path,
    mirror: str,
    apt_cache: Path | None,
    site_dir: Path | None = None,
) -> list[str]:
    script = shlex.quote(str((recipe_dir / "customize.sh").resolve()))
    overlay = shlex.quote(str((recipe_dir / "overlay").resolve()))
    guest = shlex.quote(str(guest_dir.resolve()))
    site = shlex.quote(str(site_dir.resolve())) if site_dir is not None else "''"
    args = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        '--aptopt=APT::Install-Recommends "false"',
        f"--include={','.join(_read_list(recipe_dir / 'packages.txt'))}",
    ]
    args += [f"--dpkgopt={rule}" for rule in _read_list(recipe_dir / "dpkg-excludes.txt")]
    args.append(f'--essential-hook=sh {script} essential "$1" {overlay} {guest}')
    if apt_cache is not None:
        # mmdebstrap's documented recipe for reusing downloaded .debs.
        cache = shlex.quote(str(apt_cache.resolve()))
        args += [
            "--skip=download/empty",
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        ]
    args.append(f'--customize-hook=sh {script} customize "$1" {overlay} {guest} {site}')
    args += [mf.SUITE, str(rootfs), mirror]
    return args


def _packages(rootfs: Path) -> dict[str, str]:
    out = run_tool(
        [
            "dpkg-query",
            f"--admindir={rootfs / 'var/lib/dpkg'}",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ],
        "listing the image's packages",
        "check that the bootstrap completed",
    )
    packages: dict[str, str] = {}
    for line in out.splitlines():
        status, name, version = line.split("\t")
        if status.startswith("ii"):
            packages[name] = version
    return packages


def _take_boot_files(rootfs: Path, out: Path) -> str:
    """Copy the kernel and initrd out of /boot; return the kernel release."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ClawdenError(
            f"expected one kernel in the image, found {len(kernels)}",
            "keep exactly one linux-image package in images/packages.txt",
        )
    release = kernels[0].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{release}"
    if not initrd.is_file():
        raise ClawdenError(f"no initrd for kernel {release}", "check initramfs-tools in the recipe")
    # The kernel QEMU boots is the bzImage's own payload, unpacked here once
    # rather than in the guest at every boot (appliance/image/pvh.py).
    (out / mf.KERNEL).write_bytes(unpack_pvh_kernel(kernels[0].read_bytes()))
    (out / mf.KERNEL).chmod(0o644)
    shutil.copyfile(initrd, out / mf.INITRD)
    (out / mf.INITRD).chmod(0o644)
    # QEMU gets the initrd directly; a copy inside the read-only root is dead weight.
    initrd.unlink()
    return release


def _du_bytes(rootfs: Path) -> tuple[int, int]:
    """(allocated bytes, number of inodes) of a tree, counting hard links once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                total += st.st_blocks * 512
    return total, len(seen) + 1


def _make_root_fs(rootfs: Path, raw: Path) -> int:
    used, inodes = _du_bytes(rootfs)
    size_mib = int(used * _HEADROOM_RATIO / (1 << 20)) + _HEADROOM_MIB
    # No journal: the root is mounted read-only in every claw and never written.
    # No reserved blocks for the same reason. 1 KiB blocks whatever the size
    # (mke2fs would switch to 4 KiB above 512 MiB): the root is some 17 000
    # mostly small files (Python sources and bytecode), and 4 KiB blocks cost
    # about 30 MiB more in the qcow2 for nothing.
    run_tool(
        [
            "mkfs.ext4", "-q", "-F", "-L", "clawroot", "-m", "0", "-O", "^has_journal",
            "-b", "1024", "-N", str(int(inodes * 1.2) + 1024), "-d", rootfs, raw, f"{size_mib}M",
        ],
        "creating the root file system",
        "check free space in the images directory",
    )  # fmt: skip
    return size_mib << 20


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target`` with renames only (atomic on one file system)."""
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)


def _cached(target: Path, progress: Progress) -> mf.GoldenImage | None:
    if not (target / mf.MANIFEST).is_file():
        return None
    try:
        image = mf.load_image(target)
        mf.verify_image(image)
    except IntegrityError as exc:
        progress(f"existing image is damaged ({exc.what}); rebuilding")
        return None
    return image


def build_image(
    images_root: Path,
    recipe_dir: Path,
    progress: Progress,
    force: bool = False,
    *,
    guest_dir: Path = GUEST_DIR,
    apt_cache: Path | None = None,
    mirror: str | None = None,
) -> mf.GoldenImage:
    """Build (or return the cached) golden image for the recipe in ``recipe_dir``.

    ``apt_cache`` keeps downloaded .debs between builds (optional);
    ``mirror`` defaults to ``$CLAWDEN_DEBIAN_MIRROR`` or deb.debian.org.
    """
    started = time.monotonic()
    recipe_hex = mf.recipe_hash(recipe_dir, guest_dir)
    version = mf.version_for(recipe_hex)
    target = images_root / version
    if not force:
        cached = _cached(target, progress)
        if cached is not None:
            progress(f"cached: {version} is built and verified ({target})")
            return cached
    if os.geteuid() != 0:
        raise ClawdenError(
            "building the golden image needs root (mmdebstrap chroots and sets file owners)",
            "run it as root: `sudo clawden image build`",
        )
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img", "dpkg-query"):
        require_tool(tool)
    mirror = mirror or os.environ.get(MIRROR_ENV) or DEFAULT_MIRROR
    images_root.mkdir(parents=True, exist_ok=True)
    if apt_cache is not None:
        apt_cache.mkdir(parents=True, exist_ok=True)
    with _build_lock(images_root):
        for stale in images_root.glob(".build-*"):
            progress(f"removing leftovers of an interrupted build: {stale.name}")
            _remove_build_dir(stale)
        work = Path(tempfile.mkdtemp(prefix=f".build-{version}-", dir=images_root))
        try:
            image = _build_in(work, target, recipe_dir, guest_dir, recipe_hex, mirror,
                              apt_cache, progress, started)  # fmt: skip
        finally:
            _remove_build_dir(work)
    return image


def _build_in(
    work: Path,
    target: Path,
    recipe_dir: Path,
    guest_dir: Path,
    recipe_hex: str,
    mirror: str,
    apt_cache: Path | None,
    progress: Progress,
    started: float,
) -> mf.GoldenImage:
    version = target.name
    rootfs, raw, out = work / "rootfs", work / "root.ext4", work / "out"
    out.mkdir(mode=0o755)
    out.chmod(0o755)

    # Before the bootstrap: a missing or mismatched pin fails in seconds.
    phase = time.monotonic()
    site = work / "site"
    guest_python = _install_guest_python(recipe_dir, site, progress)
    guest_python_s = time.monotonic() - phase
    if guest_python:
        progress(f"guest python: {len(guest_python)} packages in {guest_python_s:.1f}s")

    progress(f"bootstrapping Debian {mf.SUITE} (mmdebstrap minbase) from {mirror}")
    phase = time.monotonic()
    stream_tool(
        _mmdebstrap_args(
            recipe_dir, guest_dir, rootfs, mirror, apt_cache, site if guest_python else None
        ),
        lambda line: progress(f"  {line}"),
        "mmdebstrap",
        "read the lines above; check that the Debian mirror is reachable",
    )
    run_tool(
        ["sh", recipe_dir / "customize.sh", "finalize", rootfs, recipe_dir / "overlay", guest_dir],
        "finalizing the image (customize.sh finalize)",
        "fix images/customize.sh and rebuild",
    )
    bootstrap_s = time.monotonic() - phase
    shutil.rmtree(site, ignore_errors=True)

    packages = _packages(rootfs)
    release = _take_boot_files(rootfs, out)
    phase = time.monotonic()
    size = _make_root_fs(rootfs, raw)
    shutil.rmtree(rootfs)
    progress(f"filesystem: ext4 of {_mib(size)} in {time.monotonic() - phase:.1f}s")

    phase = time.monotonic()
    progress("converting to qcow2")
    run_tool(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out / mf.GOLDEN],
        "converting the root file system to qcow2",
        "check free space in the images directory",
    )
    raw.unlink()
    (out / mf.GOLDEN).chmod(0o644)
    progress(f"converted in {time.monotonic() - phase:.1f}s")

    progress("hashing artefacts")
    artefacts = {name: mf.artefact_entry(out / name) for name in mf.ARTEFACTS}
    manifest: dict[str, Any] = {
        "version": version,
        "suite": mf.SUITE,
        "recipe_hash": recipe_hex,
        "build_format": mf.BUILD_FORMAT,
        "mirror": mirror,
        "kernel_release": release,
        "kernel_cmdline": (
            "root=/dev/vda ro console=ttyS0 panic=-1 net.ifnames=0"
            " loglevel=6 systemd.show_status=auto"
        ),
        "root_fs_bytes": size,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_seconds": round(time.monotonic() - started, 1),
        "bootstrap_seconds": round(bootstrap_s, 1),
        "artefacts": artefacts,
        "packages": packages,
        "guest_python": guest_python,
    }
    mf.write_manifest(out, manifest)
    _replace_dir(out, target)
    image = mf.load_image(target)
    sizes = ", ".join(f"{name} {_mib(entry['bytes'])}" for name, entry in artefacts.items())
    progress(f"done: {version} ({sizes}; {len(packages)} packages) in {manifest['build_seconds']}s")
    return image
