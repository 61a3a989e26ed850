"""A 1.5 KiB boot image that proves a CPU accelerator runs guest code.

The accelerator probe (``accel.py``) used to boot the golden image's Linux
kernel to a panic: 4.5–14 s under TCG here, and a 20 s timeout when nested
KVM hangs. This image does in well under a second what matters in that boot
for telling a working accelerator from a broken one, and nothing else:

1. QEMU loads it as a Linux kernel (boot protocol 2.02, the ``HdrS`` header;
   its first sector ends in the boot signature 0x55AA like every bzImage), so
   it goes through the claws' own path: ``<os><kernel>``, fw_cfg, SeaBIOS and
   QEMU's linuxboot option ROM;
2. from real mode it builds page tables (2 MiB identity map), sets CR4.PAE,
   CR3, EFER.LME (a ``wrmsr``) and CR0.PG|PE, and far-jumps into 64-bit long
   mode, as any x86-64 kernel must;
3. in long mode it loads an IDT, enables interrupts and halts: only a timer
   interrupt (SeaBIOS leaves the PIT ticking on IRQ0, vector 8) delivered
   through the 64-bit IDT wakes it — nested virtualisation most often breaks
   exactly there, in interrupt delivery and HLT, and then the guest hangs;
4. the interrupt handler decodes a per-probe token (stored XORed with a
   random key, so the plain token is nowhere in the image) and writes it to
   the serial port (0x3f8), then halts for good.

So the token reaches the console log only if the accelerator executed real
mode, the switch to long mode, 64-bit code and an interrupt. The machine code
is fixed (assembled once with GNU as; each instruction is listed below with
its bytes); Python only lays out the header, the descriptor tables and the
token, so the image is generated at run time without an assembler.
"""

from __future__ import annotations

import secrets
import struct

TOKEN_PREFIX = b"clawden-accel-ok-"
TOKEN_LEN = len(TOKEN_PREFIX) + 16 + 1  # prefix, 16 hex digits, newline
SETUP_SECTS = 2  # sectors after the boot sector; QEMU loads them all as setup
IMAGE_SIZE = (1 + SETUP_SECTS) * 512
BOOT_PROTOCOL = 0x0202  # < 2.03: QEMU loads us at 0x90000 and no setup_data
SERIAL_PORT = 0x3F8

# Image offsets the machine code refers to (it computes their linear
# addresses at run time from DS, so QEMU may load the image anywhere below 1 MiB).
CODE_AT = 0x230  # right after the protocol 2.02 header
GDT_AT = 0x310
GDT_PTR_AT = 0x328  # lgdt operand: limit, 32-bit base (patched at run time)
IDT_PTR_AT = 0x32E  # lidt operand in long mode: limit, 64-bit base (patched)
FAR_PTR_AT = 0x338  # far jump into long mode: 32-bit offset (patched), selector
IDT_AT = 0x340
IRQ_VECTOR = 8  # SeaBIOS programs the PIC to deliver IRQ0 (the PIT) on vector 8
TOKEN_AT = 0x500
KEY_AT = TOKEN_AT + TOKEN_LEN

CODE64_SELECTOR = 0x08
GDT = (
    0,  # null
    0x00AF9A000000FFFF,  # 0x08: 64-bit code, ring 0
    0x00CF92000000FFFF,  # 0x10: flat data
)

