"""Audit a golden image with Lynis: offline in a chroot, and booted as root
and as the agent user.

A developer tool, not part of the test suite. Run as root on the host:

    .venv/bin/python -m bench.audit_image [IMAGE_DIR] [--out DIR] [--deb LYNIS.deb]
                                          [--only offline,root,claw] [--tests "ID ..."]

``offline`` (about a minute): Lynis as root in a chroot of the golden image's
root file system, mounted read-only on the host; files and configuration
only, no running system (see ``offline_audit``). ``root`` and ``claw`` share
one boot and are slow under TCG (most of an hour each here); they are
described below.

What it does:

1. **Lynis from Debian.** ``apt-get download lynis`` (bookworm's package,
   into ``/var/tmp/clawden-lynis``; nothing is installed on the host) unless
   ``--deb`` names one, unpacked with ``dpkg-deb -x`` and laid out as a
   standalone Lynis tree (``lynis``, ``include/``, ``db/``, ``plugins/``,
   ``default.prf``) plus a ``custom.prf`` that turns the update check and
   uploads off. Lynis never audits the host itself (offline mode runs it in
   a chroot of the image), and the guest has no network.
2. **One boot of the image as a claw.** The same per-claw disks as a real
   claw (fresh overlay on the golden image, seed disk with fresh keys, empty
   data disk), booted with plain QEMU under TCG like
   ``bench/plain_qemu_boot.py``, plus a fourth disk (ext4 ``CLAWAUDIT``) that
   holds the Lynis tree and a runner script.
3. **Privileged audit.** ``systemd.run=`` on the kernel command line (the
   golden image is not changed: systemd's own ``systemd-run-generator``
   makes a one-shot unit from it) mounts ``CLAWAUDIT`` at ``/mnt``, waits
   until ``clawden-control.service`` is up (so lockdown, seed, sysctls and
   mounts are as in any claw), runs ``lynis audit system`` as root, writes its
   report back to that disk, unmounts it and marks itself done in
   ``/run``.
4. **Unprivileged audit.** The host then connects through the claw's real
   channel (paramiko over the virtio-serial port, key-pinned, as ``claw``),
   copies the Lynis tree to ``/data/home`` with SFTP and runs the same audit
   there as ``claw``, under the control service's seccomp filter like every
   host-run command (Lynis' "non-privileged" mode: tests that need root are
   skipped).
5. Both reports (``lynis-report.dat``, ``lynis.log``, the screen output) end
   up in ``--out`` (default ``/var/tmp/clawden-lynis-<UTC time>``), and a
   JSON summary (hardening index, warnings, suggestions, skipped tests) is
   printed and written there as ``summary.json``.

What the boot adds to the audited system, and is therefore not a finding:
the ``CLAWAUDIT`` disk mounted at ``/mnt`` during the root audit, the
``kernel-command-line.service`` unit, and the Lynis copy under
``/data/home`` during the claw audit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paramiko

from appliance.channel.transport import agent_command_line, disconnect, run_command
from appliance.config import Settings
from appliance.image.manifest import GoldenImage, latest_image, load_image
from bench._common import unwind_on_sigterm
from bench.plain_qemu_boot import CMDLINE, connect, provision_disks, qemu_claw

LYNIS_CACHE = Path("/var/tmp/clawden-lynis")
AUDIT_LABEL = "CLAWAUDIT"
ROOT_DONE = "/run/clawden-audit-root-done"
GUEST_DIR = "/data/home/lynis-audit"  # the claw's home is /data/home

# No network exists in the guest; these make sure Lynis does not even try.
CUSTOM_PROFILE = """\
# clawden audit: the VM has no network device. Never check for updates,
# never upload anything.
skip-upgrade-test=yes
upload=no
colors=no
"""

LYNIS_ARGS = "audit system --usecwd --quick --no-colors"

# Runs as root in the guest (kernel-command-line.service), with the audit
# disk mounted at /mnt. `systemctl is-system-running --wait` would wait for
# this very unit, so it waits for the control channel instead.
ROOT_RUNNER = f"""\
#!/bin/sh
set -u
out=/mnt/out
mkdir -p "$out"
i=0
while ! systemctl -q is-active clawden-control.service; do
    i=$((i + 1))
    [ "$i" -gt 600 ] && break
    sleep 1
