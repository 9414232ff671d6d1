"""Pure-Python twins of every function in ``hpatch._native``.

Same signatures, same results, same errors; the parity tests hold them to it.
"""

from __future__ import annotations

import re
import struct

SITE_CALL, SITE_JUMP, SITE_COND_JUMP, SITE_ADDRESS, SITE_LOAD = 1, 2, 3, 4, 5
_RVA_LIMIT = 0xFFFFFFFF

# Zero-width lookahead so that every byte offset is a candidate, exactly as the C loop.
_X64_SITE = re.compile(rb"(?=[\xe8\xe9]|\x0f[\x80-\x8f]|[\x48-\x4f]\x8d)", re.DOTALL)
_I32 = struct.Struct("<i")


def _check_rvas(code_rva: int, lo_rva: int, hi_rva: int, length: int) -> None:
    for value, limit in (
        (code_rva, _RVA_LIMIT),
        (lo_rva, _RVA_LIMIT + 1),
        (hi_rva, _RVA_LIMIT + 1),
    ):
        if not 0 <= value <= limit:
            raise ValueError("rva out of range")
    if code_rva + length > _RVA_LIMIT + 1:
        raise ValueError("code extends past the 32-bit rva space")


def scan_x64_sites(
    code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /
) -> list[tuple[int, int, int]]:
    """Byte-level scan of x64 code for rel32 branch and RIP-relative LEA sites."""
    view = memoryview(code).cast("B")
    _check_rvas(code_rva, lo_rva, hi_rva, len(view))
    data = bytes(view)
    length = len(data)
    unpack = _I32.unpack_from
    sites: list[tuple[int, int, int]] = []
    for match in _X64_SITE.finditer(data):
        i = match.start()
        b = data[i]
        site = code_rva + i
        if b in (0xE8, 0xE9):
            if i + 5 <= length:
                target = site + 5 + unpack(data, i + 1)[0]
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_CALL if b == 0xE8 else SITE_JUMP))
        elif b == 0x0F:
            if i + 6 <= length:
                target = site + 6 + unpack(data, i + 2)[0]
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_COND_JUMP))
        elif i + 7 <= length and (data[i + 2] & 0xC7) == 0x05:
            target = site + 7 + unpack(data, i + 3)[0]
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_ADDRESS))
    return sites


def _sign_extend(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value ^ sign) - sign


def scan_arm64_sites(
    code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /
) -> list[tuple[int, int, int]]:
    """Word-level scan of ARM64 code for branches, ADR/ADRP+ADD addresses and literal loads."""
    view = memoryview(code).cast("B")
    _check_rvas(code_rva, lo_rva, hi_rva, len(view))
    if code_rva % 4:
        raise ValueError("code_rva must be 4-aligned")
    count = len(view) // 4
    words = struct.unpack_from(f"<{count}I", view)
    sites: list[tuple[int, int, int]] = []
    for w, insn in enumerate(words):
        top = insn & 0xFC000000
        site = code_rva + 4 * w
        if top in (0x94000000, 0x14000000):
            target = site + 4 * _sign_extend(insn & 0x03FFFFFF, 26)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_CALL if top == 0x94000000 else SITE_JUMP))
        elif (insn & 0xFF000010) == 0x54000000 or (insn & 0x7E000000) == 0x34000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x7E000000) == 0x36000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x3FFF, 14)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x3B000000) == 0x18000000 and (insn & 0xC4000000) != 0xC0000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_LOAD))
        elif (insn & 0x9F000000) == 0x10000000:
            target = site + _sign_extend((((insn >> 5) & 0x7FFFF) << 2) | ((insn >> 29) & 3), 21)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_ADDRESS))
        elif (insn & 0x9F000000) == 0x90000000 and w + 1 < count:
            nxt = words[w + 1]
            if (nxt & 0xFFC00000) == 0x91000000 and ((nxt >> 5) & 0x1F) == (insn & 0x1F):
                pages = _sign_extend((((insn >> 5) & 0x7FFFF) << 2) | ((insn >> 29) & 3), 21)
                target = (site & ~0xFFF) + pages * 4096 + ((nxt >> 10) & 0xFFF)
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_ADDRESS))
    return sites
