"""Pure-Python twins of the discovery loops in ``hpatch._native`` (native/discovery.c).

Same signatures, same results, same errors; tests/arch/test_discovery_parity.py holds
them to it.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import capstone

__all__ = [
    "gap_evidence",
    "gap_leaves",
    "reference_evidence",
    "x64_code_extent",
    "x64_padding_length",
]

#: Capstone decodes a window at a time: one the size of a function's whole bound (up
#: to a megabyte) cost far more than the block it ends in.
_WINDOW = 256
_RVA_LIMIT = 0xFFFFFFFF
#: Where fall-through ends after the instruction.
_STOPS = frozenset({"ret", "retf", "retfq", "iretq", "iretd", "iret", "ud2", "hlt"})
_SINGLE_PAD = frozenset({0xCC, 0x90, 0x00})
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


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
    masks = _entry_masks(entry_bits, operator.index)
    starts = [operator.index(s) for s in starts]
    ends = [operator.index(e) for e in ends]
    if len(starts) != len(ends):
        raise ValueError("starts and ends differ in length")
    unchecked: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for row in incoming:
        if not isinstance(row, tuple) or len(row) != 3:
            raise TypeError("incoming must be a sequence of (target, site, bit)")
        target, site, bit = (operator.index(v) for v in row)
        placed = _reference_range(starts, ends, masks, target, site, bit)
        if placed is None:
            continue
        index, bit, by_entry = placed
        if by_entry:
            unchecked.setdefault((target, bit), []).append((starts[index], ends[index], site))
            continue
        found[target] = found.get(target, 0) | bit
    return unchecked


def _entry_masks(
    entry_bits: object, number: Callable[[Any], int]
) -> tuple[int, int, int, int] | None:
    """entry_bits as the masks (call, entry, foreign, not_a_jump), or None."""
    if entry_bits is None:
        return None
    if not isinstance(entry_bits, tuple) or len(entry_bits) != 4:
        raise TypeError("entry_bits must be 4 ints")
    call, entry, foreign, not_a_jump = (number(b) for b in entry_bits)
    return call, entry, foreign, not_a_jump


def _reference_range(
    starts: Sequence[int],
    ends: Sequence[int],
    masks: tuple[int, int, int, int] | None,
    target: int,
    site: int,
    bit: int,
) -> tuple[int, int, bool] | None:
    """The range of the sorted, disjoint [starts[i], ends[i]) holding the reference's
    site (its index), the reference's bit, and whether only an entry of the target
    explains it: with masks, a call, or a reference into another range than its own,
    gains the entry bit (and the foreign bit when it is not a jump or its target lies in
    another range). None when no range holds the site."""
    index = bisect.bisect_right(starts, site) - 1
    if index < 0 or site >= ends[index]:
        return None
    if masks is not None:
        call, entry, foreign, not_a_jump = masks
        if bit == call or not starts[index] <= target < ends[index]:
            bit |= entry
            # A jump from the code right before the target may reach the function's
            # own block laid out after its last instruction.
            if bit & not_a_jump or bisect.bisect_right(starts, target) - 1 != index:
                bit |= foreign
            return index, bit, True
    return index, bit, False


def _int64(value: object) -> int:
    """An int as the C core holds it: a value past int64 saturates."""
    number = operator.index(value)  # type: ignore[arg-type]
    return min(max(number, _INT64_MIN), _INT64_MAX)


def _int64s(values: Iterable[object]) -> list[int]:
    return [_int64(value) for value in values]


def gap_evidence(
    static_targets: Sequence[int],
    static_masks: Sequence[int],
    targets: Sequence[int],
    sites: Sequence[int],
    bits: Sequence[int],
    starts: Sequence[int],
    ends: Sequence[int],
    entry_bits: tuple[int, int, int, int] | None,
    check: Callable[[int, int, int], object],
    /,
) -> tuple[list[int], list[int]]:
    """One round's evidence masks, as two lists: the RVAs with a nonzero mask, ascending,
    and their masks.

    static_targets (strictly ascending) and static_masks are the evidence stated before;
    targets (ascending), sites and bits the references (target, site, bit). A reference
    counts when its site lies in one of the sorted, disjoint ranges [starts[i], ends[i]).
    With entry_bits (call, entry, foreign, not_a_jump), not None, a call or a reference
    from outside the target's own range is only explained by an entry: it gains the entry
    bit (and the foreign bit when it is not a jump or its target lies in another range),
    and a target gains such a bit if check(start, end, site) is true for one of its
    sites: asked bit by bit in the order the target's references meet them, site by site
    in order until one passes, and only while the target's mask lacks some of the bit.
    """
    masks = _entry_masks(entry_bits, _int64)
    if not callable(check):
        raise TypeError("check must be callable")
    columns = [
        _int64s(values)
        for values in (static_targets, static_masks, targets, sites, bits, starts, ends)
    ]
    static_targets, static_masks, targets, sites, bits, starts, ends = columns
    if len(static_targets) != len(static_masks):
        raise ValueError("static_targets and static_masks differ in length")
    if not len(targets) == len(sites) == len(bits):
        raise ValueError("targets, sites and bits differ in length")
    if len(starts) != len(ends):
        raise ValueError("starts and ends differ in length")
    if any(a >= b for a, b in itertools.pairwise(static_targets)):
        raise ValueError("static_targets must ascend strictly")
    if any(a > b for a, b in itertools.pairwise(targets)):
        raise ValueError("targets must ascend")
    out_targets: list[int] = []
    out_masks: list[int] = []
    static = dict(zip(static_targets, static_masks, strict=True))
    i, n = 0, len(targets)
    for target in sorted(static.keys() | set(targets)):
        mask = static.get(target, 0)
        # the target's entry references, bit -> sites, in the order each bit is met
        waiting: dict[int, list[tuple[int, int, int]]] = {}
        while i < n and targets[i] == target:
            site = sites[i]
            placed = _reference_range(starts, ends, masks, target, site, bits[i])
            i += 1
            if placed is None:
                continue
            index, bit, by_entry = placed
            if by_entry:
                waiting.setdefault(bit, []).append((starts[index], ends[index], site))
                continue
            mask |= bit
        for bit, refs in waiting.items():
            if mask & bit != bit and any(check(*ref) for ref in refs):
                mask |= bit
        if mask:
            out_targets.append(target)
            out_masks.append(mask)
    return out_targets, out_masks


def _callables(*functions: object) -> None:
    if not all(callable(f) for f in functions):
        raise TypeError("thunk, extent, padding, may_follow and runs_into must be callable")


def _optional_int64(value: object) -> int | None:
    return None if value is None else _int64(value)


def gap_leaves(
    targets: Sequence[int],
    masks: Sequence[int],
    gap_start: int,
    gap_end: int,
    align: int,
    bits: tuple[int, int],
    thunk: Callable[[int], int | None],
    extent: Callable[[int, int], int | None],
    padding: Callable[[int], int],
    may_follow: Callable[[int, int], object],
    runs_into: Callable[[int], object],
    /,
) -> tuple[dict[int, int], int | None]:
    """The functions a walk of the gap [gap_start, gap_end) finds, as a dict start -> end
    in the order found, and the candidate that runs into the range at gap_end (or None).

    targets (strictly ascending) are the candidate starts and masks their evidence;
    bits is (accepted, strong). The walk starts after padding(gap_start) bytes; where
    it stands, thunk(rva) (asked once per place) gives the end of an import thunk, or
    None. Else the next candidate at or after the last function's end is one if it
    has an accepted bit and an rva that align divides, and, right at that end, if
    may_follow(end, mask); it ends at extent(target, bound), bound being the next such
    candidate or gap_end (a bound without a strong bit that the code runs into, None,
    gives way to the next one). A candidate without an end whose code runs into the
    range at gap_end (runs_into(target)) holds up to it, and the walk stops there.
    Past each function, padding(end) bytes are skipped.
    """
    targets, masks = _int64s(targets), _int64s(masks)
    gap_start, gap_end, align = _int64(gap_start), _int64(gap_end), _int64(align)
    if not isinstance(bits, tuple) or len(bits) != 2:
        raise TypeError("bits must be 2 ints")
    accepted, strong = (_int64(b) for b in bits)
    _callables(thunk, extent, padding, may_follow, runs_into)
    if len(targets) != len(masks):
        raise ValueError("targets and masks differ in length")
    if any(a >= b for a, b in itertools.pairwise(targets)):
        raise ValueError("targets must ascend strictly")
    if align < 1:
        raise ValueError("align must be positive")
    entries = [i for i, t in enumerate(targets) if masks[i] & accepted and not t % align]
    entry_targets = [targets[i] for i in entries]
    leaves: dict[int, int] = {}
    index, count = 0, len(targets)
    previous_end = gap_start
    cursor = _int64(gap_start + _int64(padding(gap_start)))
    asked = None
    while True:
        if cursor < gap_end and cursor != asked:
            asked = cursor
            thunk_end = _optional_int64(thunk(cursor))
            if thunk_end is not None:
                leaves[cursor] = thunk_end
                previous_end = thunk_end
                cursor = _int64(thunk_end + _int64(padding(thunk_end)))
                continue
        index = bisect.bisect_left(targets, previous_end, index)
        if index == count:
            return leaves, None
        target, mask = targets[index], masks[index]
        index += 1
        if target % align or not mask & accepted:
            continue
        if target == previous_end and not may_follow(previous_end, mask):
            continue
        next_entry = bisect.bisect_right(entry_targets, target)
        while True:
            bound = entry_targets[next_entry] if next_entry < len(entries) else gap_end
            end = _optional_int64(extent(target, bound))
            if end is not None or bound == gap_end or masks[entries[next_entry]] & strong:
                break
            # The code runs on into the next candidate: not an entry after all.
            next_entry += 1
        if end is None and bound == gap_end and runs_into(target):
            leaves[target] = gap_end
            return leaves, target
        if end is None or end <= target:
            continue
        leaves[target] = end
        previous_end = end
        cursor = _int64(end + _int64(padding(end)))


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