done
sleep 5
systemctl list-units --no-pager --all > "$out/units.txt" 2>&1
systemctl --failed --no-pager > "$out/failed.txt" 2>&1
findmnt -l > "$out/mounts.txt" 2>&1
set --
[ -s /mnt/tests ] && set -- --tests "$(cat /mnt/tests)"
cd /mnt/lynis
sh ./lynis {LYNIS_ARGS} "$@" --logfile "$out/lynis.log" \\
    --report-file "$out/lynis-report.dat" > "$out/lynis.out" 2>&1
echo $? > "$out/exit"
cd /
sync
umount /mnt
touch {ROOT_DONE}
"""

ROOT_CMDLINE = (
    f"systemd.run=\"/bin/sh -c 'mount -o nosuid,nodev,noexec LABEL={AUDIT_LABEL} /mnt"
    " && exec /bin/sh /mnt/root.sh'\""
    " systemd.run_success_action=none systemd.run_failure_action=none"
    # The generator links default.target to its kernel-command-line.target,
    # but the image's own default.target (multi-user) in /etc wins: pull the
    # service into the boot explicitly, leaving the image's target as it is.
    " systemd.wants=kernel-command-line.service"
)


@dataclass
class Report:
    """What one ``lynis-report.dat`` says."""

    hardening_index: int | None = None
    tests_performed: int | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)
    suggestions: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    values: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hardening_index": self.hardening_index,
            "tests_performed": self.tests_performed,
            "warnings": self.warnings,
            "suggestions": self.suggestions,
            "skipped_tests": self.skipped,
            "lynis_version": (self.values.get("lynis_version") or [""])[0],
            "report_datetime_start": (self.values.get("report_datetime_start") or [""])[0],
        }


def _finding(value: str) -> dict[str, str]:
    # TEST-ID|text|details|solution|  ("-" where empty)
    parts = (value.split("|") + ["", "", "", ""])[:4]
    keys_ = ("test", "text", "details", "solution")
    return {k: ("" if v == "-" else v) for k, v in zip(keys_, parts, strict=True)}


def parse_report(text: str) -> Report:
    """Parse Lynis' ``key=value`` / ``key[]=value`` report format."""
    report = Report()
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.removesuffix("[]")
        report.values.setdefault(key, []).append(value)
        if key == "warning":
            report.warnings.append(_finding(value))
        elif key == "suggestion":
            report.suggestions.append(_finding(value))
        elif key == "skipped_test" or key == "tests_skipped":
            report.skipped.extend(v for v in value.split("|") if v)
        elif key == "hardening_index" and value.isdigit():
            report.hardening_index = int(value)
        elif key == "lynis_tests_done" and value.isdigit():
            report.tests_performed = int(value)
    return report


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# --- Lynis from Debian's package --------------------------------------------


def fetch_lynis(cache: Path, deb: Path | None = None) -> tuple[str, Path]:
    """(version, standalone tree) of Lynis from Debian's package."""
    cache.mkdir(parents=True, exist_ok=True)
    if deb is None:
        found = sorted(cache.glob("lynis_*.deb"))
        if not found:
            say("apt-get download lynis")
            subprocess.run(["apt-get", "download", "lynis"], cwd=cache, check=True)
            found = sorted(cache.glob("lynis_*.deb"))
        deb = found[-1]
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = cache / f"tree-{version}" / "lynis"
    if tree.exists():
        return version, tree
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        x = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
        staged = Path(tmp) / "lynis"
        staged.mkdir()
        shutil.copy(x / "usr/sbin/lynis", staged / "lynis")
        for name in ("include", "db"):
            shutil.copytree(x / "usr/share/lynis" / name, staged / name)
        shutil.copytree(x / "etc/lynis/plugins", staged / "plugins")
        shutil.copy(x / "etc/lynis/default.prf", staged / "default.prf")
        (staged / "custom.prf").write_text(CUSTOM_PROFILE)
        # Lynis refuses include files writable by group or others.
        for path in [staged, *staged.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or path.name == "lynis" else 0o644)
        tree.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(tree)
    return version, tree


