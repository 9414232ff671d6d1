"""Where carried code needs fixups, read from the code itself: part of the package format.

A function's fixups sit where its instructions reach outside the part that holds them:
x64 `call`/`jmp`/`jcc rel32` and RIP-relative operands, ARM64 branches, literal loads,
`ADR`, and `ADRP` with the `ADD`/`LDR`/`STR` that completes its page. Calls are sites
wherever they lead: a replaced function's part is read at its old address, where a
longer new part overlaps the old code that follows, and calls into the part itself
(recursion, through the redirect) are references too. A package lists
only the fixups these rules do not predict (format version 3, docs/FORMAT.md), so what
the rules say is fixed for the format version: the x64 instruction-length decoder below
is the format's own, not capstone's nor the diff's, and a change to any rule here is a
new format version. The rules need not be right, only the same for writer and reader:
a wrong prediction costs a byte, never a wrong fixup.

Both predictors take a part's bytes and return ``(offset in the part, Fixup)`` in
ascending order; a branch other than a call is internal when its target lies inside the
part. They never raise: any bytes at all are decoded somehow.
"""

from __future__ import annotations

from collections import deque

from hpatch.arch.arm64_bits import adr_immediate, sign_extend
from hpatch.arch.rewrite import X64_REL32_BY_TRAILER, Fixup

# x64 one-byte opcode map, 64-bit mode: per opcode, how its operands extend it.
_M = 0x10  # a ModRM byte follows
_I8, _I16, _IZ, _IV, _IW8, _MOFFS = 1, 2, 3, 4, 5, 6  # immediate kinds (low nibble)
_BAD = 0xFF  # invalid in 64-bit mode: decoded as a one-byte instruction
_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))


def _one_byte_map() -> tuple[int, ...]:
    table = [0] * 256
    for row in range(0, 0x40, 8):
        for low, kind in ((0, _M), (1, _M), (2, _M), (3, _M), (4, _I8), (5, _IZ)):
            table[row + low] = kind
    for op in (0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F):
        table[op] = _BAD
    for op in (0x60, 0x61, 0x82, 0x9A, 0xC4, 0xC5, 0xCE, 0xD4, 0xD5, 0xD6, 0xEA):
        table[op] = _BAD
    table[0x62] = _BAD  # EVEX, handled before the table
    table[0x63] = _M
    table[0x68], table[0x69], table[0x6A], table[0x6B] = _IZ, _M | _IZ, _I8, _M | _I8
    for op in range(0x70, 0x80):
        table[op] = _I8
    table[0x80], table[0x81], table[0x83] = _M | _I8, _M | _IZ, _M | _I8
    for op in range(0x84, 0x90):
        table[op] = _M
    for op in range(0xA0, 0xA4):
        table[op] = _MOFFS
    table[0xA8], table[0xA9] = _I8, _IZ
    for op in range(0xB0, 0xB8):
        table[op] = _I8
    for op in range(0xB8, 0xC0):
        table[op] = _IV
    table[0xC0], table[0xC1], table[0xC2] = _M | _I8, _M | _I8, _I16
    table[0xC6], table[0xC7], table[0xC8], table[0xCA], table[0xCD] = (
        _M | _I8,
        _M | _IZ,
        _IW8,
        _I16,
        _I8,
    )
    for op in (0xD0, 0xD1, 0xD2, 0xD3, *range(0xD8, 0xE0), 0xF6, 0xF7, 0xFE, 0xFF):
        table[op] = _M
    for op in (*range(0xE0, 0xE8), 0xEB):
        table[op] = _I8
    table[0xE8], table[0xE9] = _IZ, _IZ
    return tuple(table)


def _two_byte_map() -> tuple[int, ...]:
    """0F xx: ModRM unless listed; immediates where listed."""
    table = [_M] * 256
    for op in (0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34):
        table[op] = 0
    for op in (0x35, 0x37, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA, *range(0xC8, 0xD0)):
        table[op] = 0
    for op in range(0x80, 0x90):
        table[op] = _IZ
    for op in (0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6):
        table[op] = _M | _I8
    return tuple(table)


_ONE_BYTE = _one_byte_map()
_TWO_BYTE = _two_byte_map()
_VEX_IMM8 = frozenset((0x70, 0x71, 0x72, 0x73, 0xC2, 0xC4, 0xC5, 0xC6))  # map 0F


def _modrm_length(code: bytes, at: int) -> tuple[int, bool]:
    """Bytes of ModRM, SIB and displacement at ``at``, and whether it is RIP-relative."""
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 1, False
    length = 1
    if rm == 4:
        length += 1
        if mod == 0 and code[at + 1] & 7 == 5:
            return length + 4, False
    if mod == 0:
        return (length + 4, True) if rm == 5 else (length, False)
    return length + (1 if mod == 1 else 4), False