# (bytes, instruction) from `objdump -M intel`; the comment is its offset.
_CODE = (
    # -- real mode (16-bit), entered at 0x200 with CS=DS=image segment --
    ("fa", "cli"),  # 0x230
    ("6631db", "xor ebx,ebx"),  # 0x231
    ("8cdb", "mov bx,ds"),  # 0x234
    ("66c1e304", "shl ebx,0x4"),  # 0x236  ebx = linear address of the image
    ("b80001", "mov ax,0x100"),  # 0x23a
    ("8ec0", "mov es,ax"),  # 0x23d
    ("31ff", "xor di,di"),  # 0x23f
    ("6631c0", "xor eax,eax"),  # 0x241
    ("b9000c", "mov cx,0xc00"),  # 0x244
    ("66f3ab", "rep stos DWORD PTR es:[di],eax"),  # 0x247  zero 0x1000-0x3fff
    ("2666c706000003200000", "mov DWORD PTR es:0x0,0x2003"),  # 0x24a  PML4[0] -> PDPT
    ("2666c706001003300000", "mov DWORD PTR es:0x1000,0x3003"),  # 0x254  PDPT[0] -> PD
    ("2666c706002083000000", "mov DWORD PTR es:0x2000,0x83"),  # 0x25e  PD[0]: 2 MiB page at 0
    ("67668d8310030000", "lea eax,[ebx+0x310]"),  # 0x268
    ("66a32a03", "mov ds:0x32a,eax"),  # 0x270  GDT base
    ("67668d8340030000", "lea eax,[ebx+0x340]"),  # 0x274
    ("66a33003", "mov ds:0x330,eax"),  # 0x27c  IDT base
    ("67668d83d7020000", "lea eax,[ebx+0x2d7]"),  # 0x280
    ("66a33803", "mov ds:0x338,eax"),  # 0x288  far jump target
    ("67668d83f2020000", "lea eax,[ebx+0x2f2]"),  # 0x28c
    ("a3c003", "mov ds:0x3c0,ax"),  # 0x294  IDT[8] offset 15:0
    ("66c1e810", "shr eax,0x10"),  # 0x297
    ("a3c603", "mov ds:0x3c6,ax"),  # 0x29b  IDT[8] offset 31:16
    ("0f01162803", "lgdtw ds:0x328"),  # 0x29e
    ("0f20e0", "mov eax,cr4"),  # 0x2a3
    ("6683c820", "or eax,0x20"),  # 0x2a6  PAE
    ("0f22e0", "mov cr4,eax"),  # 0x2aa
    ("66b800100000", "mov eax,0x1000"),  # 0x2ad
    ("0f22d8", "mov cr3,eax"),  # 0x2b3  PML4
    ("66b9800000c0", "mov ecx,0xc0000080"),  # 0x2b6  EFER
    ("0f32", "rdmsr"),  # 0x2bc
    ("660d00010000", "or eax,0x100"),  # 0x2be  LME
    ("0f30", "wrmsr"),  # 0x2c4
    ("0f20c0", "mov eax,cr0"),  # 0x2c6
    ("660d01000080", "or eax,0x80000001"),  # 0x2c9  PG | PE
    ("0f22c0", "mov cr0,eax"),  # 0x2cf
    ("66ff2e3803", "jmp FWORD PTR ds:0x338"),  # 0x2d2  to 0x08:long_mode
    # -- long mode (64-bit) --
    ("b810000000", "mov eax,0x10"),  # 0x2d7  long_mode:
    ("8ed8", "mov ds,eax"),  # 0x2dc
    ("8ec0", "mov es,eax"),  # 0x2de
    ("8ed0", "mov ss,eax"),  # 0x2e0
    ("bc00700000", "mov esp,0x7000"),  # 0x2e2
    ("0f011d40000000", "lidt [rip+0x40] # 0x32e"),  # 0x2e7
    ("fb", "sti"),  # 0x2ee
    ("f4", "hlt"),  # 0x2ef  only an interrupt gets past here...
    ("ebfd", "jmp 0x2ef"),  # 0x2f0  ...and it never returns here
    ("488d3507020000", "lea rsi,[rip+0x207] # 0x500"),  # 0x2f2  irq: the token
    ("b922000000", "mov ecx,0x22"),  # 0x2f9  TOKEN_LEN
    ("66baf803", "mov dx,0x3f8"),  # 0x2fe  COM1
    ("ac", "lods al,BYTE PTR ds:[rsi]"),  # 0x302
    ("324621", "xor al,BYTE PTR [rsi+0x21]"),  # 0x303  the key, TOKEN_LEN further
    ("ee", "out dx,al"),  # 0x306
    ("e2f9", "loop 0x302"),  # 0x307
    ("fa", "cli"),  # 0x309
    ("f4", "hlt"),  # 0x30a
    ("ebfc", "jmp 0x309"),  # 0x30b
)
CODE = bytes.fromhex("".join(hexbytes for hexbytes, _ in _CODE))


def new_token() -> bytes:
    """A fresh token, so a probe never accepts output from an earlier one."""
    return TOKEN_PREFIX + secrets.token_hex(8).encode() + b"\n"


def _header() -> bytes:
    """Linux boot protocol fields at 0x1f1-0x22f (Documentation/x86/boot.rst)."""
    hdr = bytearray(CODE_AT - 0x1F1)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into("<" + fmt, hdr, offset - 0x1F1, *values)

    put(0x1F1, "B", SETUP_SECTS)
    put(0x1FE, "H", 0xAA55)  # boot_flag: the boot sector's signature
    put(0x200, "BB", 0xEB, CODE_AT - 0x202)  # jmp short to the code
    put(0x202, "4s", b"HdrS")
    put(0x206, "H", BOOT_PROTOCOL)
    # loadflags 0 (not LOADED_HIGH): no protected-mode part to load.
    return bytes(hdr)


def _idt() -> bytes:
    """Vectors 0..IRQ_VECTOR; only the IRQ's gate is present (its offset is
    patched at run time). Any other vector faults into a triple fault, which
    resets the guest — the probe domain then stops, a failure, never a token."""
    gate = struct.pack("<HHBBHII", 0, CODE64_SELECTOR, 0, 0x8E, 0, 0, 0)
    return bytes(16 * IRQ_VECTOR) + gate


def boot_image(token: bytes) -> bytes:
    """The image that writes ``token`` to the serial port, if the CPU runs it."""
    if len(token) != TOKEN_LEN:
        raise ValueError(f"token must be {TOKEN_LEN} bytes, not {len(token)}")
    key = bytes(1 + secrets.randbelow(255) for _ in token)  # never 0: no byte in clear
    image = bytearray(IMAGE_SIZE)
    image[0x1F1:CODE_AT] = _header()
    image[CODE_AT : CODE_AT + len(CODE)] = CODE
    image[GDT_AT:GDT_PTR_AT] = struct.pack("<3Q", *GDT)
    image[GDT_PTR_AT:IDT_PTR_AT] = struct.pack("<HI", 8 * len(GDT) - 1, 0)
    idt = _idt()
    image[IDT_PTR_AT:FAR_PTR_AT] = struct.pack("<HQ", len(idt) - 1, 0)
    image[FAR_PTR_AT : FAR_PTR_AT + 6] = struct.pack("<IH", 0, CODE64_SELECTOR)
    image[IDT_AT : IDT_AT + len(idt)] = idt
    image[TOKEN_AT:KEY_AT] = bytes(t ^ k for t, k in zip(token, key, strict=True))
    image[KEY_AT : KEY_AT + TOKEN_LEN] = key
    return bytes(image)


def encoded_token(image: bytes) -> bytes:
    """The token ``image`` prints, decoded as its interrupt handler does
    (for tests and debugging: the plain token is not in the image)."""
    encoded = image[TOKEN_AT:KEY_AT]
    key = image[KEY_AT : KEY_AT + TOKEN_LEN]
    return bytes(e ^ k for e, k in zip(encoded, key, strict=True))
