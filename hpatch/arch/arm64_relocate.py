"""ARM64: find every field of a piece of code that must be rebound when it is copied.

Branches, ADR and literal loads carry their own displacement. ADRP is the hard case:
it names a 4 KiB page, and the instructions that add the page offset can be anywhere
the register flows. Each ADRP's register is followed along the control flow of the
code (capstone reports which registers each instruction reads and writes) until it is
overwritten or dies; every read on the way must be an ADD or a load/store that
completes the address, or the code is refused: a copy could not be proven right.

A page may also stay live in an argument register at a call (or a result register at
a return, or across a branch out of the code): a compiler leaves such copies behind
when it keeps the page in a callee-saved register. Whether the callee reads it is out
of sight, so the fixups say where the page is handed on, and the builder accepts the
copy only if every target keeps its page offset once bound (then any completion,
seen or not, lands on the corresponding address). A page handed on that nothing in
the code completes has no known target and is refused.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence
from functools import cache

import capstone

from hpatch._fallback import _sign_extend
from hpatch.arch.relocate import CodeFixup, RelocationError
from hpatch.arch.rewrite import Fixup

_MAX_WALK = 1 << 16
_ARGUMENT_REGISTERS = range(0, 8)
_RESULT_REGISTERS = range(0, 2)
_CALL_CLOBBERED = range(0, 19)


@cache
def _decoder() -> capstone.Cs:
    decoder = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    decoder.detail = True
    return decoder


def _register_number(name: str) -> int | None:
    """x0..x30 / w0..w30 -> 0..30; anything else (sp, vector registers) -> None."""
    if len(name) >= 2 and name[0] in "xw" and name[1:].isdigit():
        return int(name[1:])
    if name in ("fp", "x29"):
        return 29
    if name in ("lr", "x30"):
        return 30
    return None


class _Word:
    """One decoded instruction word: what it does with control flow and registers."""

    __slots__ = ("reads", "word", "writes")

    def __init__(self, word: int, reads: frozenset[int], writes: frozenset[int]) -> None:
        self.word, self.reads, self.writes = word, reads, writes


def _decode_words(
    code: bytes, code_rva: int, instructions: Sequence[tuple[int, int]]
) -> list[_Word | None]:
    """Each word of ``code``, decoded where it lies in an instruction range, else None."""
    count = len(code) // 4
    words = struct.unpack_from(f"<{count}I", code)
    decoded: list[_Word | None] = [None] * count
    decoder = _decoder()
    for start, end in instructions:
        for index in range((start - code_rva) // 4, (end - code_rva) // 4):
            reads: set[int] = set()
            writes: set[int] = set()
            for insn in decoder.disasm(code[4 * index : 4 * index + 4], code_rva + 4 * index):
                read, written = insn.regs_access()
                reads = {n for r in read if (n := _register_number(insn.reg_name(r))) is not None}
                writes = {
                    n for r in written if (n := _register_number(insn.reg_name(r))) is not None
                }
            decoded[index] = _Word(words[index], frozenset(reads), frozenset(writes))
    return decoded


def _page_offset_kind(word: int) -> tuple[Fixup, int] | None:
    """(kind, scale) if ``word`` completes an address with an unsigned 12-bit offset."""
    if (word & 0x7F800000) == 0x11000000:  # ADD (immediate), 32 or 64 bit, no shift
        return Fixup.ARM64_PAGEOFFSET_12A, 0
    if (word & 0x3B000000) == 0x39000000:  # LDR/STR (unsigned immediate), incl. SIMD&FP
        size = word >> 30
        if word & 0x04000000 and size == 0 and word & 0x00800000:
            return Fixup.ARM64_PAGEOFFSET_12L, 4  # 128-bit Q register
        return Fixup.ARM64_PAGEOFFSET_12L, size
    return None


def direct_branch(word: int, rva: int) -> tuple[int, bool, bool] | None:
    """(target, is conditional, is a call) of a B, BL, B.cond, CBZ/CBNZ or TBZ/TBNZ word
    at ``rva``; None for any other word."""
    if (word & 0x7C000000) == 0x14000000:  # B / BL imm26
        call = bool(word & 0x80000000)
        return rva + 4 * _sign_extend(word & 0x03FFFFFF, 26), False, call
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:  # imm19
        return rva + 4 * _sign_extend((word >> 5) & 0x7FFFF, 19), True, False
    if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ imm14
        return rva + 4 * _sign_extend((word >> 5) & 0x3FFF, 14), True, False
    return None


def _branch(word: int, rva: int) -> tuple[int | None, bool, bool]:
    """(direct target, continues to the next word, is a call) of a control-flow word."""
    direct = direct_branch(word, rva)
    if direct is None:
        return None, True, False
    target, conditional, call = direct
    return target, conditional or call, call


def _is_indirect_call(word: int) -> bool:
    return (word & 0xFFFFFC1F) in (0xD63F0000,) or (word & 0xFEFFF800) == 0xD63F0800


def _is_return_or_jump(word: int) -> bool:
    """RET, BR and their authenticated forms: control leaves without returning here."""
    return (word & 0xFE9FF000) == 0xD61F0000 or (word & 0xFEFFF800) == 0xD61F0800


def _is_trap(word: int) -> bool:
    return (word & 0xFFE0001F) == 0xD4200000 or word == 0  # BRK, UDF #0


class _Flow:
    """Follows one ADRP's register through the code."""

    def __init__(
        self,
        words: list[_Word | None],
        code_rva: int,
        indirect_targets: frozenset[int],
    ) -> None:
        self.words, self.code_rva = words, code_rva
        self.indirect_targets = indirect_targets

    def consumers(self, adrp_index: int, register: int) -> tuple[list[int], int | None]:
        """Indices of the words that complete the ADRP at ``adrp_index``, and the RVA
        of the first place the page may be handed on beyond the code (None: nowhere).

        The page may be copied to other registers (``mov xD, xS``); each path carries
        the set of registers that hold it.
        """
        adrp_rva = self.code_rva + 4 * adrp_index

        def refuse(rva: int, how: str) -> RelocationError:
            return RelocationError(f"the page address set at 0x{adrp_rva:x} {how} at 0x{rva:x}")

        found: set[int] = set()
        passed_on: list[int] = []
        pending: list[tuple[int, frozenset[int]]] = [(adrp_index + 1, frozenset({register}))]
        visited: set[tuple[int, frozenset[int]]] = set()
        steps = 0
        while pending:
            index, holders = pending.pop()
            while holders and (index, holders) not in visited:
                steps += 1
                if steps > _MAX_WALK:
                    raise RelocationError(f"the page set at 0x{adrp_rva:x} flows too far to follow")
                item = self.words[index] if 0 <= index < len(self.words) else None
                if item is None:
                    raise RelocationError(
                        f"the page set at 0x{adrp_rva:x} is live where the code ends"
                    )
                visited.add((index, holders))
                rva = self.code_rva + 4 * index
                word = item.word
                if _page_offset_kind(word) is not None and (word >> 5) & 0x1F in holders:
                    found.add(index)
                    holders = holders - item.writes
                    index += 1
                    continue
                if (word & 0xFFE0FFE0) == 0xAA0003E0:  # mov xD, xS (ORR xD, xzr, xS)
                    source, destination = (word >> 16) & 0x1F, word & 0x1F
                    copied = source in holders
                    holders = holders - {destination}
                    if copied:
                        holders = holders | {destination}
                    index += 1
                    continue
                if holders & item.reads:
                    raise refuse(rva, "is used in a way hpatch cannot rebind")
                holders = holders - item.writes
                if not holders or _is_trap(word):
                    break
                if _is_return_or_jump(word) or _is_indirect_call(word):
                    is_return = (word & 0xFFFFFC1F) == 0xD65F0000
                    passed = _RESULT_REGISTERS if is_return else _ARGUMENT_REGISTERS
                    if holders & set(passed):
                        passed_on.append(rva)
                    if _is_indirect_call(word):
                        holders = holders - set(_CALL_CLOBBERED)
                        index += 1
                        continue
                    if (word & 0xFFFFFC1F) == 0xD61F0000:  # BR: a jump table's dispatch
                        pending.extend(
                            ((t - self.code_rva) // 4, holders)
                            for t in sorted(self.indirect_targets)
                        )
                    break
                target, continues, is_call = _branch(word, rva)
                if is_call:
                    if holders & set(_ARGUMENT_REGISTERS):
                        passed_on.append(rva)
                    holders = holders - set(_CALL_CLOBBERED)
                    index += 1
                    continue
                if target is not None:
                    if self.code_rva <= target < self.code_rva + 4 * len(self.words):
                        pending.append(((target - self.code_rva) // 4, holders))
                    elif holders & set(_ARGUMENT_REGISTERS):
                        passed_on.append(rva)
                    if not continues:
                        break
                index += 1
        return sorted(found), min(passed_on, default=None)


def arm64_code_fixups(
    code: bytes,
    code_rva: int,
    instructions: Sequence[tuple[int, int]],
    own_range: tuple[int, int],
    relocated: Sequence[int],
    image_base: int,
    indirect_targets: Iterable[int] = (),
) -> list[CodeFixup]:
    """The fields of ``code`` (at ``code_rva``) to rebind when it is copied elsewhere.

    ``instructions`` are the [start, end) RVA ranges holding instructions; the rest is
    data, of which only relocated fields are fixed up. Branches, ADR and literal loads
    leaving ``own_range``, every ADRP and the page offsets completing it, and every
    relocated field. ``indirect_targets`` are the in-code targets of the code's jump
    tables. RelocationError when the code cannot be proven relocatable.
    """
    if code_rva % 4 or any(start % 4 or end % 4 for start, end in instructions):
        raise RelocationError(f"misaligned ARM64 code at 0x{code_rva:x}")
    lo, hi = own_range
    words = _decode_words(code, code_rva, instructions)
    flow = _Flow(words, code_rva, frozenset(indirect_targets))
    fixups: list[CodeFixup] = []
    completed_by: dict[int, int] = {}  # consumer index -> the address it completes
    for index, item in enumerate(words):
        if item is None:
            continue
        word = item.word
        rva = code_rva + 4 * index
        direct = _direct_fixup(word, rva)
        if direct is not None:
            if not lo <= direct.target_rva < hi:
                fixups.append(direct)
            continue
        if (word & 0x9F000000) != 0x90000000:  # not ADRP
            continue
        pages = _sign_extend((((word >> 5) & 0x7FFFF) << 2) | ((word >> 29) & 3), 21)
        page = (rva & ~0xFFF) + pages * 4096
        first_target = page
        consumers, passed_on = flow.consumers(index, word & 0x1F)
        if passed_on is not None and not consumers:
            raise RelocationError(
                f"the page address set at 0x{rva:x} may be passed on at 0x{passed_on:x}, "
                "and nothing in the code completes it: its target is unknown"
            )
        group_passed_on = -1 if passed_on is None else passed_on
        for position, consumer in enumerate(consumers):
            consumer_word = words[consumer].word  # type: ignore[union-attr]
            kind, scale = _page_offset_kind(consumer_word)  # type: ignore[misc]
            target = page + (((consumer_word >> 10) & 0xFFF) << scale)
            first_target = target if position == 0 else first_target
            if completed_by.setdefault(consumer, target) != target:
                raise RelocationError(
                    f"the page offset at 0x{code_rva + 4 * consumer:x} completes the pages "
                    "of two ADRPs"
                )
            site = code_rva + 4 * consumer
            fixups.append(CodeFixup(site, kind, target, site, index, group_passed_on))
        fixups.append(
            CodeFixup(rva, Fixup.ARM64_PAGEBASE_REL21, first_target, rva, index, group_passed_on)
        )
    start = bisect.bisect_left(relocated, code_rva)
    stop = bisect.bisect_left(relocated, code_rva + len(code))
    for field in relocated[start:stop]:
        inside_code = any(begin - 8 < field < end for begin, end in instructions)
        if inside_code or field + 8 > code_rva + len(code):
            raise RelocationError(f"a relocated field at 0x{field:x} lies inside instructions")
        (value,) = struct.unpack_from("<Q", code, field - code_rva)
        fixups.append(CodeFixup(field, Fixup.ARM64_ADDR64, value - image_base, field))
    unique: dict[int, CodeFixup] = {}
    for fixup in fixups:
        known = unique.setdefault(fixup.field_rva, fixup)
        if (known.kind, known.target_rva) != (fixup.kind, fixup.target_rva):
            raise RelocationError(f"the field at 0x{fixup.field_rva:x} must name two targets")
    return sorted(unique.values())


def _direct_fixup(word: int, rva: int) -> CodeFixup | None:
    """The fixup of a PC-relative branch, ADR or literal load (which carry their offset)."""
    if (word & 0x7C000000) == 0x14000000:  # B / BL
        target = rva + 4 * _sign_extend(word & 0x03FFFFFF, 26)
        return CodeFixup(rva, Fixup.ARM64_BRANCH26, target, rva)
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
        target = rva + 4 * _sign_extend((word >> 5) & 0x7FFFF, 19)  # B.cond, CBZ/CBNZ
        return CodeFixup(rva, Fixup.ARM64_BRANCH19, target, rva)
    if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ
        target = rva + 4 * _sign_extend((word >> 5) & 0x3FFF, 14)
        return CodeFixup(rva, Fixup.ARM64_BRANCH14, target, rva)
    if (word & 0x3B000000) == 0x18000000 and (word & 0xC4000000) != 0xC0000000:  # LDR literal
        target = rva + 4 * _sign_extend((word >> 5) & 0x7FFFF, 19)
        return CodeFixup(rva, Fixup.ARM64_BRANCH19, target, rva)
    if (word & 0x9F000000) == 0x10000000:  # ADR
        target = rva + _sign_extend((((word >> 5) & 0x7FFFF) << 2) | ((word >> 29) & 3), 21)
        return CodeFixup(rva, Fixup.ARM64_REL21, target, rva)
    return None
