"""ARM64 virtual unwinding: packed unwind data and ``.xdata`` unwind codes.

Follows Microsoft's "ARM64 exception handling" document and ``RtlVirtualUnwind``:
in a function body every unwind code is undone; inside a prolog only the codes of
the instructions that have run (the codes are stored in reverse prolog order, so the
first ``len - offset`` are skipped); inside an epilog the codes from the epilog's
start index, skipping those of the instructions already run. The return address is
then in LR.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpatch.emu.unwind_base import FunctionEntry, Lookup, Memory, UnwindStop

_MASK64 = (1 << 64) - 1
FP, LR = 29, 30

END = 0xE4
END_C = 0xE5
SAVE_NEXT = 0xE6


def code_length(first: int) -> int:
    """Bytes of the unwind code that starts with ``first``."""
    if first < 0xC0:
        return 1
    if first < 0xE0:
        return 2
    # alloc_l, add_fp, save_any_reg, and the reserved multi-byte forms 0xf8..0xfb.
    return {0xE0: 4, 0xE2: 2, 0xE7: 3, 0xF8: 2, 0xF9: 3, 0xFA: 4, 0xFB: 5}.get(first, 1)


@dataclass(slots=True)
class Arm64Context:
    """pc, sp and x0..x30 (None: unknown)."""

    pc: int
    sp: int
    x: list[int | None]

    def copy(self) -> Arm64Context:
        """An independent copy, for the caller's frame."""
        return Arm64Context(self.pc, self.sp, list(self.x))


@dataclass(slots=True)
class _Outcome:
    """Side effects of unwind codes beyond registers."""

    pc_from_lr: bool = True  # False after a machine frame: the pc was restored itself
    at_return: bool = True  # False when the caller's pc is not a return address
    signed_lr: bool = False  # pac_sign_lr: LR carries a pointer authentication code


