"""The accelerator probe's boot image, byte by byte: a valid Linux boot
protocol header QEMU accepts as a kernel, the machine code as assembled, and
a token that is in the image only encoded."""

from __future__ import annotations

import struct

import pytest

from appliance.hypervisor import probe_image as p

TOKEN = b"clawden-accel-ok-0123456789abcdef\n"


def u16(image: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", image, at)[0])


def test_size_is_the_boot_sector_plus_its_setup_sectors() -> None:
    image = p.boot_image(TOKEN)
    assert len(image) == p.IMAGE_SIZE == 1536
    # QEMU's loader: setup = (setup_sects + 1) sectors, and it must fit the file.
    assert (image[0x1F1] + 1) * 512 == len(image)


def test_boot_sector_ends_in_the_boot_signature() -> None:
    image = p.boot_image(TOKEN)
    assert image[510:512] == b"\x55\xaa"


def test_linux_boot_protocol_header() -> None:
    image = p.boot_image(TOKEN)
    assert image[0x202:0x206] == b"HdrS"
    assert u16(image, 0x206) == 0x0202
    assert image[0x211] == 0  # loadflags: no protected-mode part, loaded low
    # The entry at 0x200 is a short jump onto the first instruction.
    assert image[0x200] == 0xEB
    assert 0x202 + image[0x201] == p.CODE_AT
    assert image[p.CODE_AT] == 0xFA  # cli


def test_machine_code_and_tables_where_the_code_expects_them() -> None:
    image = p.boot_image(TOKEN)
    assert image[p.CODE_AT : p.CODE_AT + len(p.CODE)] == p.CODE
    assert p.CODE_AT + len(p.CODE) <= p.GDT_AT  # code does not run into the tables
    assert struct.unpack_from("<3Q", image, p.GDT_AT) == p.GDT
    assert u16(image, p.GDT_PTR_AT) == 23
    assert u16(image, p.IDT_PTR_AT) == 16 * (p.IRQ_VECTOR + 1) - 1
    assert u16(image, p.FAR_PTR_AT + 4) == p.CODE64_SELECTOR
    gate = image[p.IDT_AT + 16 * p.IRQ_VECTOR : p.IDT_AT + 16 * (p.IRQ_VECTOR + 1)]
    assert u16(gate, 2) == p.CODE64_SELECTOR and gate[5] == 0x8E  # present interrupt gate
    assert image[p.IDT_AT : p.IDT_AT + 16 * p.IRQ_VECTOR] == bytes(16 * p.IRQ_VECTOR)
    # The code's own references: the length it prints and the serial port.
    assert struct.pack("<I", p.TOKEN_LEN) in p.CODE
    assert struct.pack("<H", p.SERIAL_PORT) in p.CODE


def test_token_is_only_in_the_image_encoded() -> None:
    image = p.boot_image(TOKEN)
    assert p.encoded_token(image) == TOKEN
    # Neither the token nor any run of it is in clear: the console can show it
    # only if the guest's code ran and decoded it.
    assert TOKEN[:4] not in image
    assert all(image[p.TOKEN_AT + i] != TOKEN[i] for i in range(p.TOKEN_LEN))


def test_every_image_is_fresh() -> None:
    first, second = p.new_token(), p.new_token()
    assert first != second
    assert first.startswith(p.TOKEN_PREFIX) and first.endswith(b"\n")
    assert len(first) == p.TOKEN_LEN
    # A random key each time too: two images of one token differ.
    assert p.boot_image(TOKEN) != p.boot_image(TOKEN)
    # Apart from token and key, the image is fixed.
    a, b = p.boot_image(first), p.boot_image(second)
    assert a[: p.TOKEN_AT] == b[: p.TOKEN_AT]


@pytest.mark.parametrize("bad", [b"", b"short\n", TOKEN + b"x"])
def test_a_token_of_the_wrong_length_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match="bytes"):
        p.boot_image(bad)
