"""Claw VMs end to end: real libvirtd, real golden image, real TCG guests, real sshd."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import xml.etree.ElementTree as ET  # noqa: S405 - virsh's output for our own domain
from collections.abc import Callable

import pytest

from appliance.config import Settings
from appliance.core.domain import cpu_quota
from appliance.core.model import domain_name
from appliance.hypervisor.libvirt_hypervisor import LibvirtHypervisor
from appliance.hypervisor.qemu_memory import QemuMemory, qemu_memory
from tests.integration.conftest import URI, Env

pytestmark = pytest.mark.integration

WHOAMI = (
    'python3 -c "import urllib.request as u;'
    "print(u.urlopen('http://127.0.0.1:7701/v1/whoami', timeout=20).read().decode())\""
)


def _exec(env: Env, claw: str, *cmd: str, check: bool = True) -> tuple[int, str, str]:
    proc = env.run("claw", "exec", claw, "--", *cmd, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"exec {cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


def test_guest_has_no_network_device_and_no_route(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _, links, _ = _exec(clawden_env, "alice", "ip", "-br", "link")
    names = [line.split()[0] for line in links.strip().splitlines()]
    assert names == ["lo"], links
    _, routes4, _ = _exec(clawden_env, "alice", "ip", "-4", "route", "show", "table", "all")
    _, routes6, _ = _exec(clawden_env, "alice", "ip", "-6", "route", "show", "table", "all")
    # Only loopback's own local routes may exist; nothing points anywhere else.
    for line in (routes4 + routes6).strip().splitlines():
        assert " dev lo " in f" {line} ", line


def test_exec_returns_output_exit_code_and_runs_as_claw(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    code, out, err = _exec(
        clawden_env, "alice", "sh", "-c", "id -un; echo to-stderr >&2; exit 7", check=False
    )
    assert code == 7
    assert out == "claw\n"
    assert err == "to-stderr\n"


def test_whoami_names_the_claw_from_its_channel(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    for claw in two_claws:
        _, out, _ = _exec(clawden_env, claw, "sh", "-c", WHOAMI)
        assert json.loads(out) == {"claw": claw}


def test_root_is_read_only_and_data_disk_is_writable(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    code, _, err = _exec(clawden_env, "alice", "sh", "-c", "touch /etc/x", check=False)
    assert code != 0 and "Read-only file system" in err
    _, out, _ = _exec(
        clawden_env, "alice", "sh", "-c", "findmnt -no OPTIONS /; findmnt -no SOURCE /data"
    )
    root_opts, data_source = out.strip().splitlines()
    assert root_opts.split(",")[0] == "ro"
    assert data_source == "/dev/vdc"


def test_golden_image_unchanged_after_claws_ran(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    image_dir = sorted((clawden_env.home / "images").glob("*/manifest.json"))[-1].parent
    manifest = json.loads((image_dir / "manifest.json").read_text())
    _exec(clawden_env, "alice", "sh", "-c", "echo hello > /data/home/touched")
    golden = image_dir / "golden.qcow2"
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    assert digest == manifest["artefacts"]["golden.qcow2"]["sha256"]


def test_console_log_shows_the_boot(clawden_env: Env, two_claws: tuple[str, str]) -> None:
    out = clawden_env.run("claw", "console", "alice").stdout
    assert "Linux version" in out


def test_audit_chain_verifies_after_real_operations(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    proc = clawden_env.run("audit", "verify")
    assert "intact" in proc.stdout
    listing = clawden_env.run("audit", "list").stdout
    assert "claw.create" in listing


# Each attempt prints "<name> created" or "<name> refused <errno>". Without the
# guest hardening, the first five would autoload their protocol's module and
# succeed, and io_uring_setup (syscall 425) would return a descriptor.
SOCKET_PROBE = """
import ctypes, socket
attempts = {
    "appletalk": (socket.AF_APPLETALK, socket.SOCK_DGRAM),
    "sctp": (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP),
    "can": (socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW),
    "alg": (socket.AF_ALG, socket.SOCK_SEQPACKET),
    "vsock": (socket.AF_VSOCK, socket.SOCK_STREAM),
    "tcp": (socket.AF_INET, socket.SOCK_STREAM),
}
for name, args in attempts.items():
    try:
        socket.socket(*args).close()
        print(name, "created")
    except OSError as exc:
        print(name, "refused", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 1, params)
