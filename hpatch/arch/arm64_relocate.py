"""ARM64: find every field of a piece of code that must be rebound when it is copied.

Branches, ADR and literal loads carry their own displacement. ADRP is the hard case:
it names a 4 KiB page, and the instructions that add the page offset can be anywhere
the register flows. Each ADRP's register is followed along the control flow of the
code until it is overwritten or dies, through copies (``mov``) and across calls when
the register is callee-saved; every read on the way must be an ADD or a load/store
that completes the address, or the code is refused: a copy could not be proven right.
Which registers an instruction reads and writes comes from its encoding
(``_gpr_access``), checked against capstone's decode; an instruction neither models
refuses a page live across it. Each completion must be reached by a page on every
path (``_Flow.other_values``), else rewriting its offset would break the other paths.

A page may also stay live in an argument register at a call (or a result register at
a return, or in any register across a jump out of the code): a compiler leaves such
copies behind when it keeps the page in a callee-saved register. Whether the callee
reads it is out of sight, so the fixups say where the page is handed on, and the
builder accepts the copy only if every target keeps its page offset once bound (then
any completion, seen or not, lands on the corresponding address). A page handed on
that nothing in the code completes has no known target and is refused.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Sequence
from functools import cache

import capstone

from hpatch.arch.arm64_bits import adr_immediate, sign_extend
from hpatch.arch.relocate import CalleeReads, CodeFixup, RelocationError
from hpatch.arch.rewrite import Fixup

_MAX_WALK = 1 << 16
#: Where a call may read what the caller left: x0-x7, and x8 (the address of a result
#: returned in memory).
ARGUMENT_REGISTERS = frozenset(range(0, 9))
RESULT_REGISTERS = frozenset(range(0, 2))
#: What a call leaves undefined: x0-x18 by the calling convention, and x30 (the link).
CALL_CLOBBERED = frozenset((*range(0, 19), 30))


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
    """One decoded instruction word: what it does with control flow and registers
    (``modelled`` False: hpatch does not know which registers it uses)."""

    __slots__ = ("modelled", "reads", "word", "writes")

    def __init__(
        self, word: int, reads: frozenset[int], writes: frozenset[int], modelled: bool
    ) -> None:
        self.word, self.reads, self.writes, self.modelled = word, reads, writes, modelled


_NO_REGISTERS: frozenset[int] = frozenset()


def _registers(*numbers: int) -> frozenset[int]:
    """General-purpose register numbers, without 31 (SP or the zero register)."""
    return frozenset(n for n in numbers if n != 31)


def _touched(word: int, *extra: int) -> tuple[frozenset[int], frozenset[int]]:
    """Every register field of ``word`` taken as read and none as written: an
    instruction modelled no closer than that refuses any page it touches."""
    rt, rn, rt2, rs = word & 31, (word >> 5) & 31, (word >> 10) & 31, (word >> 16) & 31
    return _registers(rt, rn, rt2, rs, *extra), _NO_REGISTERS


def _gpr_access(word: int) -> tuple[frozenset[int], frozenset[int]] | None:
    """(read, written) general-purpose registers of an A64 instruction word, None for
    one hpatch does not model (SVE, SME, system calls, unallocated space).

    A register written must really be overwritten on every execution: a page wrongly
    taken as overwritten would hide its later completions. A register read may be
    over-reported (it only refuses more); where the encoding is not modelled field by
    field, every register field counts as read.
    """
    rd, rn, rm = word & 31, (word >> 5) & 31, (word >> 16) & 31
    group = (word >> 25) & 0xF
    if group in (0b1000, 0b1001):  # data processing, immediate
        op = (word >> 23) & 7
        if op in (0, 1):  # ADR, ADRP
            return _NO_REGISTERS, _registers(rd)
        if op in (2, 4):  # add/sub, logical
            return _registers(rn), _registers(rd)
        if op == 5:  # move wide: MOVN, MOVZ, MOVK (which keeps the other bits)
            opc = (word >> 29) & 3
            if opc == 1:
                return None
            return (_registers(rd) if opc == 3 else _NO_REGISTERS), _registers(rd)
        if op == 6:  # bitfield: SBFM, BFM (which keeps bits of Rd), UBFM
            opc = (word >> 29) & 3
            if opc == 3:
                return None
            return (_registers(rn, rd) if opc == 1 else _registers(rn)), _registers(rd)
        if op == 7:  # EXTR
            return _registers(rn, rm), _registers(rd)
        return _touched(word)  # add/sub with tags
    if group in (0b1010, 0b1011):  # branches, exception generation, system
        if (word & 0x7C000000) == 0x14000000:  # B, BL
            return _NO_REGISTERS, (_registers(30) if word >> 31 else _NO_REGISTERS)
        if (word & 0x7C000000) == 0x34000000:  # CBZ/CBNZ, TBZ/TBNZ
            return _registers(rd), _NO_REGISTERS
        if (word & 0xFE000000) == 0x54000000:  # B.cond
            return _NO_REGISTERS, _NO_REGISTERS
        if (word & 0xFFE0001F) == 0xD4200000:  # BRK
            return _NO_REGISTERS, _NO_REGISTERS
        if (word & 0xFFFFF01F) == 0xD503201F:  # hints
            crm, op2 = (word >> 8) & 0xF, (word >> 5) & 7
            if crm == 1:  # PAC and AUT on x17 with x16
                return _registers(16, 17), _NO_REGISTERS
            if crm == 3 or (crm == 0 and op2 == 7):  # PAC and AUT on x30, XPACLRI
                return _registers(30), _NO_REGISTERS
            return _NO_REGISTERS, _NO_REGISTERS
        if (word & 0xFFC00000) == 0xD5000000:  # system
            if word & 0x00200000 and word & 0x00180000:  # MRS, SYSL
                return _NO_REGISTERS, _registers(rd)
            return _registers(rd), _NO_REGISTERS  # barriers, MSR, SYS
        if (word & 0xFE000000) == 0xD6000000:  # branch to register
            opc = (word >> 21) & 0xF
            written = _registers(30) if opc in (1, 9) else _NO_REGISTERS
            if opc in (0, 1, 2) and (word & 0xFC1F) == 0:  # BR, BLR, RET
                return _registers(rn), written
            return _registers(rn, rd, 30), written  # the authenticated forms
        return None
    if group & 0b0101 == 0b0100:  # loads and stores
        return _load_store_access(word)
    if group in (0b0101, 0b1101):  # data processing, register
        return _register_access(word)
    if group in (0b0111, 0b1111):  # scalar floating point and Advanced SIMD
        if (word & 0x5F20FC00) == 0x1E200000:  # conversion with an integer register
            opcode = (word >> 16) & 7
            if opcode in (2, 3, 7):  # SCVTF, UCVTF, FMOV from a general register
                return _registers(rn), _NO_REGISTERS
            return _NO_REGISTERS, _registers(rd)
        if (word & 0x5F200000) == 0x1E000000:  # conversion with a fixed-point integer
            opcode = (word >> 16) & 7
            if opcode in (2, 3):
                return _registers(rn), _NO_REGISTERS
            return _NO_REGISTERS, _registers(rd)
        if (word & 0x9FE08400) == 0x0E000400:  # Advanced SIMD copy
            imm4 = (word >> 11) & 0xF
            if not word & 0x20000000 and imm4 in (1, 3):  # DUP, INS from a general register
                return _registers(rn), _NO_REGISTERS
            if not word & 0x20000000 and imm4 in (5, 7):  # SMOV, UMOV
                return _NO_REGISTERS, _registers(rd)
        return _NO_REGISTERS, _NO_REGISTERS
    return None  # reserved, SME, SVE, unallocated


def _load_store_access(word: int) -> tuple[frozenset[int], frozenset[int]]:
    rt, rn, rm, rt2 = word & 31, (word >> 5) & 31, (word >> 16) & 31, (word >> 10) & 31
    vector = bool(word & 0x04000000)
    if (word & 0xBE000000) == 0x0C000000:  # Advanced SIMD structures
        if word & 0x00800000:  # post-indexed: the base moves
            return _registers(rn, rm), _registers(rn)
        return _registers(rn), _NO_REGISTERS
    if (word & 0x3B000000) == 0x18000000:  # load literal
        if vector or word >> 30 == 3:  # into a vector register, PRFM
            return _NO_REGISTERS, _NO_REGISTERS
        return _NO_REGISTERS, _registers(rt)
    if (word & 0x38000000) == 0x28000000:  # register pairs
        mode, load, opc = (word >> 23) & 3, bool(word & 0x00400000), word >> 30
        if not vector and opc == 3:
            return _touched(word)
        moved = _registers(rn) if mode in (1, 3) else _NO_REGISTERS
        if vector:
            return _registers(rn), moved
        if load:
            return _registers(rn), _registers(rt, rt2) | moved
        return _registers(rn, rt, rt2), moved
    if (word & 0x38000000) == 0x38000000:  # single registers
        size, opc = word >> 30, (word >> 22) & 3
        if word & 0x01000000:  # unsigned offset
            base, moved = _registers(rn), _NO_REGISTERS
        elif not word & 0x00200000:  # unscaled, pre- or post-indexed, unprivileged
            indexed = (word >> 10) & 3 in (1, 3)
            base, moved = _registers(rn), (_registers(rn) if indexed else _NO_REGISTERS)
        elif (word >> 10) & 3 == 2:  # register offset
            base, moved = _registers(rn, rm), _NO_REGISTERS
        else:  # atomics, LD64B/ST64B (eight registers), pointer-authenticated loads
            return _touched(word, *range(rt, min(rt + 8, 31)))
        if vector:
            return base, moved
        if opc == 0:  # store
            return base | _registers(rt), moved
        if opc == 2 and size == 3:  # PRFM
            return base, moved
        if opc == 3 and size >= 2:
            return _touched(word)
        return base, moved | _registers(rt)
    return _touched(word, rm + 1 if rm < 31 else 31, rt + 1 if rt < 31 else 31)


def _register_access(word: int) -> tuple[frozenset[int], frozenset[int]]:
    rd, rn, rm, ra = word & 31, (word >> 5) & 31, (word >> 16) & 31, (word >> 10) & 31
    if not word & 0x10000000:  # logical, add/sub (shifted or extended register)
        return _registers(rn, rm), _registers(rd)
    op2 = (word >> 21) & 0xF
    if op2 == 0 and (word >> 10) & 0x3F == 0:  # add/sub with carry
        return _registers(rn, rm), _registers(rd)
    if op2 == 2:  # conditional compare (register or immediate)
        return _registers(rn) | (_NO_REGISTERS if word & 0x800 else _registers(rm)), _NO_REGISTERS
    if op2 == 4:  # conditional select
        return _registers(rn, rm), _registers(rd)
    if op2 == 6:  # two sources, or one (PAC and AUT keep bits of Rd)
        if word & 0x40000000:
            return _registers(rn, rd), _registers(rd)
        return _registers(rn, rm), _registers(rd)
    if op2 & 8:  # three sources
        return _registers(rn, rm, ra), _registers(rd)
    return _touched(word)


def _decode_words(
    code: bytes, code_rva: int, instructions: Sequence[tuple[int, int]]
) -> list[_Word | None]:
    """Each word of ``code``, decoded where it lies in an instruction range, else None.

    The registers come from the encoding (``_gpr_access``); capstone decodes each word
    too, and a register it names that the encoding does not is a disagreement: the
    word counts as not modelled. (Capstone's own read/write split is not used: it
    takes ``asr w8, w27, #1`` to read w8 and ``cmp x8, #0`` to write x8.)
    """
    count = len(code) // 4
    words = struct.unpack_from(f"<{count}I", code)
    decoded: list[_Word | None] = [None] * count
    decoder = _decoder()
    for start, end in instructions:
        for index in range((start - code_rva) // 4, (end - code_rva) // 4):
            word = words[index]
            access = _gpr_access(word)
            named: set[int] = set()
            for insn in decoder.disasm(code[4 * index : 4 * index + 4], code_rva + 4 * index):
                read, written = insn.regs_access()
                named = {
                    n
                    for r in (*read, *written)
                    if (n := _register_number(insn.reg_name(r))) is not None
                }
            if access is None or not named <= access[0] | access[1]:
                decoded[index] = _Word(word, frozenset(named), _NO_REGISTERS, False)
            else:
                decoded[index] = _Word(word, access[0], access[1], True)
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


def _stored_register(word: int) -> int | None:
    """The general-purpose register a STR (unsigned immediate) writes to memory."""
    if (word & 0x3B000000) == 0x39000000 and not word & 0x04000000 and not word & 0x00C00000:
        return word & 0x1F
    return None


def direct_branch(word: int, rva: int) -> tuple[int, bool, bool] | None:
    """(target, is conditional, is a call) of a B, BL, B.cond, CBZ/CBNZ or TBZ/TBNZ word
    at ``rva``; None for any other word."""
    if (word & 0x7C000000) == 0x14000000:  # B / BL imm26
        call = bool(word & 0x80000000)
        return rva + 4 * sign_extend(word & 0x03FFFFFF, 26), False, call
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:  # imm19
        return rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19), True, False
    if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ imm14
        return rva + 4 * sign_extend((word >> 5) & 0x3FFF, 14), True, False
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
        callee_reads: CalleeReads | None = None,
    ) -> None:
        self.words, self.code_rva = words, code_rva
        self.indirect_targets = indirect_targets
        self.callee_reads = callee_reads

    def handed_to(self, callee: int | None, holders: frozenset[int]) -> bool:
        """Whether the registers of ``holders`` that carry arguments may reach code
        that reads them: any callee but one known to write them first."""
        passed = holders & ARGUMENT_REGISTERS
        if not passed:
            return False
        return callee is None or self.callee_reads is None or self.callee_reads(callee, passed)

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
                if _is_trap(word):
                    break
                if not item.modelled:
                    raise refuse(rva, "is live at an instruction hpatch does not model")
                if _page_offset_kind(word) is not None and (word >> 5) & 0x1F in holders:
                    if _stored_register(word) in holders:
                        raise refuse(rva, "is stored to memory")
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
                if not holders:
                    break
                if _is_indirect_call(word):
                    if self.handed_to(None, holders):
                        passed_on.append(rva)
                    holders = holders - CALL_CLOBBERED
                    index += 1
                    continue
                if _is_return_or_jump(word):
                    if (word & 0xFFFFFC1F) == 0xD65F0000:  # RET
                        if holders & RESULT_REGISTERS:
                            passed_on.append(rva)
                    elif self.indirect_targets and (word & 0xFFFFFC1F) == 0xD61F0000:
                        # BR: a jump table's dispatch
                        if holders & ARGUMENT_REGISTERS:
                            passed_on.append(rva)
                        pending.extend(
                            ((t - self.code_rva) // 4, holders)
                            for t in sorted(self.indirect_targets)
                        )
                    else:  # a jump out of the code, to anywhere
                        passed_on.append(rva)
                    break
                target, continues, is_call = _branch(word, rva)
                if is_call:
                    # A direct call: the callee sees the page only if it reads a register
                    # holding it before writing it.
                    if self.handed_to(target, holders):
                        passed_on.append(rva)
                    holders = holders - CALL_CLOBBERED
                    index += 1
                    continue
                if target is not None:
                    if self.code_rva <= target < self.code_rva + 4 * len(self.words):
                        pending.append(((target - self.code_rva) // 4, holders))
                    else:
                        # Another function (a tail call) or another part of this one,
                        # which may complete the page in any register.
                        passed_on.append(rva)
                    if not continues:
                        break
                index += 1
        return sorted(found), min(passed_on, default=None)

    def other_values(self) -> list[int]:
        """For each word, the registers (a bit mask) that may reach it holding
        something other than a page an ADRP of the code set: the page a completion
        adds to must be one on every path, or the walk took a path the code does not
        (into the tables of another dispatch, past a call that does not return).

        Code no path from the start reaches (an exception handler, which the system
        enters) starts with every register unknown.
        """
        unknown = (1 << 31) - 1
        clobbered = sum(1 << n for n in CALL_CLOBBERED)
        masks = [-1] * len(self.words)
        pending = [(0, unknown)]
        seed = 0
        while True:
            while pending:
                index, mask = pending.pop()
                while 0 <= index < len(self.words) and self.words[index] is not None:
                    if masks[index] >= 0 and masks[index] | mask == masks[index]:
                        break
                    mask = masks[index] = max(masks[index], 0) | mask
                    item = self.words[index]
                    assert item is not None
                    word = item.word
                    rva = self.code_rva + 4 * index
                    if not item.modelled:
                        mask = unknown
                    elif (word & 0x9F000000) == 0x90000000:  # ADRP
                        mask &= ~(1 << (word & 0x1F))
                    elif (word & 0xFFE0FFE0) == 0xAA0003E0:  # mov xD, xS
                        source, destination = (word >> 16) & 0x1F, word & 0x1F
                        mask = mask & ~(1 << destination) | ((mask >> source) & 1) << destination
                    else:
                        mask |= sum(1 << n for n in item.writes)
                    if _is_trap(word):
                        break
                    if _is_indirect_call(word):
                        mask |= clobbered
                    elif _is_return_or_jump(word):
                        if self.indirect_targets and (word & 0xFFFFFC1F) == 0xD61F0000:
                            pending.extend(
                                ((t - self.code_rva) // 4, mask)
                                for t in sorted(self.indirect_targets)
                            )
                        break
                    else:
                        target, continues, is_call = _branch(word, rva)
                        if is_call:
                            mask |= clobbered
                        elif target is not None:
                            if self.code_rva <= target < self.code_rva + 4 * len(self.words):
                                pending.append(((target - self.code_rva) // 4, mask))
                            if not continues:
                                break
                    index += 1
            while seed < len(self.words) and (self.words[seed] is None or masks[seed] >= 0):
                seed += 1
            if seed == len(self.words):
                return [max(mask, 0) for mask in masks]
            pending.append((seed, unknown))


def arm64_code_fixups(
    code: bytes,
    code_rva: int,
    instructions: Sequence[tuple[int, int]],
    own_range: tuple[int, int],
    relocated: Sequence[int],
    image_base: int,
    indirect_targets: Iterable[int] = (),
    callee_reads: CalleeReads | None = None,
) -> list[CodeFixup]:
    """The fields of ``code`` (at ``code_rva``) to rebind when it is copied elsewhere.

    ``instructions`` are the [start, end) RVA ranges holding instructions; the rest is
    data, of which only relocated fields are fixed up. Branches, ADR and literal loads
    leaving ``own_range``, every ADRP and the page offsets completing it, and every
    relocated field. ``indirect_targets`` are the in-code targets of the code's jump
    tables; ``callee_reads(callee, registers)`` tells whether a function the code calls
    may read one of ``registers`` before writing it (without it, any may).
    RelocationError when the code cannot be proven relocatable.
    """
    if code_rva % 4 or any(start % 4 or end % 4 for start, end in instructions):
        raise RelocationError(f"misaligned ARM64 code at 0x{code_rva:x}")
    lo, hi = own_range
    words = _decode_words(code, code_rva, instructions)
    flow = _Flow(words, code_rva, frozenset(indirect_targets), callee_reads)
    fixups: list[CodeFixup] = []
    completed_by: dict[int, int] = {}  # consumer index -> the address it completes
    other_values: list[int] | None = None
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
        pages = adr_immediate(word)
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
            other_values = flow.other_values() if other_values is None else other_values
            base = (consumer_word >> 5) & 0x1F
            if other_values[consumer] >> base & 1:
                raise RelocationError(
                    f"the page offset at 0x{site:x} completes the page set at 0x{rva:x} on "
                    f"one path and another value of x{base} on another"
                )
            fixups.append(CodeFixup(site, kind, target, site, rva, group_passed_on))
        fixups.append(
            CodeFixup(rva, Fixup.ARM64_PAGEBASE_REL21, first_target, rva, rva, group_passed_on)
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
        target = rva + 4 * sign_extend(word & 0x03FFFFFF, 26)
        return CodeFixup(rva, Fixup.ARM64_BRANCH26, target, rva)
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
        target = rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19)  # B.cond, CBZ/CBNZ
        return CodeFixup(rva, Fixup.ARM64_BRANCH19, target, rva)
    if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ
        target = rva + 4 * sign_extend((word >> 5) & 0x3FFF, 14)
        return CodeFixup(rva, Fixup.ARM64_BRANCH14, target, rva)
    if (word & 0x3B000000) == 0x18000000 and (word & 0xC4000000) != 0xC0000000:  # LDR literal
        target = rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19)
        return CodeFixup(rva, Fixup.ARM64_BRANCH19, target, rva)
    if (word & 0x9F000000) == 0x10000000:  # ADR
        target = rva + adr_immediate(word)
        return CodeFixup(rva, Fixup.ARM64_REL21, target, rva)
    return None