def _x64_instruction(code: bytes, at: int) -> tuple[int, int, int]:
    """(length, offset of a rel32 branch field or -1, offset of a RIP-relative
    displacement or -1) of the instruction at ``at``, relative to ``at``; ``code``
    is padded so that reading up to 15 bytes past ``at`` is safe."""
    start = at
    operand16 = address32 = False
    while code[at] in _PREFIXES and at - start < 14:
        operand16 |= code[at] == 0x66
        address32 |= code[at] == 0x67
        at += 1
    wide = False
    if 0x40 <= code[at] <= 0x4F:
        wide = bool(code[at] & 8)
        at += 1
    op = code[at]
    at += 1
    kind = 0
    if op in (0xC4, 0xC5, 0x62):  # VEX3, VEX2, EVEX
        if op == 0xC5:
            vex_map, at = 1, at + 1
        elif op == 0xC4:
            vex_map, at = code[at] & 0x1F, at + 2
        else:
            vex_map, at = code[at] & 7, at + 3
        opcode = code[at]
        at += 1
        if vex_map == 1 and opcode == 0x77:
            return at - start, -1, -1
        kind = _M | (_I8 if vex_map == 3 or (vex_map == 1 and opcode in _VEX_IMM8) else 0)
    elif op == 0x0F:
        second = code[at]
        at += 1
        if second == 0x38:
            at += 1
            kind = _M
        elif second == 0x3A:
            at += 1
            kind = _M | _I8
        else:
            kind = _TWO_BYTE[second]
            if 0x80 <= second <= 0x8F:
                return at + 4 - start, at - start, -1
    else:
        kind = _ONE_BYTE[op]
        if kind == _BAD:
            return at - start, -1, -1
        if op in (0xE8, 0xE9):
            return at + 4 - start, at - start, -1
    rip = -1
    if kind & _M:
        if op == 0xF6 and code[at] & 0x38 in (0, 8):
            kind |= _I8
        elif op == 0xF7 and code[at] & 0x38 in (0, 8):
            kind |= _IZ
        length, relative = _modrm_length(code, at)
        if relative:
            rip = at + length - 4 - start
        at += length
    immediate = kind & 0xF
    if immediate == _I8:
        at += 1
    elif immediate == _I16:
        at += 2
    elif immediate == _IZ:  # REX.W outranks the operand-size prefix
        at += 2 if operand16 and not wide else 4
    elif immediate == _IV:
        at += 8 if wide else 2 if operand16 else 4
    elif immediate == _IW8:
        at += 3
    elif immediate == _MOFFS:
        at += 4 if address32 else 8
    return at - start, -1, rip


def predict_x64(code: bytes) -> list[tuple[int, Fixup]]:
    """Fixup sites of an x64 part: a linear sweep from its first byte; every rel32 call,
    a rel32 jump whose target lies outside the part, and every RIP-relative
    displacement."""
    size = len(code)
    padded = bytes(code) + bytes(16)
    sites: list[tuple[int, Fixup]] = []
    at = 0
    while at < size:
        length, branch, rip = _x64_instruction(padded, at)
        end = at + length
        if end > size:
            break
        if branch >= 0:
            field = at + branch
            target = end + int.from_bytes(padded[field : field + 4], "little", signed=True)
            if padded[field - 1] == 0xE8 or not 0 <= target < size:
                sites.append((field, Fixup.X64_REL32))
        elif rip >= 0 and end - (at + rip + 4) < len(X64_REL32_BY_TRAILER):
            sites.append((at + rip, X64_REL32_BY_TRAILER[end - (at + rip + 4)]))
        at = end
    return sites


_PAGE_PAIR_WINDOW = 8  # predicted sites an ADRP and the ADD/LDR/STR completing it lie apart


def predict_arm64(code: bytes) -> list[tuple[int, Fixup]]:
    """Fixup sites of an ARM64 part, word by word: every BL; B, B.cond/CBZ/CBNZ/LDR
    literal, TBZ/TBNZ and ADR whose target lies outside the part; every ADRP; an ADD
    (immediate) or LDR/STR (unsigned offset) whose base is the destination of an ADRP
    among the previous eight predicted sites."""
    count = len(code) // 4
    sites: list[tuple[int, Fixup]] = []
    # (index in sites, destination) of the predicted ADRPs still within the window
    pages: deque[tuple[int, int]] = deque()
    for index in range(count):
        word = int.from_bytes(code[4 * index : 4 * index + 4], "little")
        offset = 4 * index
        reach = None
        kind = None
        if word & 0x7C000000 == 0x14000000:  # B, BL
            reach, kind = 4 * sign_extend(word & 0x3FFFFFF, 26), Fixup.ARM64_BRANCH26
        elif (
            word & 0xFF000010 == 0x54000000  # B.cond
            or word & 0x7E000000 == 0x34000000  # CBZ, CBNZ
            or (word & 0x3B000000 == 0x18000000 and word & 0xC0000000 != 0xC0000000)  # LDR
        ):
            reach, kind = 4 * sign_extend((word >> 5) & 0x7FFFF, 19), Fixup.ARM64_BRANCH19
        elif word & 0x7E000000 == 0x36000000:
            reach, kind = 4 * sign_extend((word >> 5) & 0x3FFF, 14), Fixup.ARM64_BRANCH14
        elif word & 0x9F000000 == 0x10000000:
            reach, kind = adr_immediate(word), Fixup.ARM64_REL21
        elif word & 0x9F000000 == 0x90000000:
            pages.append((len(sites), word & 31))
            sites.append((offset, Fixup.ARM64_PAGEBASE_REL21))
            continue
        elif word & 0x7FC00000 == 0x11000000 or word & 0x3B000000 == 0x39000000:
            base = (word >> 5) & 31
            recent = len(sites) - _PAGE_PAIR_WINDOW
            while pages and pages[0][0] < recent:  # sites only grow: they stay out of reach
                pages.popleft()
            if any(register == base for _, register in pages):
                add = word & 0x7FC00000 == 0x11000000
                kind = Fixup.ARM64_PAGEOFFSET_12A if add else Fixup.ARM64_PAGEOFFSET_12L
                sites.append((offset, kind))
            continue
        call = word & 0xFC000000 == 0x94000000
        if reach is not None and kind is not None and (call or not 0 <= offset + reach < 4 * count):
            sites.append((offset, kind))
    return sites
