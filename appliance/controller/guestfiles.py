"""Per-claw files on the host, and how they map onto a VM and a channel.

Keys are minted per claw: the guest's SSH host key (its private half goes only
onto the read-only seed disk; the host keeps the public half, pinned) and the
host's client key for that claw (kept by the host; its public half goes into
the guest's authorized_keys, restricted to the service forwards).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.channel.keys import load_private_key
from appliance.channel.transport import ChannelTarget
from appliance.config import Settings
from appliance.controller.context import Context
from appliance.core.domain import (
    Accelerator,
    DirectKernelBoot,
    Disk,
    DiskFormat,
    DomainSpec,
    cpu_quota,
)
from appliance.core.errors import ClawdenError
from appliance.core.model import Claw, domain_name
from appliance.image import GoldenImage
from provisioning.disks import (
    GUEST_PORTS,
    SeedContent,
    authorized_keys_line,
    claw_identity,
    create_seed_disk,
)
from provisioning.keys import fingerprint_sha256, mint_ed25519

GUEST_HOST_KEY = "guest_host"
HOST_CLIENT_KEY = "host_client"
# loglevel=6 and systemd.show_status=auto: under TCG every console byte is a
# trapped write to the emulated UART; the kernel banner, warnings, errors and
# failed units still reach the console (docs/image.md, boot sequence).
KERNEL_CMDLINE = (
    "root=/dev/vda ro console=ttyS0 panic=-1 net.ifnames=0 loglevel=6 systemd.show_status=auto"
)


@dataclass(frozen=True)
class ClawFiles:
    dir: Path
    root: Path
    data: Path
    seed: Path
    console_log: Path
    control_socket: Path

    @classmethod
    def for_claw(cls, settings: Settings, claw: str) -> ClawFiles:
        d = settings.claw_dir(claw)
        return cls(
            dir=d,
            root=d / "root.qcow2",
            data=d / "data.qcow2",
            seed=d / "seed.img",
            console_log=d / "console.log",
            control_socket=d / "control.sock",
        )


def provision_seed(ctx: Context, claw: str, member: str, files: ClawFiles) -> None:
    """Mint both key pairs, write the seed disk, then record the keys.

    The seed is written before the keys are stored: if we die in between, the
    step simply runs again and mints a fresh pair (nothing has used them yet).
    """
    guest = mint_ed25519(comment=f"clawden-guest-{claw}")
    client = mint_ed25519(comment=f"clawden-host-{claw}")
    seed = SeedContent(
        host_private_key=guest.private_openssh,
        host_public_key=guest.public_openssh,
        authorized_keys=authorized_keys_line(client.public_openssh, GUEST_PORTS.values()),
        claw_json=claw_identity(claw, member),
    )
    tmp = files.seed.with_suffix(".img.tmp")
    create_seed_disk(tmp, seed)
    tmp.replace(files.seed)
    guest_fp = fingerprint_sha256(guest.public_openssh)
    ctx.keys.put(claw, GUEST_HOST_KEY, guest.public_openssh, guest_fp)
    ctx.keys.put(
        claw,
        HOST_CLIENT_KEY,
        client.public_openssh,
        fingerprint_sha256(client.public_openssh),
        private_key=client.private_openssh,
    )


def domain_uuid(settings: Settings, claw: str) -> str:
    """Stable per (installation, claw): redefining our own domain never trips
    libvirt's "same name, different UUID" check, while a second installation
    on the same libvirt (a test run beside the appliance) gets other UUIDs —
    so neither ever mistakes the other's domains for its own orphans. The
    string is ``clawden:<home>:<claw>``, as it has always been, so a claw keeps
    its UUID across upgrades (its domain's *name* gained the installation tag)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{settings.installation_key}:{claw}"))


def build_domain_spec(
    settings: Settings, claw: Claw, image: GoldenImage, accelerator: Accelerator
) -> DomainSpec:
    files = ClawFiles.for_claw(settings, claw.name)
    return DomainSpec(
        name=domain_name(settings.installation_tag, claw.name),
        uuid=domain_uuid(settings, claw.name),
        vcpus=claw.vcpus,
        memory_mib=claw.memory_mib,
        accelerator=accelerator,
        boot=DirectKernelBoot(image.kernel, image.initrd, KERNEL_CMDLINE),
        disks=(
            Disk(files.root, "vda", DiskFormat.QCOW2, serial="root"),
            Disk(files.seed, "vdb", DiskFormat.RAW, readonly=True, serial="seed"),
            Disk(files.data, "vdc", DiskFormat.QCOW2, serial="data"),
        ),
        control_socket=files.control_socket,
        console_log=files.console_log,
        cpu_quota=cpu_quota(claw.vcpus, settings.cpu_percent),
    )


def channel_target(ctx: Context, claw: str) -> ChannelTarget:
    guest = ctx.keys.get(claw, GUEST_HOST_KEY)
    client = ctx.keys.get(claw, HOST_CLIENT_KEY)
    if guest is None or client is None or client.private_key is None:
        raise ClawdenError(
            f"claw {claw!r} has no channel keys on record",
            f"destroy and re-create it: `clawden claw destroy {claw} --yes`",
        )
    return ChannelTarget(
        claw=claw,
        socket_path=ClawFiles.for_claw(ctx.settings, claw).control_socket,
        pinned_host_key=guest.public_key,
        client_key=load_private_key(client.private_key),
    )
