"""Pure-Python twins of the discovery loops in ``hpatch._native`` (native/discovery.c).

Same signatures, same results, same errors; tests/arch/test_discovery_parity.py holds
them to it.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Sequence
from functools import cache

import capstone

__all__ = ["reference_evidence", "x64_code_extent", "x64_padding_length"]

#: Capstone decodes a window at a time: one the size of a function's whole bound (up
#: to a megabyte) cost far more than the block it ends in.
_WINDOW = 256
_RVA_LIMIT = 0xFFFFFFFF
#: Where fall-through ends after the instruction.
_STOPS = frozenset({"ret", "retf", "retfq", "iretq", "iretd", "iret", "ud2", "hlt"})
_SINGLE_PAD = frozenset({0xCC, 0x90, 0x00})


@cache
def _x64_lite() -> capstone.Cs:
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def _check_decoder(decoder: object) -> None:
    if not isinstance(decoder, tuple) or len(decoder) != 7:
        raise TypeError("decoder must be a tuple of 7 ints")
    values = [operator.index(value) for value in decoder]
    if any(v < 0 or v >= 1 << 64 for v in values):
        raise OverflowError("decoder values must be unsigned 64-bit ints")
    if not all(values[1:4]) or any(v > 4096 for v in values[4:]):
        raise ValueError("decoder holds no capstone entry points")


def x64_code_extent(
    code: bytes, start_rva: int, roots: Iterable[int], decoder: tuple[int, ...], /
) -> int | None:
    """End of the x64 function at start_rva whose code (up to its bound) is code.

    Follows every direct branch from start_rva and from each root inside the code,
    decoding as capstone does; returns the end of the furthest body byte, or None if
    a path does not decode or runs past the bound. decoder is hpatch.arch.x64's
    capstone entry points (the twin decodes with the capstone package itself).
    """
    data = bytes(memoryview(code).cast("B"))
    start_rva = operator.index(start_rva)
    _check_decoder(decoder)
    # the code lies in the 32-bit RVA space, end included: a PE has nothing past it
    if (
        not 0 <= start_rva <= _RVA_LIMIT
        or len(data) > 0x7FFFFFFF
        or (start_rva + len(data) > _RVA_LIMIT + 1)
    ):
        raise ValueError("rva out of range")
    if not data:
        raise ValueError("no code")
    bound_rva = start_rva + len(data)
    pending = [start_rva]
    for root in roots:
        root = operator.index(root)
        if start_rva <= root < bound_rva:
            pending.append(root)
    visited: set[int] = set()
    end = start_rva
    while pending:
        block_end = _walk_block(data, start_rva, bound_rva, pending.pop(), visited, pending)
        if block_end is None:
            return None
        end = max(end, block_end)
    return end


def _walk_block(
    code: bytes, start_rva: int, bound_rva: int, rva: int, visited: set[int], pending: list[int]
) -> int | None:
    """Decode straight-line code from ``rva``; end of the last body byte, None if invalid."""
    disasm_lite = _x64_lite().disasm_lite
    end = rva
    while rva not in visited:
        if rva >= bound_rva:
            return None
        offset = rva - start_rva
        decoded = False
        for address, size, mnemonic, op_str in disasm_lite(code[offset : offset + _WINDOW], rva):
            decoded = True
            if address in visited:
                return end
            if address + size > bound_rva:
                return None
            visited.add(address)
            rva = address + size
            if mnemonic == "int3":
                return end  # a trap is where fall-through stops; it is padding, not body
            end = rva
            if mnemonic in _STOPS:
                return end
            if mnemonic[0] == "j" or mnemonic.startswith("loop"):
                if op_str.startswith("0x"):
                    target = int(op_str, 16)
                    if start_rva <= target < bound_rva:
                        pending.append(target)
                if mnemonic == "jmp":
                    return end
        if not decoded:
            return None
    return end


def reference_evidence(
    found: dict[int, int],
    incoming: Sequence[tuple[int, int, int]],
    starts: Sequence[int],
    ends: Sequence[int],
    entry_bits: tuple[int, int, int, int] | None,
    /,
) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
    """Add to found (RVA -> evidence mask) each incoming (target, site, bit) reference
    whose site lies in one of the sorted, disjoint ranges [starts[i], ends[i]).

    With entry_bits, a tuple (call, entry, foreign, not_a_jump) of masks, a call, or a
    reference from outside the target's own range, is only explained by an entry: it
    gains the entry bit (and the foreign bit when it is not a jump or its target lies
    in another range) and is returned unchecked instead, as a dict (target, bit) ->
    [(range start, range end, site), ...] in the order met. Returns that dict.
    """
    if not isinstance(found, dict):
        raise TypeError("found must be a dict")
    entries = entry_bits is not None
    call = entry = foreign = not_a_jump = 0
    if entry_bits is not None:
        if not isinstance(entry_bits, tuple) or len(entry_bits) != 4:
            raise TypeError("entry_bits must be 4 ints")
        call, entry, foreign, not_a_jump = (operator.index(b) for b in entry_bits)
    starts = [operator.index(s) for s in starts]
    ends = [operator.index(e) for e in ends]
    if len(starts) != len(ends):
        raise ValueError("starts and ends differ in length")
    unchecked: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for row in incoming:
        if not isinstance(row, tuple) or len(row) != 3:
            raise TypeError("incoming must be a sequence of (target, site, bit)")
        target, site, bit = (operator.index(v) for v in row)
        index = bisect.bisect_right(starts, site) - 1
        if index < 0 or site >= ends[index]:
            continue
        start, end = starts[index], ends[index]
        if entries and (bit == call or not start <= target < end):
            bit |= entry
            # A jump from the code right before the target may reach the function's
            # own block laid out after its last instruction.
            if bit & not_a_jump or bisect.bisect_right(starts, target) - 1 != index:
                bit |= foreign
            unchecked.setdefault((target, bit), []).append((start, end, site))
            continue
        found[target] = found.get(target, 0) | bit
    return unchecked


def _modrm_tail(data: bytes | memoryview, at: int) -> int | None:
    """Bytes taken by a ModRM byte at ``at`` and its SIB/displacement; None if truncated."""
    if at >= len(data):
        return None
    modrm = data[at]
    mod, rm = modrm >> 6, modrm & 7
    size = 1
    if mod != 3 and rm == 4:
        if at + 1 >= len(data):
            return None
        size += 1
        if mod == 0 and (data[at + 1] & 7) == 5:
            size += 4
    if mod == 1:
        size += 1
    elif mod == 2 or (mod == 0 and rm == 5):
        size += 4
    return size if at + size <= len(data) else None


def x64_padding_length(data: bytes, offset: int, /) -> int:
    """Length of the x64 padding at offset in data: int3, nop and zero bytes, nops with
    66 and 2E prefixes, and the multi-byte nops 0F 1F /0."""
    view = memoryview(data).cast("B")
    offset = operator.index(offset)
    if offset < 0:
        raise ValueError("offset must not be negative")
    i, n = offset, len(view)
    while i < n:
        if view[i] in _SINGLE_PAD:
            i += 1
            continue
        j = i
        while j < n and view[j] in (0x66, 0x2E):
            j += 1
        if j > i and j < n and view[j] == 0x90:
            i = j + 1
            continue
        if j + 1 < n and view[j] == 0x0F and view[j + 1] == 0x1F:
            tail = _modrm_tail(view, j + 2)
            if tail is not None:
                i = j + 2 + tail
                continue
        break
    return max(i - offset, 0)
