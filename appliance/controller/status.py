"""``clawden claw status``: the store's view, libvirt's view, the channel's,
and the claw's quotas (what it used of each limit)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from appliance.controller import rpc
from appliance.controller.context import Context
from appliance.controller.domains import find_domain
from appliance.controller.guestfiles import ClawFiles
from appliance.core.errors import ClawdenError, Unavailable
from appliance.core.quotas import (
    APPROVAL_WINDOW,
    CHANNEL_OPENS_PER_SECOND,
    DEFAULT_QUOTAS,
    MAX_CLAW_JOBS,
    REQUEST_BURST,
    REQUESTS_PER_SECOND,
    Quotas,
)
from appliance.core.textsafe import printable
from appliance.hypervisor.qemu_memory import QemuMemory, qemu_memory
from appliance.llm.config import load_llm_config


def rss_kib(pid: int) -> int | None:
    """Resident memory of a process, from /proc (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def qemu_line(pid: int, guest_mib: int) -> str | None:
    """``claw status``'s ``qemu:`` line: the host memory this claw holds.

    RSS alone cannot say whether a claw is big because its guest uses (or
    never gave back) its RAM or because QEMU itself costs that much, so the
    line splits it (docs/hypervisor.md#memory). Falls back to bare VmRSS
    when smaps cannot be read or split (not root, an older layout); None if
    the process is gone."""
    try:
        mem: QemuMemory | None = qemu_memory(pid, guest_mib)
    except (OSError, ValueError):
        mem = None
    if mem is None:
        rss = rss_kib(pid)
        return None if rss is None else f"pid {pid}, RSS {_mib(rss)}"
    tb = (
        f" (TCG translation cache {_mib(mem.tb_cache_resident_kib)})"
        if mem.tb_cache_mapped_kib
        else ""
    )
    return (
        f"pid {pid}, RSS {_mib(mem.rss_kib)} held on the host: "
        f"guest RAM {_mib(mem.guest_resident_kib)} of {_mib(mem.guest_ram_kib)} resident, "
        f"QEMU overhead {_mib(mem.overhead_rss_kib)}{tb}"
    )


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
        line = qemu_line(pid, claw.memory_mib)
        if line is not None:
            yield f"qemu:      {line}"
    yield f"image:     {claw.image_version}"
    yield f"data disk: {files.data} ({_allocated_mib(files.data)})"
    busy = ctx.ops.running_for(name)
    if busy is not None:
        note = f" — last error: {printable(busy.error)}" if busy.error else ""
        yield f"operation: {busy.kind} #{busy.id} at step {busy.step}{note}"
    try:
        reply: dict[str, Any] | None = rpc.call(
            ctx.settings.controller_socket, {"op": "status"}, timeout=5
        )
    except Unavailable:
        reply = None
    if reply is None:
        yield "channel:   unknown (controller not running: `clawden serve`)"
    else:
        channel = reply.get("channels", {}).get(name)
        if channel is None:
            yield "channel:   not supervised (claw not running)"
        else:
            err = f" ({printable(channel['last_error'])})" if channel.get("last_error") else ""
            yield f"channel:   {channel['state']}, connected {channel['connects']} time(s){err}"
    refused = None if reply is None else reply.get("refusals", {}).get(name, {})
    yield from quota_lines(ctx, name, refused)


def quota_lines(
    ctx: Context,
    name: str,
    refused: Mapping[str, int] | None,
    quotas: Quotas = DEFAULT_QUOTAS,
) -> Iterator[str]:
    """What the claw used of each quota (docs/security.md#quotas); ``refused``
    is the controller's in-memory count (None: the controller is not running)."""
    store = ctx.store
    now = store.clock()
    used = store.messages.usage(name, now)
    asked = len(store.approvals.asked_since(name, now - APPROVAL_WINDOW))
    pending = store.approvals.pending_count(name)
    calls = store.usage.period_totals(name, now)[0].requests
    yield "quotas:"
    yield (
        f"  messages:  {used.sent_today} today, {used.bytes_today} of "
        f"{quotas.message_bytes_per_day} bytes (UTC day); at most "
        f"{quotas.messages_per_minute:g} a minute, bursts of {quotas.message_burst}"
    )
    yield f"  backlog:   {used.backlog} of {quotas.message_backlog} messages not delivered yet"
    yield (
        f"  approvals: {asked} of {quotas.approvals_per_hour} in the last hour, "
        f"{pending} of {quotas.approvals_pending} pending"
    )
    yield f"  schedules: {store.schedules.claw_made(name)} of {MAX_CLAW_JOBS} made by the claw"
    try:
        rpm = load_llm_config(ctx.settings.home).policy_for(name).requests_per_minute
        rate = (
            f"the gateway allows {rpm} a minute (llm.toml)" if rpm is not None else "no rate limit"
        )
    except ClawdenError as exc:
        rate = f"rate unknown: {printable(exc.what)}"
    yield f"  llm calls: {calls} today; {rate}"
    yield (
        f"  pace:      {REQUESTS_PER_SECOND:g} requests a second after a burst of "
        f"{REQUEST_BURST} (all host services); {CHANNEL_OPENS_PER_SECOND:g} connections "
        "a second; past it requests wait their turn"
    )
    if refused is None:
        yield "  over quota: unknown (controller not running)"
    elif not refused:
        yield "  over quota: none since the controller started"
    else:
        detail = ", ".join(f"{quota} {n}" for quota, n in sorted(refused.items()))
        total = sum(refused.values())
        yield f"  over quota: {total} since the controller started ({detail})"