def make_audit_disk(tree: Path, dest: Path, tests: str = "") -> None:
    """Raw ext4 ``CLAWAUDIT`` with the Lynis tree, the root runner and the
    test IDs to limit the run to (empty: all)."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "disk"
        stage.mkdir()
        shutil.copytree(tree, stage / "lynis")
        (stage / "root.sh").write_text(ROOT_RUNNER)
        (stage / "tests").write_text(tests)
        (stage / "out").mkdir()
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", AUDIT_LABEL, "-E", "root_owner=0:0",
             "-d", str(stage), str(dest), "64M"],
            check=True,
        )  # fmt: skip


def read_audit_disk(disk: Path, dest: Path) -> None:
    """Copy ``/out`` of the audit disk to ``dest`` without mounting it."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump /out {dest}", str(disk)], check=True, capture_output=True
    )


# --- the boot ----------------------------------------------------------------


def _run(transport: paramiko.Transport, command: str, timeout: float = 120) -> tuple[int, str]:
    """``command`` as the agent user (the host logs in as clawctl), the way
    `claw exec` runs it: what a compromised claw sees."""
    out: list[bytes] = []
    line = agent_command_line(["sh", "-c", command])
    status = run_command(transport, line, out.append, out.append, timeout=timeout)
    return status, b"".join(out).decode(errors="replace")


def _sftp_put_tree(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    sftp.mkdir(remote, 0o700)
    for path in sorted(local.rglob("*")):
        target = f"{remote}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            sftp.mkdir(target, 0o700)
        else:
            sftp.put(str(path), target)
            sftp.chmod(target, 0o700 if path.name == "lynis" else 0o600)


def _claw_audit(transport: paramiko.Transport, tree: Path, out: Path, tests: str) -> int:
    sftp = transport.open_sftp_client()
    try:
        _run(transport, f"rm -rf {GUEST_DIR}")
        sftp.mkdir(GUEST_DIR, 0o700)
        _sftp_put_tree(sftp, tree, f"{GUEST_DIR}/lynis")
        say("claw: Lynis copied over SFTP, auditing as claw")
        status, text = _run(
            transport,
            f"cd {GUEST_DIR}/lynis && sh ./lynis {LYNIS_ARGS}"
            + (f" --tests {shlex.quote(tests)}" if tests else "")
            + f" --logfile {GUEST_DIR}/lynis.log --report-file {GUEST_DIR}/lynis-report.dat",
            timeout=3600,
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "lynis.out").write_text(text)
        for name in ("lynis.log", "lynis-report.dat"):
            sftp.get(f"{GUEST_DIR}/{name}", str(out / name))
        for name, command in (
            ("id.txt", "id"),
            ("mounts.txt", "findmnt -l"),
            ("tmp.txt", "findmnt -no OPTIONS /tmp; touch /tmp/x && echo /tmp writable"),
        ):
            (out / name).write_text(_run(transport, command)[1])
        _run(transport, f"rm -rf {GUEST_DIR}")
    finally:
        sftp.close()
    return status


def audit(
    image: GoldenImage, tree: Path, out: Path, modes: set[str], memory_mib: int, tests: str = ""
) -> None:
    with tempfile.TemporaryDirectory(prefix="clawden-audit-boot-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o711)
        host_public, client = provision_disks(image, work, "audit")
        make_audit_disk(tree, work / "audit.img", tests)
        cmdline = CMDLINE + (" " + ROOT_CMDLINE if "root" in modes else "")
        say(f"booting {image.version} (TCG, 1 vCPU, {memory_mib} MiB)")
        started = time.monotonic()
        with qemu_claw(image, work, memory_mib, cmdline, (str(work / "audit.img"),)):
            sock = work / "control.sock"
            while not sock.exists():
                time.sleep(0.1)
            transport = connect(sock, host_public, client, timeout=600)
            say(f"channel up after {time.monotonic() - started:.0f} s")
            if "root" in modes:
                say("root: waiting for the privileged audit (kernel-command-line.service)")
                deadline = time.monotonic() + 3600
                while _run(transport, f"test -e {ROOT_DONE}")[0] != 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the root audit did not finish within an hour")
                    time.sleep(10)
                say(f"root: done after {time.monotonic() - started:.0f} s")
            if "claw" in modes:
                status = _claw_audit(transport, tree, out / "claw", tests)
                say(f"claw: Lynis exited {status} after {time.monotonic() - started:.0f} s")
            disconnect(transport)
        shutil.copy(work / "console.log", out / "console.log")
        if "root" in modes:
            read_audit_disk(work / "audit.img", out)
            (out / "out").rename(out / "root")


# --- offline: the image's file system in a chroot on the host ---------------

OFFLINE_TMPFS = ("tmp", "run", "var/log", "var/tmp", "dev")
OFFLINE_DEVICES = {"null": (1, 3), "zero": (1, 5), "random": (1, 8), "urandom": (1, 9)}


def offline_audit(image: GoldenImage, tree: Path, out: Path, tests: str = "") -> int:
    """Lynis as root in a chroot of the golden image's root file system,
    mounted read-only from a raw copy (the golden qcow2 is only read).

    Native speed (about a minute, where a TCG guest takes most of an hour),
    and it sees every file and setting as built. It sees no running system:
    no /proc or /sys is mounted (the host's would be audited instead), so the
    kernel, process, sysctl and service-state tests skip or judge the host's
    ``uname``; only tmpfs on /tmp, /run, /var/log, /var/tmp and a /dev with
    null, zero, random and urandom are added.
    """
    with tempfile.TemporaryDirectory(prefix="clawden-audit-offline-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        raw, mnt = work / "root.raw", work / "root"
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(image.golden), str(raw)], check=True
        )
        mnt.mkdir()
        subprocess.run(["mount", "-o", "ro,loop,noload", str(raw), str(mnt)], check=True)
        try:
            for sub in OFFLINE_TMPFS:
                mode = "1777" if sub in ("tmp", "var/tmp") else "0755"
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"mode={mode},nosuid", "tmpfs", str(mnt / sub)],
                    check=True,
                )
            for name, (major, minor) in OFFLINE_DEVICES.items():
                subprocess.run(
                    ["mknod", "-m", "666", str(mnt / "dev" / name), "c", str(major), str(minor)],
                    check=True,
                )
            shutil.copytree(tree, mnt / "tmp/lynis")
            (mnt / "tmp/out").mkdir()
            command = (
                f"cd /tmp/lynis && sh ./lynis {LYNIS_ARGS}"
                + (f" --tests {shlex.quote(tests)}" if tests else "")
                + " --logfile /tmp/out/lynis.log --report-file /tmp/out/lynis-report.dat"
            )
            say("offline: Lynis in a chroot of the image's root file system")
            proc = subprocess.run(
                ["chroot", str(mnt), "/bin/sh", "-c", command],
                capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )  # fmt: skip
            out.mkdir(parents=True, exist_ok=True)
            (out / "lynis.out").write_text(proc.stdout + proc.stderr)
            for name in ("lynis.log", "lynis-report.dat"):
                shutil.copy(mnt / "tmp/out" / name, out / name)
        finally:
            subprocess.run(["umount", "-R", str(mnt)], check=False)
    return proc.returncode


