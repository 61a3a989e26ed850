"""Boot a golden image with plain QEMU (no libvirt) and time boot-to-SSH.

Mints fresh keys, builds the three per-claw disks, starts QEMU with the one
virtio-serial port on a unix socket, and measures seconds from QEMU's start
until a paramiko Transport over that socket has pinned the guest's host key
and authenticated as ``claw``. Then runs ``ip -br link`` (must show only
``lo``: the VM has no NIC), closes the transport and times a reconnect
(the guest's control service must have started a fresh sshd).

    python bench/plain_qemu_boot.py [IMAGE_DIR]      # default: latest image

Prints one JSON object. Importable: ``boot_plain_qemu(...) -> float``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from appliance.channel import keys as channel_keys
from appliance.channel.manager import HANG_UP_PAUSE
from appliance.channel.transport import (
    ChannelTarget,
    agent_command_line,
    disconnect,
    open_transport,
    run_command,
)
from appliance.config import Settings
from appliance.controller.guestfiles import KERNEL_CMDLINE
from appliance.core.errors import Unavailable
from appliance.image.manifest import GoldenImage, latest_image, load_image
from provisioning import disks, keys

# The claw's own command line: the baseline must print as little to the
# emulated serial port as a claw does, or the ratio measures console output.
CMDLINE = KERNEL_CMDLINE
CHANNEL = "org.clawden.control"


@dataclass
class BootResult:
    boot_to_ssh_s: float = 0.0
    reconnect_s: float = 0.0
    ip_link: str = ""
    checks: dict[str, str] = field(default_factory=dict)


def connect(
    sock_path: Path, host_public: str, client: paramiko.PKey, timeout: float
) -> paramiko.Transport:
    """The product's own channel code: wait for the banner, pin, authenticate.
    While the guest boots no banner comes; hang up briefly and try again, as
    the controller's ClawConnection does."""
    target = ChannelTarget("bench", sock_path, host_public, client)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_transport(target)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(HANG_UP_PAUSE)


def run(transport: paramiko.Transport, command: str) -> str:
    out: list[bytes] = []
    status = run_command(transport, command, out.append, lambda _: None, timeout=60)
    if status != 0:
        raise RuntimeError(f"{command!r} exited {status}")
    return b"".join(out).decode().strip()


def _allowed(action: Callable[[], object]) -> str:
    try:
        action()
    except (paramiko.SSHException, paramiko.ChannelException, OSError):
        return "refused"
    return "allowed"


def _policy_checks(transport: paramiko.Transport) -> dict[str, str]:
    """What the authorized_keys options and sshd config let the host do."""
    sftp = transport.open_sftp_client()
    listing = ",".join(sorted(sftp.listdir("/run/clawden")))
    sftp.close()
    checks = {
        "sftp_ls_run_clawden": listing,
        "forward_127.0.0.1:7701": _allowed(
            lambda: transport.request_port_forward("127.0.0.1", 7701)
        ),
        "forward_127.0.0.1:7799": _allowed(
            lambda: transport.request_port_forward("127.0.0.1", 7799)
        ),
        "forward_0.0.0.0:7702": _allowed(lambda: transport.request_port_forward("0.0.0.0", 7702)),
        "local_forward_to_guest": _allowed(
            lambda: transport.open_channel("direct-tcpip", ("127.0.0.1", 7701), ("127.0.0.1", 0))
        ),
        "pty": _allowed(lambda: transport.open_session().get_pty()),
        "listening_sockets": run(
            transport, "ss -Htuln | awk '{print $1, $5}' | sort | tr '\\n' ' '"
        ),
        # The warm agent's socket: systemd's, reachable by the host's login
        # only, not by the agent user (its processes cannot inject events).
        "agent_socket": run(transport, "stat -c '%U:%G %a %F' /run/clawden-agent.sock"),
        "agent_socket_as_agent": run(
            transport,
            "sudo -n /usr/lib/clawden/as-claw socat -u OPEN:/dev/null"
            " UNIX-CONNECT:/run/clawden-agent.sock 2>&1 | grep -o 'Permission denied' || true",
        ),
    }
    transport.cancel_port_forward("127.0.0.1", 7701)
    return checks


def _qemu_boot(image: GoldenImage, memory_mib: int, console: Path, cmdline: str) -> list[str]:
    """The machine both baselines boot: a claw's (q35, TCG, one vCPU), with
    ``image``'s kernel and initrd booted directly, the console to a file."""
    return [
        "qemu-system-x86_64", "-nodefaults", "-nographic", "-machine", "q35", "-accel", "tcg",
        "-m", str(memory_mib), "-smp", "1", "-no-reboot", "-monitor", "none",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
    ]  # fmt: skip