class Arm64Unwinder:
    """``RtlVirtualUnwind`` for ARM64, over emulated memory."""

    call_back = 4
    leaf_keeps_sp = True

    def context(self, registers: Mapping[str, int]) -> Arm64Context:
        """The unwind context of a thread's registers (pc and sp are required)."""
        if "pc" not in registers or "sp" not in registers:
            raise UnwindStop("the registers lack pc or sp")
        x: list[int | None] = [None] * 31
        for number in range(31):
            value = registers.get(f"x{number}")
            if value is None and number == FP:
                value = registers.get("fp")
            if value is None and number == LR:
                value = registers.get("lr")
            x[number] = None if value is None else value & _MASK64
        return Arm64Context(registers["pc"] & _MASK64, registers["sp"] & _MASK64, x)

    def extra_candidates(self, context: Arm64Context) -> Iterable[int]:
        """LR: a leaf or a prolog that has not saved it yet holds its return address there."""
        lr = context.x[LR]
        return () if lr is None else (lr,)

    def step(
        self,
        context: Arm64Context,
        entry: FunctionEntry | None,
        memory: Memory,
        lookup: Lookup,
        at_return: bool,
    ) -> tuple[Arm64Context, str, bool]:
        """Unwind the frame of ``context`` with ``entry`` (None: a leaf returning through LR)."""
        caller = context.copy()
        outcome = _Outcome()
        how = "leaf"
        if entry is not None:
            how = "unwind"
            length = entry.end_va - entry.begin_va
            offset = context.pc - entry.begin_va
            # A return address just past the entry (a call ends it) is in the body.
            body_only = at_return and offset == length
            if offset % 4 or not (0 <= offset < length or body_only):
                raise UnwindStop(
                    f"entry 0x{entry.begin_va:x}..0x{entry.end_va:x} does not cover "
                    f"pc 0x{context.pc:x}"
                )
            if entry.unwind_word & 3:
                _unwind_packed(caller, entry.unwind_word, offset // 4, body_only, memory, outcome)
            else:
                _unwind_xdata(caller, entry, offset // 4, body_only, memory, outcome)
        if outcome.pc_from_lr:
            lr = caller.x[LR]
            if lr is None:
                raise UnwindStop("the return address is in LR, which is not known")
            caller.pc = _strip_pac(lr) if outcome.signed_lr else lr
        return caller, how, outcome.at_return


def _strip_pac(value: int) -> int:
    """Drop a pointer authentication code from a user-mode return address (like XPACI)."""
    return value & ((1 << 48) - 1) if not value >> 55 & 1 else value | ~((1 << 48) - 1) & _MASK64


def _register(context: Arm64Context, number: int) -> int:
    value = context.x[number]
    if value is None:
        raise UnwindStop(f"the unwind data needs x{number}, which is not known")
    return value


def _restore(
    context: Arm64Context, memory: Memory, first: int, count: int, slot: int, writeback: int
) -> None:
    """Load ``count`` consecutive registers from sp + 8 * slot; then sp += writeback.

    Register numbers past x30 (a save_next run that moved on to the FP registers) and
    the FP registers themselves are not tracked; only their stack slots matter.
    """
    for index in range(count):
        number = first + index
        if 0 <= number <= LR:
            context.x[number] = memory.u64(context.sp + 8 * (slot + index))
    context.sp = (context.sp + writeback) & _MASK64


def _sequence_length(codes: bytes, start: int, *, through_end_c: bool) -> int:
    """Instructions the codes from ``start`` describe, up to ``end``.

    A prolog ends at ``end_c`` too: what follows is a fragment's phantom prolog, run
    by its parent. An epilog runs through it: a fragment that saved registers of its
    own restores them, then runs its parent's epilog (the "shrink wrapping" example
    of the ARM64 exception handling document). A sequence that starts at ``end_c``
    describes no instruction of this fragment at all.
    """
    count, at = 0, start
    if through_end_c and at < len(codes) and codes[at] == END_C:
        return 0
    while at < len(codes):
        first = codes[at]
        if first == END or (first == END_C and not through_end_c):
            break
        if _is_instruction(first):
            count += 1
        at += code_length(first)
    return count


def _is_instruction(first: int) -> bool:
    """Whether a code describes an instruction (not end_c, not a custom stack code)."""
    return first != END_C and first & 0xF8 != 0xE8


def _run_codes(
    context: Arm64Context,
    codes: bytes,
    start: int,
    skip: int,
    memory: Memory,
    outcome: _Outcome,
) -> None:
    """Undo the operations of the codes from ``start``, after skipping ``skip`` of them."""
    at = start
    while at < len(codes) and skip:
        if codes[at] == END:
            break
        skip -= _is_instruction(codes[at])
        at += code_length(codes[at])
    pairs = 2  # registers a paired save restores; each save_next before it adds two
    while at < len(codes):
        first = codes[at]
        length = code_length(first)
        if at + length > len(codes):
            raise UnwindStop("truncated ARM64 unwind code")
        value = int.from_bytes(codes[at : at + min(length, 2)], "big")
        sp = context.sp
        if first < 0x20:  # alloc_s
            context.sp = sp + 16 * (first & 0x1F)
        elif first < 0x40:  # save_r19r20_x: stp x19, x20, [sp, #-Z*8]!
            _restore_pairs(context, memory, 19, pairs, 0, 8 * (first & 0x1F))
        elif first < 0x80:  # save_fplr: stp x29, lr, [sp, #Z*8]
            _restore(context, memory, FP, 2, first & 0x3F, 0)
        elif first < 0xC0:  # save_fplr_x: stp x29, lr, [sp, #-(Z+1)*8]!
            _restore(context, memory, FP, 2, 0, 8 * ((first & 0x3F) + 1))
        elif first < 0xC8:  # alloc_m
            context.sp = sp + 16 * (value & 0x7FF)
        elif first < 0xCC:  # save_regp: stp x(19+X), x(20+X), [sp, #Z*8]
            _restore_pairs(context, memory, 19 + (value >> 6 & 0xF), pairs, value & 0x3F, 0)
        elif first < 0xD0:  # save_regp_x: pre-indexed, [sp, #-(Z+1)*8]!
            z = value & 0x3F
            _restore_pairs(context, memory, 19 + (value >> 6 & 0xF), pairs, 0, 8 * (z + 1))
        elif first < 0xD4:  # save_reg: str x(19+X), [sp, #Z*8]
            _restore(context, memory, 19 + (value >> 6 & 0xF), 1, value & 0x3F, 0)
        elif first < 0xD6:  # save_reg_x: str x(19+X), [sp, #-(Z+1)*8]!
            _restore(context, memory, 19 + (value >> 5 & 0xF), 1, 0, 8 * ((value & 0x1F) + 1))
        elif first < 0xD8:  # save_lrpair: stp x(19+2X), lr, [sp, #Z*8]
            z = value & 0x3F
            _restore(context, memory, 19 + 2 * (value >> 6 & 0x7), 1, z, 0)
            _restore(context, memory, LR, 1, z + 1, 0)
        elif first < 0xDA or 0xDC <= first < 0xDE:  # save_fregp, save_freg
            pass  # FP registers are not tracked and the stack pointer stays
        elif first < 0xDC:  # save_fregp_x: stp d(8+X), d(9+X), [sp, #-(Z+1)*8]!
            context.sp = sp + 8 * ((value & 0x3F) + 1)
        elif first == 0xDE:  # save_freg_x: str d(8+X), [sp, #-(Z+1)*8]!
            context.sp = sp + 8 * ((value & 0x1F) + 1)
        elif first == 0xE0:  # alloc_l
            context.sp = sp + 16 * int.from_bytes(codes[at + 1 : at + 4], "big")
        elif first == 0xE1:  # set_fp: mov x29, sp
            context.sp = _register(context, FP)
        elif first == 0xE2:  # add_fp: add x29, sp, #X*8
            context.sp = (_register(context, FP) - 8 * codes[at + 1]) & _MASK64
        elif first == END:
            break
        elif first == SAVE_NEXT:
            pairs += 2
            at += length
            continue
        elif first == 0xE7:  # save_any_reg
            _save_any_reg(context, memory, codes[at + 1], codes[at + 2], pairs)
        elif first == 0xE9:  # MSFT_OP_MACHINE_FRAME: the pc and sp the trap saved
            context.pc = memory.u64(sp + 8)
            context.sp = memory.u64(sp)
            outcome.pc_from_lr = False
            outcome.at_return = False
        elif first == 0xEC:  # MSFT_OP_CLEAR_UNWOUND_TO_CALL: LR is a resume pc
            outcome.at_return = False
        elif first == 0xFC:  # pac_sign_lr
            outcome.signed_lr = True
        elif first not in (0xE3, END_C):  # nop, end_c (a fragment's phantom prolog follows)
            raise UnwindStop(f"unsupported ARM64 unwind code 0x{first:02x}")
        pairs = 2
        at += length


def _restore_pairs(
    context: Arm64Context, memory: Memory, first: int, count: int, slot: int, writeback: int
) -> None:
    """A paired integer save, extended by save_next; pairs past x28 are FP pairs."""
    integer = max(0, min(count, 29 - first)) if count > 2 else count
    _restore(context, memory, first, integer, slot, 0)
    context.sp = (context.sp + writeback) & _MASK64


def _save_any_reg(
    context: Arm64Context, memory: Memory, register_byte: int, offset_byte: int, pairs: int
) -> None:
    """save_any_reg: 0pxrrrrr ffoooooo (pair, pre-indexed, register, kind, offset)."""
    paired, writeback = register_byte & 0x40, register_byte & 0x20
    number, kind, offset = register_byte & 0x1F, offset_byte >> 6, offset_byte & 0x3F
    count = pairs if paired else 1
    if kind > 2:
        raise UnwindStop("save_any_reg with a reserved register kind")
    if writeback:
        if kind == 0:
            _restore(context, memory, number, count, 0, 0)
        context.sp = (context.sp + 16 * (offset + 1)) & _MASK64
    elif kind == 0:
        _restore(context, memory, number, count, offset * (2 if paired else 1), 0)


def _unwind_xdata(
    context: Arm64Context,
    entry: FunctionEntry,
    offset: int,
    body_only: bool,
    memory: Memory,
    outcome: _Outcome,
) -> None:
    """Unwind with an ``.xdata`` record; ``offset`` counts instructions from the entry."""
    va = entry.image_base + entry.unwind_word
    header = memory.u32(va)
    function_length = header & 0x3FFFF
    if header >> 18 & 3:
        raise UnwindStop(f".xdata at 0x{va:x} has unknown version {header >> 18 & 3}")
    packed_epilog = header >> 21 & 1
    epilog_field, code_words = header >> 22 & 0x1F, header >> 27
    cursor = va + 4
    if epilog_field == 0 and code_words == 0:
        extended = memory.u32(cursor)
        epilog_field, code_words = extended & 0xFFFF, extended >> 16 & 0xFF
        cursor += 4
    scopes: list[tuple[int, int]] = []
    if not packed_epilog:
        raw = memory.read(cursor, 4 * epilog_field)
        for index in range(epilog_field):
            scope = int.from_bytes(raw[4 * index : 4 * index + 4], "little")
            scopes.append((scope & 0x3FFFF, scope >> 22))
        cursor += 4 * epilog_field
    codes = memory.read(cursor, 4 * code_words)
    if not body_only:
        prolog = _sequence_length(codes, 0, through_end_c=False)
        if offset < prolog:
            # In the prolog: only the instructions before the pc have run.
            _run_codes(context, codes, 0, prolog - offset, memory, outcome)
            return
        if packed_epilog:
            start = epilog_field
            size = _sequence_length(codes, start, through_end_c=True) + 1  # + the ret
            if start < len(codes) and function_length - size <= offset < function_length:
                _run_codes(
                    context, codes, start, offset - (function_length - size), memory, outcome
                )
                return
        else:
            for epilog_offset, start in scopes:
                if offset < epilog_offset:
                    break
                if start >= len(codes):
                    raise UnwindStop(f".xdata at 0x{va:x}: epilog index {start} is past its codes")
                # The ret follows the codes' instructions and is part of the epilog.
                if offset <= epilog_offset + _sequence_length(codes, start, through_end_c=True):
                    _run_codes(context, codes, start, offset - epilog_offset, memory, outcome)
                    return
    _run_codes(context, codes, 0, 0, memory, outcome)


def _unwind_packed(
    context: Arm64Context,
    word: int,
    offset: int,
    body_only: bool,
    memory: Memory,
    outcome: _Outcome,
) -> None:
    """Unwind with packed unwind data (Flag 1: one prolog and epilog; Flag 2: neither)."""
    flag = word & 3
    if flag == 3:
        raise UnwindStop("packed unwind data with the reserved flag 3")
    function_length = word >> 2 & 0x7FF
    reg_f, reg_i, homes = word >> 13 & 7, word >> 16 & 0xF, word >> 20 & 1
    chain, frame_size = word >> 21 & 3, word >> 23
    int_size = 8 * reg_i + (8 if chain == 1 else 0)
    fp_size = 8 * reg_f + (8 if reg_f else 0)
    save_size = (int_size + fp_size + 64 * homes + 15) & ~15
    local_size = 16 * frame_size - save_size
    if local_size < 0:
        raise UnwindStop("packed unwind data whose saves exceed its frame size")
    int_regs = int_size // 8
    if chain == 2:
        outcome.signed_lr = True

    # The canonical prolog: [pacibsp] int saves, [str lr], fp saves, [4 homing stps],
    # then the local area. The epilog mirrors it without the homing stores and
    # without mov x29, sp (so the epilog is one instruction shorter, plus the ret).
    steps = (int_size + 8) // 16 + (fp_size + 8) // 16
    if chain in (2, 3):
        steps += 2 + (1 if chain == 2 else 0)  # stp x29, lr and mov x29, sp; pacibsp
        if local_size > 512:
            steps += 1 + (1 if local_size > 4088 else 0)
    elif local_size:
        steps += 1 + (1 if local_size > 4088 else 0)
    skip = 0
    if flag == 1 and not body_only:
        if offset < steps + 4 * homes:
            skip = steps + 4 * homes - offset
        elif offset >= function_length - (steps + 1):
            skip = offset - (function_length - (steps + 1))
            homes = 0  # the epilog does not reload the homed arguments

    if not skip:
        if chain in (2, 3):
            context.sp = _register(context, FP)
            _restore(context, memory, FP, 2, 0, 0)
        context.sp += local_size
        if chain == 1:
            _restore(context, memory, LR, 1, int_regs - 1, 0)
        _restore(context, memory, 19, reg_i, 0, 8 * (save_size // 8))
        return

    # Undo, newest first, the operations whose instructions have run (position >= skip).
    position = 0

    def due() -> bool:
        nonlocal position
        position += 1
        return position - 1 >= skip

    if chain in (2, 3):
        if due():  # mov x29, sp
            context.sp = _register(context, FP)
        if local_size <= 512:
            if due():  # stp x29, lr, [sp, #-local_size]!
                _restore(context, memory, FP, 2, 0, local_size)
        else:
            if due():  # stp x29, lr, [sp, #0]
                _restore(context, memory, FP, 2, 0, 0)
            if due():  # sub sp, sp, #(local_size - 4088) or #local_size
                context.sp += (local_size - 1) % 4088 + 1
            if local_size > 4088 and due():  # sub sp, sp, #4088
                context.sp += 4088
    elif local_size:
        if due():
            context.sp += (local_size - 1) % 4088 + 1
        if local_size > 4088 and due():
            context.sp += 4088
    position += 4 * homes
    save_slots = save_size // 8
    if fp_size:
        if reg_f % 2 == 0 and due():
            pass  # str d(8+RegF), [sp, #...]: no stack pointer change
        for pair in range((reg_f + 1) // 2 - 1, -1, -1):
            if due() and pair == 0 and not int_size:
                context.sp += 8 * save_slots  # stp d8, d9, [sp, #-save_size]!
    if reg_i % 2:
        if due():
            if chain == 1:  # stp x(18+RegI), lr, [sp, #...]
                _restore(context, memory, LR, 1, int_regs - 1, 0)
            if reg_i > 1:  # str x(18+RegI), [sp, #...]
                _restore(context, memory, 18 + reg_i, 1, reg_i - 1, 0)
            else:  # str x19, [sp, #-save_size]!
                _restore(context, memory, 19, 1, 0, 8 * save_slots)
    elif chain == 1 and due():
        if reg_i:  # str lr, [sp, #...]
            _restore(context, memory, LR, 1, int_regs - 1, 0)
        else:  # str lr, [sp, #-save_size]!
            _restore(context, memory, LR, 1, 0, 8 * save_slots)
    for pair in range(reg_i // 2 - 1, -1, -1):
        if not due():
            continue
        if pair:  # stp x(19+2i), x(20+2i), [sp, #16*i]
            _restore(context, memory, 19 + 2 * pair, 2, 2 * pair, 0)
        else:  # stp x19, x20, [sp, #-save_size]!
            _restore(context, memory, 19, 2, 0, 8 * save_slots)
