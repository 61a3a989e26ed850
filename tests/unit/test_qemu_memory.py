"""The split of a QEMU's memory into guest RAM and overhead (``claw status``,
``bench/memory.py``), on a smaps text shaped like a real TCG claw's."""

from __future__ import annotations

import os

import pytest

from appliance.controller.status import qemu_line
from appliance.hypervisor.qemu_memory import parse_smaps, qemu_memory, split_memory


def _mapping(header: str, size: int, rss: int, pss: int) -> str:
    return (
        f"{header}\nSize:           {size} kB\nKernelPageSize:        4 kB\n"
        f"Rss:            {rss} kB\nPss:            {pss} kB\nShared_Clean:          0 kB\n"
    )


SMAPS = "".join(
    [
        # QEMU's binary: shared with the other claws' QEMUs, so PSS < RSS.
        _mapping(
            "55d0a0000000-55d0a0800000 r-xp 00000000 fe:01 1234    /usr/bin/qemu-system-x86_64",
            8192, 6000, 3000,
        ),
        _mapping("55d0a1000000-55d0a3000000 rw-p 00000000 00:00 0    [heap]", 32768, 20000, 20000),
        # The TCG translation cache: anonymous and rwx.
        _mapping("7f0000000000-7f0003fff000 rwxp 00000000 00:00 0 ", 65532, 65532, 65532),
        # The guest's 512 MiB of RAM, 100 MiB of it resident.
        _mapping("7f1000000000-7f1020000000 rw-p 00000000 00:00 0 ", 524288, 102400, 102400),
        # Another anonymous mapping (a thread's arena).
        _mapping("7f2000000000-7f2000400000 rw-p 00000000 00:00 0 ", 4096, 1000, 1000),
    ]
)  # fmt: skip


def test_the_guest_ram_is_told_apart_from_the_overhead() -> None:
    mem = split_memory(42, parse_smaps(SMAPS), 512)
    assert mem.guest_ram_kib == 524288
    assert mem.guest_resident_kib == 102400
    assert mem.rss_kib == 6000 + 20000 + 65532 + 102400 + 1000
    assert mem.overhead_rss_kib == 6000 + 20000 + 65532 + 1000
    assert mem.overhead_pss_kib == 3000 + 20000 + 65532 + 1000
    assert (mem.tb_cache_mapped_kib, mem.tb_cache_resident_kib) == (65532, 65532)
    assert mem.file_backed_rss_kib == 6000
    assert mem.other_anonymous_rss_kib == 21000  # the heap and the arena
    # The parts add up to the whole.
    assert (
        mem.guest_resident_kib
        + mem.tb_cache_resident_kib
        + mem.file_backed_rss_kib
        + mem.other_anonymous_rss_kib
        == mem.rss_kib
    )


def test_a_guest_size_that_matches_no_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one anonymous 1024 MiB mapping"):
        split_memory(42, parse_smaps(SMAPS), 1024)


def test_status_line_falls_back_to_plain_rss_when_the_split_fails() -> None:
    # This test process has no anonymous mapping of exactly 1 TiB.
    line = qemu_line(os.getpid(), 1 << 20)
    assert line is not None and line.startswith(f"pid {os.getpid()}, RSS ")
    assert "guest RAM" not in line
    with pytest.raises(ValueError):
        qemu_memory(os.getpid(), 1 << 20)


def test_status_line_names_guest_ram_and_overhead(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.controller.status as status

    monkeypatch.setattr(
        status, "qemu_memory", lambda pid, mib: split_memory(pid, parse_smaps(SMAPS), mib)
    )
    assert qemu_line(42, 512) == (
        "pid 42, RSS 190 MiB held on the host: guest RAM 100 MiB of 512 MiB resident, "
        "QEMU overhead 90 MiB (TCG translation cache 64 MiB)"
    )


def test_status_line_is_none_for_a_process_that_is_gone() -> None:
    assert qemu_line(2**22 + 7, 512) is None  # above any pid_max default
