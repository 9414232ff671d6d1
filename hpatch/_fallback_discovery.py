"""Pure-Python twins of the discovery loops in ``hpatch._native`` (native/discovery.c).

Same signatures, same results, same errors; tests/arch/test_discovery_parity.py holds
them to it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from functools import cache

import capstone

#: Capstone decodes a window at a time: one the size of a function's whole bound (up
#: to a megabyte) cost far more than the block it ends in.
_WINDOW = 256
_RVA_LIMIT = 0xFFFFFFFF
#: Where fall-through ends after the instruction.
_STOPS = frozenset({"ret", "retf", "retfq", "iretq", "iretd", "iret", "ud2", "hlt"})


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
    if not 0 <= start_rva <= _RVA_LIMIT or len(data) > 0x7FFFFFFF:
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
