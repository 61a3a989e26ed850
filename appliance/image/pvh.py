"""Unpack a compressed x86 kernel (bzImage) into the ELF that QEMU boots
through its PVH entry point.

Why: a bzImage decompresses itself inside the guest. Under TCG every
instruction of that is emulated: Debian's XZ-compressed 6.1 kernel spent
~4.8 s of a 10.5 s boot-to-trivial-init there (measured, docs/performance.md
"Lean boot"). QEMU (4.0+) loads an uncompressed ``vmlinux`` that carries a
``XEN_ELFNOTE_PHYS32_ENTRY`` note straight into guest memory and jumps to it,
so that work moves to the host, once per image build. The kernel is the
same: the ELF is the exact payload the bzImage would have unpacked.

Pure functions on bytes; the image builder does the file work.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from typing import Protocol

from appliance.core.errors import ClawdenError

# Linux boot protocol (Documentation/arch/x86/boot.rst): offsets into the
# setup header of a bzImage.
_SETUP_SECTS = 0x1F1
_HDRS_MAGIC = 0x202
_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C
_MIN_PROTOCOL = 0x208  # payload_offset/length exist from boot protocol 2.08

_ELF_MAGIC = b"\x7fELF"
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18
# The payload may be at most this big once unpacked: a kernel is tens of MiB;
# a bound keeps a corrupt or hostile package from filling the build host.
MAX_VMLINUX_BYTES = 512 * 1024 * 1024

FIX = "keep the recipe's linux-image-amd64 (a bzImage whose payload has a PVH entry point)"


class KernelFormatError(ClawdenError):
    """The kernel cannot be unpacked into a PVH-bootable ELF."""


class _Unpacker(Protocol):
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage, located by its setup header."""
    if len(bzimage) < _PAYLOAD_LENGTH + 4 or bzimage[_HDRS_MAGIC : _HDRS_MAGIC + 4] != b"HdrS":
        raise KernelFormatError("the kernel is not a bzImage (no 'HdrS' setup header)", FIX)
    version = _u16(bzimage, _VERSION)
    if version < _MIN_PROTOCOL:
        raise KernelFormatError(
            f"the kernel's boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.08 "
            "and does not say where its payload is",
            FIX,
        )
    setup_sects = bzimage[_SETUP_SECTS] or 4  # 0 means 4, for old kernels
    start = (setup_sects + 1) * 512 + _u32(bzimage, _PAYLOAD_OFFSET)
    length = _u32(bzimage, _PAYLOAD_LENGTH)
    if length == 0 or start + length > len(bzimage):
        raise KernelFormatError("the kernel's payload lies outside the file", FIX)
    return bzimage[start : start + length]


def _decompress(data: bytes) -> bytes:
    unpacker: _Unpacker
    if data.startswith(b"\xfd7zXZ\x00"):
        unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif data.startswith(b"\x1f\x8b"):
        unpacker = zlib.decompressobj(wbits=31)  # gzip framing
    elif data.startswith(_ELF_MAGIC):
        return data  # CONFIG_KERNEL_UNCOMPRESSED
    else:
        raise KernelFormatError(
            f"the kernel's payload is compressed in a format this build cannot unpack "
            f"(starts {data[:4].hex()}; xz, gzip and none are supported)",
            FIX,
        )
    try:
        out = _bounded(unpacker.decompress(data, MAX_VMLINUX_BYTES + 1))
    except (lzma.LZMAError, zlib.error) as exc:
        raise KernelFormatError(f"the kernel's payload is damaged: {exc}", FIX) from exc
    if not unpacker.eof:
        raise KernelFormatError("the kernel's payload is truncated", FIX)
    return out


def _bounded(out: bytes) -> bytes:
    if len(out) > MAX_VMLINUX_BYTES:
        raise KernelFormatError(f"the unpacked kernel is over {MAX_VMLINUX_BYTES} bytes", FIX)
    return out


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the note QEMU boots it by."""
    if not elf.startswith(_ELF_MAGIC) or len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = int(struct.unpack_from("<Q", elf, 0x20)[0])
    phentsize, phnum = _u16(elf, 0x36), _u16(elf, 0x38)
    for index in range(phnum):
        header = phoff + index * phentsize
        if header + 56 > len(elf) or _u32(elf, header) != _PT_NOTE:
            continue
        offset = int(struct.unpack_from("<Q", elf, header + 8)[0])  # p_offset
        size = int(struct.unpack_from("<Q", elf, header + 32)[0])  # p_filesz
        if _note_has(elf, offset, size):
            return True
    return False


def _note_has(elf: bytes, offset: int, size: int) -> bool:
    end = min(offset + size, len(elf))
    while offset + 12 <= end:
        namesz, descsz, kind = struct.unpack_from("<III", elf, offset)
        name = elf[offset + 12 : offset + 12 + namesz].rstrip(b"\x00")
        if name == b"Xen" and kind == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        offset += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(n: int) -> int:
    return (n + 3) & ~3


def unpack_pvh_kernel(bzimage: bytes) -> bytes:
    """The bootable ELF inside ``bzimage``; ``KernelFormatError`` says why not."""
    elf = _decompress(payload(bzimage))
    if not elf.startswith(_ELF_MAGIC):
        raise KernelFormatError("the kernel's payload is not an ELF file", FIX)
    if not has_pvh_entry(elf):
        raise KernelFormatError(
            "the kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY; CONFIG_PVH=y)", FIX
        )
    return elf