def summarise(out: Path, lynis_version: str, image: GoldenImage) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "image": image.version,
        "lynis_package": lynis_version,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    for mode in ("offline", "root", "claw"):
        report = out / mode / "lynis-report.dat"
        if report.exists():
            summary[mode] = parse_report(report.read_text(errors="replace")).as_dict()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("image", nargs="?", type=Path, help="image directory (default: latest)")
    p.add_argument("--out", type=Path, help="results directory")
    p.add_argument("--deb", type=Path, help="a lynis .deb to use instead of apt-get download")
    p.add_argument(
        "--only",
        default="offline,root,claw",
        help="any of offline, root, claw (default: all three)",
    )
    p.add_argument("--tests", default="", help='only these Lynis test IDs ("KRNL-6000 BANN-7126")')
    p.add_argument("--memory", type=int, default=768, help="guest MiB (default 768)")
    args = p.parse_args(argv)
    unwind_on_sigterm()  # a killed run still stops its VM and removes its disks
    modes = {m for m in args.only.split(",") if m}
    if not modes <= {"offline", "root", "claw"} or not modes:
        p.error("--only takes offline, root and/or claw, comma-separated")
    if args.image is not None:
        image = load_image(args.image)
    else:
        found = latest_image(Settings.from_env().images_dir)
        if found is None:
            print("no golden image: run `clawden image build` first", file=sys.stderr)
            return 1
        image = found
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or Path(f"/var/tmp/clawden-lynis-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    version, tree = fetch_lynis(LYNIS_CACHE, args.deb)
    say(f"Lynis {version} (Debian package), tree {tree}")
    if "offline" in modes:
        offline_audit(image, tree, out / "offline", args.tests)
    if modes & {"root", "claw"}:
        audit(image, tree, out, modes, args.memory, args.tests)
    summary = summarise(out, version, image)
    print(json.dumps(summary, indent=2))
    say(f"reports in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
