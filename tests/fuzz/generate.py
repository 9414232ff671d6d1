"""Structure-aware generators of hostile inputs, one per native entry point.

Each generator turns a seeded ``random.Random`` into a :class:`~tests.fuzz.cases.Case`.
They aim at what a byte-level C function gets wrong: lengths and offsets at their
limits, integers at and just past every range the C code converts to, buffers of every
shape the buffer protocol allows, and contents that reach the deep branches (ARM64
words of the classes the code rewrites, x64 instructions compilers emit with their
displacement and immediate fields aimed at the edges of the ranges that matter).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

from .cases import Case

U32 = 1 << 32
U64 = 1 << 64

# Integers at and just past every limit the cores convert to or check against.
EDGES = sorted(
    {
        v + d
        for v in (0, 1 << 12, 1 << 20, 1 << 27, 1 << 31, U32, 1 << 52, 1 << 62, 1 << 63, U64)
        for d in (-5, -4, -3, -1, 0, 1, 4)
    }
    | {1 << 66, 1 << 100}
)


def edge_int(rng: random.Random) -> int:
    """An integer from anywhere: an edge, a negated edge, or random of any width."""
    pick = rng.randrange(10)
    if pick < 5:
        return rng.choice(EDGES)
    if pick < 7:
        return -rng.choice(EDGES)
    return rng.getrandbits(rng.choice((8, 16, 32, 33, 63, 64, 65, 70))) * rng.choice((1, 1, -1))


def near(rng: random.Random, value: int, spread: int = 8) -> int:
    return value + rng.randint(-spread, spread)


def odd_argument(rng: random.Random) -> Any:
    """Something that is not what the parameter takes."""
    return rng.choice((["none"], ["str", "0x1000"], ["float", 4096.0], ["float", 0.5], True))


def buffer_argument(rng: random.Random, data: bytes, writable: bool = False) -> Any:
    """``data`` as one of the objects the buffer protocol serves, mostly the usual ones."""
    pick = rng.randrange(20)
    if pick < 11:
        return ["bytearray" if writable else "bytes", data.hex()]
    if pick < 13:
        return ["bytearray", data.hex()]
    if pick < 15 and len(data) % 4 == 0:
        return ["array", "I", data.hex()]
    if pick < 17:  # a view that starts anywhere, aligned or not
        start = rng.choice((0, 1, 2, 3, 5, 8))
        padded = rng.randbytes(start) + data
        return ["view", padded.hex(), start, len(padded), 1, not writable and rng.randrange(2) == 0]
    if pick < 18:
        return ["bytes", data.hex()]  # read-only where a writable buffer is due
    if pick < 19 and len(data) > 1:
        return ["view", (data + data).hex(), 0, 2 * len(data), 2, False]  # non-contiguous
    return odd_argument(rng)


def rva_argument(rng: random.Random, length: int, align: int = 1) -> int:
    """A code RVA: mostly valid, often at the very end of the 32-bit space, sometimes
    just past it or not an integer the C side can hold."""
    pick = rng.randrange(10)
    if pick < 4:
        value = rng.randrange(0, max(1, U32 - length))
    elif pick < 7:
        value = U32 - length - rng.choice((0, 0, 1, 4, 8, 12))
    elif pick < 8:
        value = rng.choice((0, 4, 8))
    else:
        return edge_int(rng)
    return value - value % align if rng.randrange(8) else value


def range_around(rng: random.Random, code_rva: int, length: int) -> tuple[int, int]:
    """[lo, hi): around the code (so branches land on both sides), empty, inverted, or
    at the limits of the RVA space."""
    pick = rng.randrange(10)
    if pick < 5:
        lo = code_rva + rng.randint(-64, max(0, length) + 64)
        hi = lo + rng.choice((0, 1, 4, rng.randint(0, 2 * length + 128)))
    elif pick < 6:
        lo, hi = code_rva + length, code_rva
    elif pick < 8:
        lo, hi = 0, rng.choice((U32, U32 + 1, code_rva + length))
    else:
        lo, hi = edge_int(rng), edge_int(rng)
    return lo, hi


# --- x64 ---------------------------------------------------------------------------


def _x64_site_bytes(rng: random.Random, length: int) -> bytes:
    """Bytes with many rel32 branch, Jcc and RIP-relative LEA candidates."""
    out = bytearray()
    while len(out) < length:
        pick = rng.randrange(6)
        if pick == 0:
            out += bytes([rng.choice((0xE8, 0xE9))]) + rng.randbytes(4)
        elif pick == 1:
            out += bytes([0x0F, 0x80 | rng.randrange(16)]) + rng.randbytes(4)
        elif pick == 2:
            out += bytes([0x48 | rng.randrange(8), 0x8D, 0x05 | (rng.randrange(8) << 3)])
            out += rng.randbytes(4)
        else:
            out += rng.randbytes(rng.randint(1, 6))
    return bytes(out[:length])


def _length(rng: random.Random, small: int = 64, large: int = 4096) -> int:
    pick = rng.randrange(10)
    if pick < 2:
        return rng.randint(0, 8)
    if pick < 8:
        return rng.randint(0, small)
    if pick < 9:
        return rng.randint(0, large)
    return rng.randint(large, 16 * large)


def gen_scan_x64_sites(rng: random.Random) -> Case:
    length = _length(rng)
    code = _x64_site_bytes(rng, length)
    code_rva = rva_argument(rng, length)
    lo, hi = range_around(rng, code_rva, length)
    return Case("scan_x64_sites", [buffer_argument(rng, code), code_rva, lo, hi])


@cache
def x64_pool() -> tuple[tuple[bytes, int, int, int, int, str], ...]:
    """Distinct instructions of the x64 sample DLLs (and hand-made forms compilers use
    that the samples lack): (bytes, disp offset, disp size, imm offset, imm size, what)
    where ``what`` is ``rel`` (a direct branch), ``lea64`` (``lea r64, [rip + d]``),
    ``rip`` (another RIP-relative operand), ``abs64`` (movabs / mov moffs) or ``-``."""
    import capstone
    from capstone import x86_const

    from hpatch.arch.x64_decode import displacement_size as _displacement_size
    from hpatch.image import load_image

    from ..conftest import SAMPLES

    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoder.detail = True
    seen: dict[bytes, tuple[bytes, int, int, int, int, str]] = {}

    def add(code: bytes) -> None:
        for insn in decoder.disasm(code, 0):
            encoding = bytes(insn.bytes)
            if encoding in seen:
                continue
            disp_size = _displacement_size(encoding, insn.modrm_offset, insn.disp_size)
            disp_offset = insn.size - insn.imm_size - disp_size
            memory = [o for o in insn.operands if o.type == x86_const.X86_OP_MEM]
            rip = bool(memory) and memory[0].mem.base == x86_const.X86_REG_RIP
            if insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
                what = "rel" if insn.imm_size else "-"
            elif insn.imm_size == 8 or disp_size == 8:
                what = "abs64"
            elif rip and insn.id == x86_const.X86_INS_LEA and insn.operands[0].size == 8:
                what = "lea64"
            elif rip:
                what = "rip"
            else:
                what = "-"
            seen[encoding] = (
                encoding,
                disp_offset,
                disp_size,
                insn.imm_offset,
                insn.imm_size,
                what,
            )

    for path in sorted(SAMPLES.glob("x64-*/*/sample.dll")):
        image = load_image(path)
        for function in image.functions:
            if function.end_rva > function.rva:
                add(image.read(function.rva, function.end_rva - function.rva))
    # MSVC's forms: __ImageBase in a register, then [reg + index * scale + rva32];
    # mov moffs; jrcxz / loop (rel8 branches outside capstone's jump group).
    add(
        bytes.fromhex(
            "488d0d00000000"  # lea rcx, [rip + 0]
            "4c8d1d00000000"  # lea r11, [rip + 0]
            "8b8c8100000000"  # mov ecx, [rcx + rax * 4 + disp32]
            "438b84d900000000"  # mov eax, [r9 + r11 * 8 + disp32]
            "41ffa4c300000000"  # jmp [r11 + rax * 8 + disp32]
            "48a10000000000000000"  # mov rax, [moffs64]
            "48a30000000000000000"  # mov [moffs64], rax
            "48b80000000000000000"  # movabs rax, imm64
            "e300e200e100e000"  # jrcxz, loop, loope, loopne
            "eb00e900000000e8000000000f8400000000"
        )
    )
    return tuple(seen.values())


def _x64_stream(rng: random.Random) -> tuple[list[tuple[bytes, int, int, int, int, str]], int]:
    pool = x64_pool()
    count = rng.choice((0, 1, 2, rng.randint(1, 16), rng.randint(1, 64), rng.randint(64, 400)))
    picks = [rng.choice(pool) for _ in range(count)]
    return picks, sum(len(p[0]) for p in picks)


def _aim(rng: random.Random, next_rva: int, size: int, goals: list[int]) -> bytes:
    """A little-endian field of ``size`` bytes: random, an edge value, or the
    displacement that makes the instruction ending at next_rva reach one of goals."""
    bits = 8 * size
    pick = rng.randrange(4)
    if pick == 0:
        return rng.randbytes(size)
    if pick == 1:
        value = rng.choice((0, 1, (1 << (bits - 1)) - 1, 1 << (bits - 1), (1 << bits) - 1))
        return value.to_bytes(size, "little")
    delta = rng.choice(goals) - next_rva
    if not -(1 << (bits - 1)) <= delta < 1 << (bits - 1):
        return rng.randbytes(size)
    return (delta & ((1 << bits) - 1)).to_bytes(size, "little")


def gen_normalise_x64(rng: random.Random) -> Case:
    """Compiler-emitted instructions with their fields re-aimed (parity), or raw and
    mutated bytes (safety)."""
    picks, length = _x64_stream(rng)
    code_rva = rva_argument(rng, length) if rng.randrange(6) == 0 else rng.randrange(U32 - length)
    lo, hi = range_around(rng, code_rva, length)
    goals = [lo - 1, lo, hi - 1, hi, 0, code_rva, code_rva + length, rng.randrange(U32)]
    code = bytearray()
    relocated: list[int] = []
    for encoding, disp_offset, disp_size, imm_offset, imm_size, what in picks:
        at = len(code)
        insn = bytearray(encoding)
        next_rva = code_rva + at + len(insn)
        if disp_size and rng.randrange(3):
            insn[disp_offset : disp_offset + disp_size] = _aim(rng, next_rva, disp_size, goals)
            if what == "lea64" and rng.randrange(2):  # __ImageBase
                insn[disp_offset : disp_offset + 4] = ((-next_rva) & 0xFFFFFFFF).to_bytes(
                    4, "little"
                )
        if imm_size and rng.randrange(3):
            insn[imm_offset : imm_offset + imm_size] = _aim(rng, next_rva, imm_size, goals)
        if what == "abs64" and rng.randrange(4):
            field = imm_offset if imm_size == 8 else disp_offset
            relocated.append(code_rva + at + field)
        code += insn
    check = "parity"
    if picks and rng.randrange(6) == 0:  # end inside an instruction
        code = code[: len(code) - rng.randint(1, min(len(code), len(picks[-1][0]) - 1 or 1))]
    if rng.randrange(5) == 0:
        check = "safety"  # not compiler output any more
        code = _mutate(rng, bytes(code) if code else rng.randbytes(rng.randint(0, 64)))
    for _ in range(rng.choice((0, 0, 1, 4))):
        relocated.append(rng.choice((code_rva + rng.randint(-8, len(code) + 8), edge_int(rng))))
    relocated = [r for r in relocated if 0 <= r < U32]
    if rng.randrange(8):
        relocated.sort()
    fields = struct.pack(f"<{len(relocated)}I", *relocated)
    if rng.randrange(20) == 0:
        fields += rng.randbytes(rng.randint(1, 3))
    image_base = rng.choice((0x1_4000_0000, 0x1_8000_0000, 0, edge_int(rng)))
    args: list[Any] = [
        buffer_argument(rng, bytes(code)),
        code_rva,
        lo,
        hi,
        buffer_argument(rng, fields),
        image_base,
    ]
    return Case("normalise_x64", args, check)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Bit flips, byte changes, insertions, deletions and splices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pick = rng.randrange(5)
        at = rng.randint(0, len(out))
        if pick == 0 and out:
            at = min(at, len(out) - 1)
            out[at] ^= 1 << rng.randrange(8)
        elif pick == 1 and out:
            at = min(at, len(out) - 1)
            out[at] = rng.choice((0x00, 0xFF, 0x0F, 0x48, 0x66, 0x67, 0xF0, 0xC4, 0x62, 0xE8))
        elif pick == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 4))
        elif pick == 3 and out:
            del out[at : at + rng.randint(1, 4)]
        else:
            out[at:at] = out[rng.randint(0, len(out)) :][: rng.randint(0, 16)]
    return bytes(out)


# --- ARM64 -------------------------------------------------------------------------

# (fixed bits, mask) of the word classes the scanner, the normaliser and the fixups know.
ARM64_CLASSES = (
    (0x14000000, 0xFC000000),  # B
    (0x94000000, 0xFC000000),  # BL
    (0x54000000, 0xFF000010),  # B.cond
    (0x34000000, 0x7E000000),  # CBZ / CBNZ
    (0x36000000, 0x7E000000),  # TBZ / TBNZ
    (0x10000000, 0x9F000000),  # ADR
    (0x90000000, 0x9F000000),  # ADRP
    (0x18000000, 0x3B000000),  # LDR (literal), PRFM
    (0x91000000, 0xFFC00000),  # ADD (immediate, 64-bit)
    (0x11000000, 0x5F800000),  # ADD/ADDS (immediate), any size, shifted or not
    (0x39000000, 0x3B000000),  # LDR / STR (unsigned immediate)
    (0x28000000, 0x3A000000),  # STP / LDP
)
REGISTERS = (0, 1, 2, 16, 30, 31)


def arm64_word(rng: random.Random) -> int:
    word = rng.getrandbits(32)
    if rng.randrange(5):
        fixed, mask = rng.choice(ARM64_CLASSES)
        word = fixed | (word & ~mask & 0xFFFFFFFF)
    if rng.randrange(3):  # few registers, so that ADRP chains meet their users
        word = (word & ~0x3FF) | (rng.choice(REGISTERS) << 5) | rng.choice(REGISTERS)
    if rng.randrange(4) == 0:  # immediates at their extremes
        word = word & ~0x00FFFFE0 | (rng.choice((0, 0x7FFFF, 0x40000, 0x3FFFF)) << 5)
    return word


def arm64_code(rng: random.Random) -> bytes:
    count = _length(rng, small=32, large=1024)
    words = []
    while len(words) < count:
        if rng.randrange(3) == 0:  # an ADRP and words that use its register as base
            base = rng.choice(REGISTERS)
            words.append(0x90000000 | (rng.getrandbits(32) & 0x60FFFFE0) | base)
            for _ in range(rng.randint(1, 4)):
                words.append((arm64_word(rng) & ~(0x1F << 5)) | (base << 5))
        else:
            words.append(arm64_word(rng))
    return struct.pack(f"<{len(words)}I", *words) + rng.randbytes(rng.choice((0, 0, 0, 1, 2, 3)))


def gen_scan_arm64_sites(rng: random.Random) -> Case:
    code = arm64_code(rng)
    code_rva = rva_argument(rng, len(code), align=4)
    lo, hi = range_around(rng, code_rva, len(code))
    return Case("scan_arm64_sites", [buffer_argument(rng, code), code_rva, lo, hi])


def gen_normalise_arm64(rng: random.Random) -> Case:
    code = arm64_code(rng)
    code_rva = rva_argument(rng, len(code), align=4)
    lo, hi = range_around(rng, code_rva, len(code))
    relocated = rng.randbytes(4 * rng.choice((0, 0, 1, 3)) + rng.choice((0, 0, 0, 0, 1, 2)))
    image_base = rng.choice((0x1_4000_0000, edge_int(rng)))
    args = [buffer_argument(rng, code), code_rva, lo, hi, buffer_argument(rng, relocated)]
    return Case("normalise_arm64", [*args, image_base])


# --- fixups and redirects ----------------------------------------------------------

NOT_KINDS = (0, 0x100, 0x102, 0x10A, 0x1FF, 0x200, 0x201, 0x208, 0x20D, 0x211, 0xFFFF)


@cache
def fixup_kinds() -> tuple[tuple[int, ...], dict[int, int]]:
    """Every fixup kind, and how far each ARM64 branch kind reaches. Read when the first
    case is made, not when this module loads: a sanitized run installs its build of the
    C core first, and importing hpatch would load the other one."""
    from hpatch.arch.kinds import Fixup

    kinds = tuple(int(kind) for kind in Fixup)
    assert not set(NOT_KINDS) & set(kinds)
    reach = {
        int(Fixup.ARM64_BRANCH26): 1 << 27,
        int(Fixup.ARM64_BRANCH19): 1 << 20,
        int(Fixup.ARM64_BRANCH14): 1 << 15,
        int(Fixup.ARM64_REL21): 1 << 20,
    }
    return kinds, reach


def _fixup_target(rng: random.Random, kind: int, site: int, image_base: int) -> int:
    pick = rng.randrange(8)
    if pick == 0:
        return rng.getrandbits(64)
    if pick == 1:
        return rng.choice((0, U64 - 1, U64 - 4, site, image_base, image_base + U32 - 1))
    if kind in (0x103, 0x202):  # ADDR32NB: around [image_base, image_base + 4 GiB)
        return rng.choice((near(rng, image_base), near(rng, image_base + U32))) % U64
    if 0x104 <= kind <= 0x109:  # REL32: the edges of +-2 GiB from the end of the field
        end = site + 4 + (kind - 0x104)
        return near(rng, end + rng.choice((-(1 << 31), (1 << 31) - 1, 0))) % U64
    if kind == 0x204:  # ADRP: +-4 GiB in pages
        return near(rng, site + rng.choice((-(1 << 32), (1 << 32) - 4096, 0)), 4096) % U64
    arm64_reach = fixup_kinds()[1]
    if kind in arm64_reach:
        reach = arm64_reach[kind]
        return near(rng, site + rng.choice((-reach, reach - 4, 0)), 6) % U64
    return near(rng, site, 1 << 16) % U64


def gen_apply_fixups(rng: random.Random) -> Case:
    size = rng.choice((0, 1, 4, 7, 8, 16, rng.randint(0, 64), rng.randint(0, 1024)))
    words = [arm64_word(rng) for _ in range(size // 4)]
    buffer = struct.pack(f"<{len(words)}I", *words) + rng.randbytes(size % 4)
    pick = rng.randrange(8)
    if pick < 4:
        buffer_va = rng.randrange(U64 - size) & ~rng.choice((0, 3, 0xFFF))
    elif pick < 6:
        buffer_va = U64 - size - rng.choice((0, 1, 4, 8))
    else:
        buffer_va = edge_int(rng)
    image_base = rng.choice((0x1_4000_0000, buffer_va & ~0xFFFF, edge_int(rng)))
    records = bytearray()
    for _ in range(rng.choice((0, 1, 2, rng.randint(1, 16), rng.randint(1, 256)))):
        kind = rng.choice(fixup_kinds()[0]) if rng.randrange(12) else rng.choice(NOT_KINDS)
        field = 8 if kind in (0x101, 0x20E) else 4
        offset = (
            rng.choice(
                (
                    rng.randint(0, max(0, size - field)) & ~rng.choice((0, 3)),
                    max(0, size - field),
                    size - field + 1,
                    size,
                    0xFFFFFFFF,
                    0xFFFFFFFF - rng.randint(0, 8),
                )
            )
            % U32
        )
        reserved = 0 if rng.randrange(16) else rng.choice((1, 0x8000, 0xFFFF))
        site = (buffer_va + offset) % U64 if 0 <= buffer_va < U64 else 0
        target = _fixup_target(rng, kind, site, image_base % U64) % U64
        records += struct.pack("<IHHQ", offset, kind, reserved, target)
    if records and rng.randrange(16) == 0:
        records = records[: -rng.randint(1, 15)]
    args: list[Any] = [buffer_argument(rng, buffer, writable=True), buffer_va, image_base]
    if rng.randrange(16) == 0 and size and isinstance(args[0], list) and args[0][0] == "bytearray":
        # records that alias the buffer they rewrite
        start = rng.randint(0, size)
        stop = start + 16 * rng.randint(0, (size - start) // 16)
        args.append(["slice_of", 0, start, stop])
    else:
        args.append(buffer_argument(rng, bytes(records)))
    return Case("apply_fixups", args)


REDIRECT_SPANS = {1: (0, 5), 2: (0, 14), 3: (-5, 7), 4: (0, 4), 5: (0, 16)}


def gen_encode_redirect(rng: random.Random) -> Case:
    strategy: Any = rng.choice((1, 2, 3, 4, 5)) if rng.randrange(6) else edge_int(rng)
    if rng.randrange(40) == 0:
        strategy = odd_argument(rng)
    pick = rng.randrange(6)
    if pick < 3:
        entry = rng.randrange(U64) & ~rng.choice((0, 3, 0xF))
    elif pick < 5:
        start, length = REDIRECT_SPANS.get(strategy if isinstance(strategy, int) else 1, (0, 4))
        entry = rng.choice((-start + rng.randint(-2, 2), U64 - start - length + rng.randint(-2, 2)))
    else:
        entry = edge_int(rng)
    reach = rng.choice((1 << 31, 1 << 27, 1 << 62, 1 << 63))
    after = rng.choice((0, 5))
    target = rng.choice(
        (
            entry + after + rng.choice((-reach, reach - 1, reach - 4, reach)) + rng.randint(-4, 4),
            rng.randrange(U64),
            edge_int(rng),
        )
    )
    if rng.randrange(40) == 0:
        return Case("encode_redirect", [strategy, entry, odd_argument(rng)])
    return Case("encode_redirect", [strategy, entry, target])


# What the LZMA2 encoder's twin codes in a few tens of milliseconds: the cases run on
# both cores, and the twin is pure Python.
LZMA2_DATA = 1536
LZMA2_DICTIONARY = 3072


def _lzma2_bytes(rng: random.Random, size: int, source: bytes = b"") -> bytes:
    """Random, repetitive, sparse, or pieces of ``source`` (matches into the
    dictionary, at distances of every slot)."""
    pick = rng.randrange(4)
    if pick == 0:
        return rng.randbytes(size)
    if pick == 1:
        words = [rng.randbytes(rng.randrange(1, 12)) for _ in range(rng.randrange(1, 30))]
        return b"".join(rng.choice(words) for _ in range(size))[:size]
    if pick == 2 or not source:
        return bytes(rng.choice(b"\0\0\0\1\xff") for _ in range(size))
    out = bytearray()
    while len(out) < size:
        start = rng.randrange(len(source))
        out += source[start : start + rng.randrange(1, 300)] + rng.randbytes(rng.randrange(3))
    return bytes(out[:size])


def _lzma2_int(rng: random.Random, usual: int, low: int, high: int) -> int:
    """Mostly ``usual``, often anything valid in [low, high], now and then any integer."""
    pick = rng.randrange(20)
    if pick < 10:
        return usual
    if pick < 19:
        return rng.randint(low, high)
    return edge_int(rng)


def gen_lzma2_compress(rng: random.Random) -> Case:
    dictionary = _lzma2_bytes(rng, rng.choice((0, 0, 1, 2, 3, rng.randrange(LZMA2_DICTIONARY))))
    data = _lzma2_bytes(rng, rng.choice((0, 1, 2, 3, rng.randrange(LZMA2_DATA))), dictionary)
    lc = _lzma2_int(rng, 3, 0, 4)
    lp = _lzma2_int(rng, 0, 0, 4)
    pb = _lzma2_int(rng, 2, 0, 4)
    searched: Any = ["none"]
    if rng.randrange(2):
        bound = len(dictionary) + 8
        searched = [
            "ranges",
            [[rng.randint(-8, bound), rng.randint(-8, bound)] for _ in range(rng.randrange(5))],
        ]
    nice = _lzma2_int(rng, 128, 2, 300)
    depth = _lzma2_int(rng, 48, 0, 64)
    window = _lzma2_int(rng, 2048, 1, 2048)
    # small chunk limits cut the data into many chunks
    if rng.randrange(3):
        limits = [1 << 21, 1 << 16, 1 << 12]
    else:
        limits = [
            rng.randint(300, 4000) + (window if 1 <= window <= 2048 else 0),
            rng.randint(5, 3000),
            rng.randint(0, 300),
        ]
    if rng.randrange(20) == 0:
        limits[rng.randrange(3)] = edge_int(rng)
    return Case(
        "lzma2_compress",
        [
            buffer_argument(rng, data),
            buffer_argument(rng, dictionary),
            lc,
            lp,
            pb,
            searched,
            nice,
            depth,
            window,
            *limits,
        ],
    )


def gen_lzma2_compress_settings(rng: random.Random) -> Case:
    """As ``gen_lzma2_compress``, with one to four settings (the package tries three,
    the later ones reusing the matches the first found) and now and then none."""
    case = gen_lzma2_compress(rng)
    data, dictionary, lc, lp, pb, *rest = case.args
    settings = [[lc, lp, pb]]
    settings += [
        [_lzma2_int(rng, 0, 0, 4), _lzma2_int(rng, 0, 0, 4), _lzma2_int(rng, 1, 0, 4)]
        for _ in range(rng.choice((0, 1, 2, 2, 3)))
    ]
    if rng.randrange(30) == 0:
        settings = [] if rng.randrange(2) else [*settings, [0, 0]]
    return Case("lzma2_compress_settings", [data, dictionary, ["tuples", settings], *rest])


def gen_x64_code_extent(rng: random.Random) -> Case:
    """Compiler-emitted instructions (branches re-aimed inside, at and past the bound)
    or mutated bytes, walked from the start and from roots in and around the code."""
    picks, length = _x64_stream(rng)
    start = rng.randrange(U32 - max(length, 1)) if rng.randrange(8) else rva_argument(rng, length)
    code = bytearray()
    goals = [start, start + length, start + length - 1, start - 1, start + length // 2]
    for encoding, disp_offset, disp_size, _imm_offset, _imm_size, what in picks:
        insn = bytearray(encoding)
        if what == "rel" and disp_size and rng.randrange(2):
            next_rva = start + len(code) + len(insn)
            insn[disp_offset : disp_offset + disp_size] = _aim(rng, next_rva, disp_size, goals)
        code += insn
    if rng.randrange(4) == 0:
        code = bytearray(_mutate(rng, bytes(code)))
    if not code and rng.randrange(4):
        code = bytearray(b"\xc3")
    roots = [
        rng.choice((start, start + rng.randrange(max(1, len(code))), start - 1, start + len(code)))
        for _ in range(rng.choice((0, 0, 1, 3)))
    ]
    return Case(
        "x64_code_extent",
        [buffer_argument(rng, bytes(code)), start, ["ints", roots], ["x64_decoder"]],
    )


def gen_reference_evidence(rng: random.Random) -> Case:
    """Sorted disjoint ranges, references from in and around them, with entry bits or
    without; the evidence found before is a mapping the call adds to."""
    starts, ends, at = [], [], rng.randrange(0x1000, 0x10000)
    for _ in range(rng.choice((0, 1, 2, rng.randint(1, 40)))):
        at += rng.choice((0, 1, 16, rng.randrange(0x400)))
        size = rng.choice((1, 2, 16, rng.randrange(1, 0x400)))
        starts.append(at)
        ends.append(at + size)
        at += size
    if rng.randrange(20) == 0 and starts:
        ends.pop()  # lengths that differ
    places = [rng.randrange(0x1000, at + 0x100)] + starts + ends + [s + 1 for s in starts]
    bits = (1, 2, 4, 8, 16, 32, 64, 128)
    incoming = [
        (rng.choice(places), rng.choice(places), rng.choice(bits))
        for _ in range(rng.choice((0, 1, rng.randint(1, 64), rng.randint(1, 512))))
    ]
    found = {rng.choice(places): rng.choice(bits) for _ in range(rng.choice((0, 1, 8)))}
    entry_bits = ["tuple", [1, 256, 512, 1024]] if rng.randrange(2) else ["none"]
    return Case(
        "reference_evidence",
        [
            ["mapping", sorted(found.items())],
            ["tuples", incoming],
            ["ints", starts],
            ["ints", ends],
            entry_bits,
        ],
    )


_PADDING_PIECES = (
    b"\xcc",
    b"\x90",
    b"\x00",
    b"\x66\x90",
    b"\x0f\x1f\x00",
    b"\x0f\x1f\x40\x00",
    b"\x0f\x1f\x44\x00\x00",
    b"\x66\x0f\x1f\x44\x00\x00",
    b"\x0f\x1f\x80\x00\x00\x00\x00",
    b"\x66\x2e\x0f\x1f\x84\x00\x00\x00\x00\x00",
    b"\x2e\x66\x0f\x1f\x84\x00\x00\x00\x00\x00",
    b"\xc3",
    b"\x48\x89\xe5",
)


def gen_x64_padding_length(rng: random.Random) -> Case:
    """Padding pieces (int3, nops, zero bytes, multi-byte nops with their prefixes) with
    code around them, cut anywhere; offsets inside, at the end, past it and negative."""
    data = b"".join(rng.choice(_PADDING_PIECES) for _ in range(rng.choice((0, 1, 4, 32))))
    if rng.randrange(3) == 0:
        data = _mutate(rng, data)
    if rng.randrange(4) == 0:
        data = data[: rng.randint(0, len(data))]
    offset = rng.choice((0, rng.randint(0, max(0, len(data))), len(data), len(data) + 1, -1))
    return Case("x64_padding_length", [buffer_argument(rng, data), offset])


def _sorted_rvas(rng: random.Random, low: int, high: int, count: int) -> list[int]:
    return sorted({rng.randrange(low, high) for _ in range(count)})


def _some(rng: random.Random) -> int:
    return rng.choice((0, 1, 2, rng.randint(1, 40), rng.randint(1, 400)))


def gen_gap_evidence(rng: random.Random) -> Case:
    """A round's evidence: stated starts, references (grouped by target) from in and
    around sorted disjoint ranges, with entry bits or without, and a check that answers
    from a hash (now and then by raising); now and then a column that is out of order
    or of another length."""
    starts, ends, at = [], [], rng.randrange(0x1000, 0x10000)
    for _ in range(rng.choice((0, 1, 2, rng.randint(1, 40)))):
        at += rng.choice((0, 1, 16, rng.randrange(0x400)))
        size = rng.choice((1, 2, 16, rng.randrange(1, 0x400)))
        starts.append(at)
        ends.append(at + size)
        at += size
    places = [rng.randrange(0x1000, at + 0x100)] + starts + ends + [s + 1 for s in starts]
    bits = (1, 2, 4, 8, 16, 32, 64, 128)
    rows = sorted(
        (rng.choice(places), rng.choice(places), rng.choice(bits)) for _ in range(_some(rng))
    )
    stated = {rng.choice(places): rng.choice((0, *bits)) for _ in range(_some(rng))}
    static = sorted(stated.items())
    columns = [
        [t for t, _ in static],
        [m for _, m in static],
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        starts,
        ends,
    ]
    if rng.randrange(20) == 0:
        column = rng.choice(columns)
        if column:
            column.pop() if rng.randrange(2) else column.reverse()
    if rng.randrange(30) == 0:
        rng.choice(columns).append(rng.choice(EDGES) * rng.choice((1, -1)))
    entry_bits = ["tuple", [1, 256, 512, 1024]] if rng.randrange(4) else ["none"]
    check = ["oracle", rng.choice(("truth", "truth", "raise")), rng.getrandbits(32)]
    return Case("gap_evidence", [*(["ints", column] for column in columns), entry_bits, check])


def gen_gap_leaves(rng: random.Random) -> Case:
    """A walk of one gap: candidates in and around it with evidence of every mix,
    alignments of 1 and 4, bounds at their limits, and callbacks that answer from a
    hash (thunks now and then, ends before, inside and past the bound, padding)."""
    gap_start = rng.choice((0, rng.randrange(0x1000, 0x100000), U32 - 0x100))
    length = rng.choice((0, 1, 16, rng.randrange(1, 0x400), rng.randrange(1, 0x4000)))
    gap_end = gap_start + length
    targets = _sorted_rvas(rng, max(gap_start - 8, 0), gap_end + 9, _some(rng))
    if rng.randrange(8) == 0:
        targets += [gap_start, gap_end]
        targets = sorted(set(targets))
    masks = [rng.choice((0, 1, 2, 3, 4, 6, 8, 12)) for _ in targets]
    if rng.randrange(20) == 0 and targets:
        rng.choice((targets, masks)).pop()
    if rng.randrange(30) == 0 and len(targets) > 1:
        targets.reverse()
    align = rng.choice((1, 1, 4, rng.choice((0, -1, 2, 16))))
    if rng.randrange(30) == 0:
        gap_end = edge_int(rng)
    seed = rng.getrandbits(32)
    callbacks = [
        ["oracle", "thunk", seed],
        ["oracle", "extent", seed + 1],
        ["oracle", "padding", seed + 2],
        ["oracle", rng.choice(("truth", "raise")), seed + 3],
        ["oracle", rng.choice(("truth", "truth", "raise")), seed + 4],
    ]
    return Case(
        "gap_leaves",
        [
            ["ints", targets],
            ["ints", masks],
            gap_start,
            gap_end,
            align,
            ["tuple", [rng.choice((2, 6, 14)), rng.choice((2, 4, 8))]],
            *callbacks,
        ],
    )


GENERATORS: dict[str, Callable[[random.Random], Case]] = {
    "apply_fixups": gen_apply_fixups,
    "encode_redirect": gen_encode_redirect,
    "gap_evidence": gen_gap_evidence,
    "gap_leaves": gen_gap_leaves,
    "lzma2_compress": gen_lzma2_compress,
    "lzma2_compress_settings": gen_lzma2_compress_settings,
    "normalise_arm64": gen_normalise_arm64,
    "normalise_x64": gen_normalise_x64,
    "reference_evidence": gen_reference_evidence,
    "scan_arm64_sites": gen_scan_arm64_sites,
    "scan_x64_sites": gen_scan_x64_sites,
    "x64_code_extent": gen_x64_code_extent,
    "x64_padding_length": gen_x64_padding_length,
}


def with_odd_arguments(rng: random.Random, case: Case) -> Case:
    """Now and then, one argument replaced by something of the wrong type."""
    aliased = any(isinstance(a, list) and a[0] == "slice_of" for a in case.args)
    if rng.randrange(30) == 0 and case.args and not aliased:
        index = rng.randrange(len(case.args))
        case.args[index] = odd_argument(rng)
    return case


def generate(name: str, rng: random.Random) -> Case:
    return with_odd_arguments(rng, GENERATORS[name](rng))
