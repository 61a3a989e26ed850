"""Host memory a claw's QEMU process really holds, split into the guest's RAM
and QEMU's own overhead, from ``/proc/PID/smaps``.

Plain RSS mixes two things an operator must tell apart: guest RAM the guest
has touched (and not given back through the balloon's free page reporting)
and what QEMU costs on top of it (the TCG translation cache, its heap and
device state, its binary and libraries). The guest's RAM is the anonymous
mapping whose size equals the claw's memory; the TCG translation cache is the
anonymous mapping QEMU maps read-write-execute.

Used by ``claw status`` and by ``bench/memory.py``. No libvirt: only /proc,
which for a ``qemu:///system`` QEMU (user ``libvirt-qemu``) needs root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


@dataclass
class Mapping:
    """One mapping of ``/proc/PID/smaps``: its header line and sizes in KiB."""

    header: str
    size_kib: int = 0
    rss_kib: int = 0
    pss_kib: int = 0

    @property
    def anonymous(self) -> bool:
        # "addr perms offset dev inode [path]": anonymous = inode 0, no path.
        parts = self.header.split()
        return len(parts) == 5 and parts[4] == "0"

    @property
    def file_backed(self) -> bool:
        # A real file has an inode; [heap], [stack] and friends have none.
        parts = self.header.split()
        return len(parts) >= 6 and parts[4] != "0"

    @property
    def executable_anonymous(self) -> bool:
        # TCG's translation buffer: anonymous and rwx (the size of the
        # configured tb-cache, less a guard page).
        return self.anonymous and self.header.split()[1].startswith("rwx")


def read_smaps(pid: int) -> list[Mapping]:
    """Every mapping of ``pid`` (OSError if it is gone or not readable)."""
    return parse_smaps(Path(f"/proc/{pid}/smaps").read_text())


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a ``/proc/PID/smaps`` text."""
    maps: list[Mapping] = []
    for line in text.splitlines():
        if _HEADER.match(line):
            maps.append(Mapping(line))
            continue
        key, _, rest = line.partition(":")
        if maps and key in ("Size", "Rss", "Pss"):
            kib = int(rest.split()[0])
            if key == "Size":
                maps[-1].size_kib = kib
            elif key == "Rss":
                maps[-1].rss_kib = kib
            else:
                maps[-1].pss_kib = kib
    return maps


def rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of the whole process in KiB (OSError if it is gone)."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


@dataclass(frozen=True)
class QemuMemory:
    """A QEMU process's memory in KiB. RSS counts every resident page;
    PSS splits pages shared with other processes (QEMU's binary and
    libraries, shared by all claws) between them."""

    pid: int
    rss_kib: int
    pss_kib: int
    guest_ram_kib: int  # the size of the guest's RAM mapping
    guest_resident_kib: int  # of it, resident on the host
    guest_pss_kib: int
    tb_cache_mapped_kib: int  # 0 without TCG
    tb_cache_resident_kib: int
    tb_cache_pss_kib: int
    file_backed_rss_kib: int
    file_backed_pss_kib: int
    other_anonymous_rss_kib: int
    other_anonymous_pss_kib: int

    @property
    def overhead_rss_kib(self) -> int:
        """What QEMU holds beyond the guest's resident RAM."""
        return self.rss_kib - self.guest_resident_kib

    @property
    def overhead_pss_kib(self) -> int:
        return self.pss_kib - self.guest_pss_kib


def split_memory(pid: int, maps: list[Mapping], guest_mib: int) -> QemuMemory:
    """Split a QEMU's ``maps`` into guest RAM and overhead; ValueError if
    the guest's RAM mapping is not unique. The totals are the sums of the
    same ``maps`` (what smaps_rollup adds up), so the parts always add up
    to them: one reading, not two taken a moment apart."""
    want = guest_mib * 1024
    ram = [m for m in maps if m.anonymous and m.size_kib == want]
    if len(ram) != 1:
        sizes = sorted({m.size_kib for m in maps if m.anonymous}, reverse=True)[:5]
        raise ValueError(
            f"expected one anonymous {guest_mib} MiB mapping in QEMU {pid}, "
            f"found {len(ram)} (largest anonymous sizes KiB: {sizes})"
        )
    guest = ram[0]
    tb = [m for m in maps if m.executable_anonymous]
    files = [m for m in maps if m.file_backed]
    anon = [m for m in maps if not m.file_backed and m is not guest and m not in tb]
    return QemuMemory(
        pid=pid,
        rss_kib=sum(m.rss_kib for m in maps),
        pss_kib=sum(m.pss_kib for m in maps),
        guest_ram_kib=guest.size_kib,
        guest_resident_kib=guest.rss_kib,
        guest_pss_kib=guest.pss_kib,
        tb_cache_mapped_kib=sum(m.size_kib for m in tb),
        tb_cache_resident_kib=sum(m.rss_kib for m in tb),
        tb_cache_pss_kib=sum(m.pss_kib for m in tb),
        file_backed_rss_kib=sum(m.rss_kib for m in files),
        file_backed_pss_kib=sum(m.pss_kib for m in files),
        other_anonymous_rss_kib=sum(m.rss_kib for m in anon),
        other_anonymous_pss_kib=sum(m.pss_kib for m in anon),
    )


def qemu_memory(pid: int, guest_mib: int) -> QemuMemory:
    """The memory of the QEMU ``pid`` running a ``guest_mib`` guest.
    OSError if the process is gone or unreadable; ValueError if its guest
    RAM cannot be told apart."""
    return split_memory(pid, read_smaps(pid), guest_mib)
