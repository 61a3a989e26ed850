"""The kernel unpacking that lets QEMU boot a claw's kernel through PVH,
on synthetic bzImages built here (the real kernel is unpacked and booted by
every image build and integration test)."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from appliance.image.pvh import KernelFormatError, has_pvh_entry, payload, unpack_pvh_kernel

SETUP_SECTS = 3


def _elf(notes: list[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 with one PT_NOTE segment holding ``notes``."""
    body = b""
    for name, kind in notes:
        padded = name + b"\0" * (-len(name) % 4)
        body += struct.pack("<III", len(name), 4, kind) + padded + b"\1\0\0\0"
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + phdr + body + b"\0" * 4096


PVH_ELF = _elf([(b"GNU\0", 3), (b"Xen\0", 18)])


def _bzimage(compressed: bytes, version: int = 0x20F, extra: int = 0) -> bytes:
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, 0x100, len(compressed) + extra)
    return bytes(setup) + b"\x90" * 0x100 + compressed + b"\0" * 64


@pytest.mark.parametrize(
    "pack",
    [lambda d: lzma.compress(d, format=lzma.FORMAT_XZ), gzip.compress, lambda d: d],
    ids=["xz", "gzip", "uncompressed"],
)
def test_the_payload_unpacks_to_the_exact_elf(pack: object) -> None:
    assert callable(pack)
    assert unpack_pvh_kernel(_bzimage(pack(PVH_ELF))) == PVH_ELF


def test_the_payload_is_found_by_the_setup_header() -> None:
    assert payload(_bzimage(b"PAYLOAD!")) == b"PAYLOAD!"


def test_a_kernel_without_the_pvh_note_is_refused() -> None:
    plain = _elf([(b"GNU\0", 3), (b"Xen\0", 17)])
    assert not has_pvh_entry(plain)
    with pytest.raises(KernelFormatError, match="no PVH entry point") as err:
        unpack_pvh_kernel(_bzimage(lzma.compress(plain, format=lzma.FORMAT_XZ)))
    assert "linux-image-amd64" in err.value.fix


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"MZ" + b"\0" * 1024, "not a bzImage"),
        (_bzimage(b"x", version=0x206), "older than 2.08"),
        (_bzimage(b"abc", extra=1 << 20), "outside the file"),
        (_bzimage(b"\x28\xb5\x2f\xfd" + b"z" * 32), "cannot unpack"),
        (_bzimage(lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)[:-40]), "truncated|damaged"),
        (_bzimage(b"\xfd7zXZ\x00" + b"garbage" * 10), "damaged"),
        (_bzimage(lzma.compress(b"not an elf" * 10, format=lzma.FORMAT_XZ)), "not an ELF"),
    ],
    ids=["no-header", "old-protocol", "short-file", "zstd", "truncated", "corrupt", "not-elf"],
)
def test_a_broken_kernel_gets_a_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(KernelFormatError, match=reason):
        unpack_pvh_kernel(data)


def test_notes_in_a_32_bit_or_short_file_are_not_read() -> None:
    assert not has_pvh_entry(b"\x7fELF\x01\x01" + b"\0" * 100)
    assert not has_pvh_entry(PVH_ELF[:40])