print("io_uring", "created" if fd >= 0 else "refused", ctypes.get_errno())
"""


def test_guest_kernel_loads_no_more_modules(clawden_env: Env, two_claws: tuple[str, str]) -> None:
    _, disabled, _ = _exec(clawden_env, "alice", "cat", "/proc/sys/kernel/modules_disabled")
    _, modprobe, _ = _exec(clawden_env, "alice", "cat", "/proc/sys/kernel/modprobe")
    assert disabled == "1\n"  # clawden-lockdown.service ran, before the claw's sshd
    assert modprobe == "\n"  # and the kernel runs no modprobe helper at all


def test_guest_refuses_unused_socket_families_and_io_uring(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _, out, _ = _exec(clawden_env, "alice", "python3", "-c", SOCKET_PROBE)
    results = {line.split()[0]: line.split()[1:] for line in out.strip().splitlines()}
    for family in ("appletalk", "sctp", "can", "alg", "vsock"):
        assert results[family][0] == "refused", out
    assert results["tcp"] == ["created"], out  # the families a claw needs still work
    assert results["io_uring"] == ["refused", "38"], out  # ENOSYS from the seccomp filter
    _, modules, _ = _exec(clawden_env, "alice", "cat", "/proc/modules")
    loaded = {line.split()[0] for line in modules.splitlines()}
    for module in ("sctp", "appletalk", "can", "can_raw", "af_alg", "vsock", "kcm"):
        assert module not in loaded, modules


def test_data_disk_returns_freed_space_to_the_host(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    _, options, _ = _exec(clawden_env, "alice", "findmnt", "-no", "OPTIONS", "/data")
    assert "discard" in options.strip().split(","), options
    data = clawden_env.home / "claws" / "alice" / "data.qcow2"

    def allocated() -> int:
        return data.stat().st_blocks * 512

    mib = 1024 * 1024
    before = allocated()
    probe = "/data/home/discard-probe"
    _exec(clawden_env, "alice", "sh", "-c", f"head -c 40M /dev/urandom > {probe} && sync")
    written = allocated()
    assert written - before >= 32 * mib, (before, written)
    _exec(clawden_env, "alice", "sh", "-c", f"rm {probe} && sync")
    # ext4 discards at its journal commit; QEMU then punches the clusters out.
    deadline = time.monotonic() + 60
    while allocated() > written - 32 * mib and time.monotonic() < deadline:
        time.sleep(1)
    assert allocated() <= written - 32 * mib, (before, written, allocated())


# Allocates and touches 300 MiB, says so, holds it until the host drops a
# file (never longer than 10 min), then exits: the guest frees it all.
HOLD_MEMORY = """
import os, sys, time
n = 300 << 20
b = bytearray(n)                     # calloc: untouched zero pages so far
b[::4096] = bytes([1]) * (n // 4096)  # touch every page
print("held", flush=True)
end = time.monotonic() + 600
while not os.path.exists("/data/home/balloon-release") and time.monotonic() < end:
    time.sleep(0.5)
print(len(b))
"""
MIB = 1024
# Most of the 300 MiB, so neither the page cache the guest reclaims for them
# nor what it had not yet reported before can pass for the effect.
SHIFT = 200 * MIB


def test_guest_returns_freed_memory_to_the_host(
    clawden_env: Env, two_claws: tuple[str, str]
) -> None:
    """Free page reporting (virtio_balloon) gives the RAM a claw frees back:
    without it a claw that once used 300 MiB holds them on the host until it
    stops."""
    _, modules, _ = _exec(clawden_env, "alice", "cat", "/proc/modules")
    assert "virtio_balloon" in {line.split()[0] for line in modules.splitlines()}, modules
    settings = Settings.from_env(clawden_env.env)
    pid = LibvirtHypervisor(URI).pid(domain_name(settings.installation_tag, "alice"))
    assert pid is not None

    def memory() -> QemuMemory:
        return qemu_memory(pid, 512)  # two_claws are created with the default memory

    def wait_for(done: Callable[[QemuMemory], bool], seconds: float) -> QemuMemory:
        deadline = time.monotonic() + seconds
        mem = memory()
        while not done(mem) and time.monotonic() < deadline:
            time.sleep(1)
            mem = memory()
        return mem

    _exec(clawden_env, "alice", "rm", "-f", "/data/home/balloon-release")
    before = memory()
    holder = clawden_env.popen("claw", "exec", "alice", "--", "python3", "-c", HOLD_MEMORY)
    try:
        # Positive control: the host really pays for the guest's 300 MiB first.
        peak = wait_for(lambda m: m.rss_kib - before.rss_kib >= SHIFT, 300)
        assert peak.rss_kib - before.rss_kib >= SHIFT, (before, peak)
    finally:
        _exec(clawden_env, "alice", "touch", "/data/home/balloon-release")
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0 and out.split() == ["held", str(300 << 20)], (out, err)
    # The guest freed them; its balloon driver reports the free 2 MiB blocks
    # and QEMU drops them from its RSS.
    after = wait_for(lambda m: peak.rss_kib - m.rss_kib >= SHIFT, 300)
    assert peak.rss_kib - after.rss_kib >= SHIFT, (before, peak, after)
    assert after.guest_resident_kib < peak.guest_resident_kib - SHIFT, (peak, after)
    _exec(clawden_env, "alice", "rm", "-f", "/data/home/balloon-release")


def test_claw_domain_has_a_cpu_quota(clawden_env: Env, two_claws: tuple[str, str]) -> None:
    settings = Settings.from_env(clawden_env.env)
    domain = domain_name(settings.installation_tag, "alice")
    xml = subprocess.run(
        ["virsh", "-c", URI, "dumpxml", domain], capture_output=True, text=True, check=True
    ).stdout
    root = ET.fromstring(xml)  # noqa: S314 - libvirt's XML for our own domain
    vcpus = int(root.findtext("vcpu") or "0")
    expected = cpu_quota(vcpus, settings.cpu_percent)
    assert expected is not None, "the integration run expects the default cap"
    assert root.findtext("cputune/period") == str(expected.period_us)
    assert root.findtext("cputune/quota") == str(expected.vcpu_quota_us)
    assert root.findtext("cputune/global_period") == str(expected.period_us)
    assert root.findtext("cputune/global_quota") == str(expected.domain_quota_us)
    # What the running domain's cgroups hold, not only what was defined.
    sched = subprocess.run(
        ["virsh", "-c", URI, "schedinfo", domain], capture_output=True, text=True, check=True
    ).stdout
    live = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in sched.splitlines())
        if sep
    )
    assert live["vcpu_quota"] == str(expected.vcpu_quota_us), sched
    assert live["global_quota"] == str(expected.domain_quota_us), sched
    # It booted without the cap, and the controller put it back once ready.
    said = (clawden_env.home / "controller.log").read_text(errors="replace")
    assert "alice: CPU cap lifted while it boots" in said, said[-2000:]
    assert re.search(r"alice: CPU cap back after \d+\.\d s", said), said[-2000:]