@contextmanager
def qemu_claw(
    image: GoldenImage,
    work: Path,
    memory_mib: int,
    cmdline: str = CMDLINE,
    extra_drives: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """Plain QEMU booting ``image`` the way a claw boots (its three disks in
    ``work``, the control port on ``work/control.sock``); ``extra_drives`` are
    more raw virtio disks (the Lynis audit brings its tools on one)."""
    more = [
        arg for drive in extra_drives for arg in ("-drive", f"file={drive},format=raw,if=virtio")
    ]
    argv = [
        *_qemu_boot(image, memory_mib, work / "console.log", cmdline),
        "-drive", f"file={work / 'root.qcow2'},format=qcow2,if=virtio",
        "-drive", f"file={work / 'seed.img'},format=raw,if=virtio,readonly=on",
        "-drive", f"file={work / 'data.qcow2'},format=qcow2,if=virtio",
        *more,
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=ctl,path={work / 'control.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=ctl,name={CHANNEL}",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The trivial init: klibc's poweroff from the image's own initrd, run as PID 1
# straight after the kernel has booted (no initramfs script, no root mount).
TRIVIAL_INIT = "rdinit=/usr/bin/poweroff"


def boot_trivial_init(image: GoldenImage, work: Path, memory_mib: int = 512) -> float:
    """Seconds from starting QEMU until it exits, having booted the claw's own
    kernel, initrd and command line to an init that powers off at once: the
    floor any boot of this kernel on this machine has to pay."""
    argv = _qemu_boot(image, memory_mib, work / "trivial-console.log", f"{CMDLINE} {TRIVIAL_INIT}")
    started = time.monotonic()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=300, check=False)
    took = time.monotonic() - started
    console = (work / "trivial-console.log").read_text(errors="replace")
    if done.returncode != 0 or "reboot: Power down" not in console:
        raise RuntimeError(f"the trivial init did not power off (exit {done.returncode})")
    return took


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"qemu exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError("qemu did not create the control socket")
        time.sleep(0.02)


def provision_disks(image: GoldenImage, work: Path, name: str) -> tuple[str, paramiko.PKey]:
    """A claw's three disks in ``work``, as provisioning makes them, with fresh
    keys: (the guest's public host key, the host's client key)."""
    host_key = keys.mint_ed25519(f"guest-host@{name}")
    client_key = keys.mint_ed25519(f"clawden-host@{name}")
    disks.create_root_overlay(image.golden, work / "root.qcow2")
    disks.create_data_disk(work / "data.qcow2", 1024)
    disks.create_seed_disk(
        work / "seed.img",
        disks.SeedContent(
            host_private_key=host_key.private_openssh,
            host_public_key=host_key.public_openssh,
            authorized_keys=disks.authorized_keys_line(
                client_key.public_openssh, disks.GUEST_PORTS.values()
            ),
            claw_json=disks.claw_identity(name, name.title()),
        ),
    )
    return host_key.public_openssh, channel_keys.load_private_key(client_key.private_openssh)


def boot_plain_qemu(
    image: GoldenImage,
    work: Path,
    memory_mib: int = 512,
    timeout: float = 300.0,
    result: BootResult | None = None,
) -> float:
    """Provision disks in ``work``, boot, and return seconds to authenticated SSH.
    Fills ``result`` (if given) with the reconnect time and guest checks."""
    result = result if result is not None else BootResult()
    host_key, client = provision_disks(image, work, "bench")
    sock_path = work / "control.sock"

    started = time.monotonic()
    with qemu_claw(image, work, memory_mib) as proc:
        _wait_for_socket(sock_path, proc, 30)
        transport = connect(sock_path, host_key, client, timeout)
        result.boot_to_ssh_s = time.monotonic() - started
        result.ip_link = run(transport, "ip -br link")
        # The login is the host's control user; the agent is reached only
        # through the root-owned helper.
        result.checks["id"] = run(transport, "id")
        result.checks["agent_id"] = run(transport, agent_command_line(["id"]))
        result.checks["root_mount"] = run(transport, "findmnt -no OPTIONS /")
        result.checks["data_mount"] = run(transport, "findmnt -no SOURCE,OPTIONS /data")
        result.checks["home"] = run(transport, "pwd; ls -ld /data/home /data/workspace")
        result.checks.update(_policy_checks(transport))
        disconnect(transport)

        # The host closing must end that sshd; the guest restarts the bridge.
        again = time.monotonic()
        transport = connect(sock_path, host_key, client, timeout=60)
        result.reconnect_s = time.monotonic() - again
        result.checks["after_reconnect"] = run(transport, "echo ok")
        disconnect(transport)
    return result.boot_to_ssh_s


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        image = load_image(Path(argv[1]))
    else:
        found = latest_image(Settings.from_env().images_dir)
        if found is None:
            print("no golden image: run `clawden image build` first", file=sys.stderr)
            return 1
        image = found
    result = BootResult()
    with tempfile.TemporaryDirectory(prefix="clawden-bench-") as tmp:
        boot_plain_qemu(image, Path(tmp), result=result)
    only_lo = [line.split()[0] for line in result.ip_link.splitlines()] == ["lo"]
    print(
        json.dumps(
            {
                "image": image.version,
                "accel": "tcg",
                "boot_to_ssh_s": round(result.boot_to_ssh_s, 2),
                "reconnect_s": round(result.reconnect_s, 2),
                "ip_link": result.ip_link,
                "only_loopback": only_lo,
                "checks": result.checks,
            },
            indent=2,
        )
    )
    return 0 if only_lo else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
