"""``clawden claw status``: the store's view, libvirt's view and the channel's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from appliance.controller import rpc
from appliance.controller.context import Context
from appliance.controller.domains import find_domain
from appliance.controller.guestfiles import ClawFiles
from appliance.core.errors import Unavailable
from appliance.core.textsafe import printable


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _allocated_mib(path: Path) -> str:
    try:
        return f"{path.stat().st_blocks * 512 / 2**20:.0f} MiB used"
    except OSError:
        return "missing"


def claw_status_lines(ctx: Context, name: str) -> Iterator[str]:
    claw = ctx.claws.require(name)
    files = ClawFiles.for_claw(ctx.settings, name)
    domain = find_domain(ctx, name)
    dom, state = domain.name, domain.state
    yield f"claw:      {claw.name}  (member {printable(claw.member)})"
    yield f"desired:   {claw.state.value}"
    yield f"domain:    {dom}: {state.value if state else 'not defined'}"
    if domain.legacy:
        yield "           (its name from before installation tags: renamed when it next stops)"
    yield f"resources: {claw.vcpus} vCPU, {claw.memory_mib} MiB"
    pid = ctx.hypervisor.pid(dom) if state is not None else None
    if pid is not None:
        rss = rss_kib(pid)
        if rss is not None:
            yield f"qemu:      pid {pid}, RSS {rss / 1024:.0f} MiB"
    yield f"image:     {claw.image_version}"
    yield f"data disk: {files.data} ({_allocated_mib(files.data)})"
    busy = ctx.ops.running_for(name)
    if busy is not None:
        note = f" — last error: {printable(busy.error)}" if busy.error else ""
        yield f"operation: {busy.kind} #{busy.id} at step {busy.step}{note}"
    try:
        reply = rpc.call(ctx.settings.controller_socket, {"op": "status"}, timeout=5)
    except Unavailable:
        yield "channel:   unknown (controller not running: `clawden serve`)"
        return
    channel = reply.get("channels", {}).get(name)
    if channel is None:
        yield "channel:   not supervised (claw not running)"
    else:
        err = f" ({printable(channel['last_error'])})" if channel.get("last_error") else ""
        yield f"channel:   {channel['state']}, connected {channel['connects']} time(s){err}"
