"""Instruction-field encodings: the address a fixup's field names from its site, and
the field rewritten to name another (x64 rel32 and absolute fields, ARM64 branches,
``ADR``/``ADRP`` and the page offsets of ``ADD``/``LDR``/``STR``)."""

from __future__ import annotations

from hpatch.arch.arm64_bits import adr_immediate, ldst_scale, sign_extend, with_adr_immediate
from hpatch.arch.rewrite import Fixup


def _fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < 1 << (bits - 1)


def read_field(kind: Fixup, field: bytes, site: int) -> int:
    """The address ``field`` names when it sits at ``site`` (ADRP: its page; ADD/LDR/STR:
    the page offset)."""
    value = int.from_bytes(field, "little")
    if kind in _REL32:
        return site + 4 + (kind - Fixup.X64_REL32) + sign_extend(value, 32)
    if kind in ABSOLUTE:
        return value
    if kind in _BRANCHES:
        mask, shift, bits = _BRANCHES[kind]
        return site + 4 * sign_extend((value >> shift) & mask, bits)
    if kind == Fixup.ARM64_REL21:
        return site + adr_immediate(value)
    if kind == Fixup.ARM64_PAGEBASE_REL21:
        return (site & ~0xFFF) + 4096 * adr_immediate(value)
    if kind == Fixup.ARM64_PAGEOFFSET_12A:
        return (value >> 10) & 0xFFF
    return (((value >> 10) & 0xFFF) << ldst_scale(value)) & 0xFFF


def write_field(kind: Fixup, field: bytes, site: int, target: int) -> bytes | None:
    """``field`` rewritten to name ``target`` from ``site``; None if it cannot."""
    size = len(field)
    value = int.from_bytes(field, "little")
    if kind in _REL32:
        delta = target - (site + 4 + (kind - Fixup.X64_REL32))
        return delta.to_bytes(4, "little", signed=True) if _fits(delta, 32) else None
    if kind in ABSOLUTE:
        return target.to_bytes(size, "little") if 0 <= target < 1 << (8 * size) else None
    if kind in _BRANCHES:
        mask, shift, bits = _BRANCHES[kind]
        delta = target - site
        if delta % 4 or not _fits(delta // 4, bits):
            return None
        value = (value & ~(mask << shift)) | (((delta // 4) & mask) << shift)
    elif kind == Fixup.ARM64_REL21:
        if not _fits(target - site, 21):
            return None
        value = with_adr_immediate(value, target - site)
    elif kind == Fixup.ARM64_PAGEBASE_REL21:
        pages = (target >> 12) - (site >> 12)
        if not _fits(pages, 21):
            return None
        value = with_adr_immediate(value, pages)
    elif kind == Fixup.ARM64_PAGEOFFSET_12A:
        value = (value & ~(0xFFF << 10)) | ((target & 0xFFF) << 10)
    else:
        scale = ldst_scale(value)
        if (target & 0xFFF) & ((1 << scale) - 1):
            return None
        value = (value & ~(0xFFF << 10)) | (((target & 0xFFF) >> scale) << 10)
    return value.to_bytes(4, "little")


_REL32 = frozenset(kind for kind in Fixup if kind.name.startswith("X64_REL32"))
ABSOLUTE = frozenset(
    (Fixup.X64_ADDR64, Fixup.ARM64_ADDR64, Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB)
)
_BRANCHES = {  # mask, shift, bits of the word offset
    Fixup.ARM64_BRANCH26: (0x3FFFFFF, 0, 26),
    Fixup.ARM64_BRANCH19: (0x7FFFF, 5, 19),
    Fixup.ARM64_BRANCH14: (0x3FFF, 5, 14),
}
PAGE_OFFSETS = (Fixup.ARM64_PAGEOFFSET_12A, Fixup.ARM64_PAGEOFFSET_12L)
#: Fields that share their word with an instruction's other bits (never zeroed whole).
INSTRUCTION_FIELDS = frozenset(
    (*_BRANCHES, Fixup.ARM64_REL21, Fixup.ARM64_PAGEBASE_REL21, *PAGE_OFFSETS)
)
