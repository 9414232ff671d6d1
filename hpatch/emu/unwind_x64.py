"""x64 virtual unwinding: UNWIND_INFO versions 1 and 2, chained info, epilogue emulation.

Follows ``RtlVirtualUnwind``: when the instructions at the pc are an epilogue
(``add rsp``/``lea rsp`` then pops then ``ret`` or a jump out of the function), they
are emulated forward; otherwise the unwind codes whose prolog offset has been reached
are undone, chained entries after them, and the return address is popped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpatch.emu.unwind_base import FunctionEntry, Lookup, Memory, UnwindStop

#: The unwind-code register numbers, in order.
REGISTER_NAMES = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
_RSP = 4
_MASK64 = (1 << 64) - 1

UWOP_PUSH_NONVOL = 0
UWOP_ALLOC_LARGE = 1
UWOP_ALLOC_SMALL = 2
UWOP_SET_FPREG = 3
UWOP_SAVE_NONVOL = 4
UWOP_SAVE_NONVOL_FAR = 5
UWOP_EPILOG = 6  # version 2; in version 1 the unused UWOP_SAVE_XMM (2 slots)
UWOP_SPARE_CODE = 7  # version 1's unused UWOP_SAVE_XMM_FAR (3 slots)
UWOP_SAVE_XMM128 = 8
UWOP_SAVE_XMM128_FAR = 9
UWOP_PUSH_MACHFRAME = 10

UNW_FLAG_CHAININFO = 0x4
#: Slots each operation takes (UWOP_ALLOC_LARGE with OpInfo 1 takes one more).
_SLOTS = {0: 1, 1: 2, 2: 1, 3: 1, 4: 2, 5: 3, 7: 3, 8: 2, 9: 3, 10: 1}
_MAX_CHAIN = 32
#: Longest canonical epilogue: lea rsp (7), sixteen two-byte pops, a 6-byte jmp [rip].
_EPILOGUE_WINDOW = 48


@dataclass(slots=True)
class X64Context:
    """rip and the sixteen integer registers by unwind number (None: unknown)."""

    pc: int
    gpr: list[int | None]

    @property
    def sp(self) -> int:
        """rsp."""
        value = self.gpr[_RSP]
        assert value is not None  # rsp is always known; the constructor checks
        return value

    def copy(self) -> X64Context:
        """An independent copy, for the caller's frame."""
        return X64Context(self.pc, list(self.gpr))


@dataclass(frozen=True, slots=True)
class UnwindInfo:
    """One UNWIND_INFO record, decoded."""

    version: int
    flags: int
    prolog_size: int
    frame_register: int
    frame_offset: int
    #: (prolog offset, operation, op info, operand slots) per unwind operation.
    operations: tuple[tuple[int, int, int, tuple[int, ...]], ...]
    #: Version 2: [start, end) offsets from the function start of each epilogue.
    epilogs: tuple[tuple[int, int], ...]
    has_epilog_codes: bool
    #: The parent RUNTIME_FUNCTION (begin RVA, end RVA, unwind word) of chained info.
    chained: tuple[int, int, int] | None


def read_unwind_info(memory: Memory, va: int, function_size: int) -> UnwindInfo:
    """Decode the UNWIND_INFO at ``va`` (of a function ``function_size`` bytes long)."""
    header = memory.read(va, 4)
    version, flags = header[0] & 7, header[0] >> 3
    if version not in (1, 2):
        raise UnwindStop(f"unwind info at 0x{va:x} has unknown version {version}")
    count = header[2]
    slots = struct.unpack(f"<{count}H", memory.read(va + 4, 2 * count)) if count else ()
    operations: list[tuple[int, int, int, tuple[int, ...]]] = []
    epilogs: list[tuple[int, int]] = []
    epilog_size: int | None = None
    index = 0
    while index < count:
        slot = slots[index]
        offset, operation, info = slot & 0xFF, (slot >> 8) & 0xF, slot >> 12
        if operation == UWOP_EPILOG and version == 2:
            # The first epilog code gives the size (and bit 0: one epilogue ends the
            # function); each later one the distance of an epilogue from the end.
            if epilog_size is None:
                epilog_size = offset
                if info & 1:
                    epilogs.append((function_size - offset, function_size))
            else:
                distance = offset | (info << 8)
                if distance:  # zero: padding to an even slot count
                    start = function_size - distance
                    epilogs.append((start, start + epilog_size))
            index += 1
            continue
        if operation == UWOP_EPILOG or operation not in _SLOTS:
            raise UnwindStop(f"unwind info at 0x{va:x} uses unknown operation {operation}")
        size = _SLOTS[operation] + (1 if operation == UWOP_ALLOC_LARGE and info else 0)
        if operation == UWOP_ALLOC_LARGE and info > 1:
            raise UnwindStop(f"unwind info at 0x{va:x}: UWOP_ALLOC_LARGE with op info {info}")
        if index + size > count:
            raise UnwindStop(f"unwind info at 0x{va:x}: operation {operation} is truncated")
        operations.append((offset, operation, info, tuple(slots[index + 1 : index + size])))
        index += size
    chained = None
    if flags & UNW_FLAG_CHAININFO:
        at = va + 4 + 2 * (count + (count & 1))
        begin, end, unwind = struct.unpack("<III", memory.read(at, 12))
        chained = (begin, end, unwind)
    return UnwindInfo(
        version=version,
        flags=flags,
        prolog_size=header[1],
        frame_register=header[3] & 0xF,
        frame_offset=header[3] >> 4,
        operations=tuple(operations),
        epilogs=tuple(epilogs),
        has_epilog_codes=epilog_size is not None,
        chained=chained,
    )


class X64Unwinder:
    """``RtlVirtualUnwind`` for x64, over emulated memory."""

    call_back = 1
    leaf_keeps_sp = False

    def context(self, registers: Mapping[str, int]) -> X64Context:
        """The unwind context of a thread's registers (rip and rsp are required)."""
        if "rip" not in registers or "rsp" not in registers:
            raise UnwindStop("the registers lack rip or rsp")
        gpr: list[int | None] = [
            registers[name] & _MASK64 if name in registers else None for name in REGISTER_NAMES
        ]
        return X64Context(registers["rip"] & _MASK64, gpr)

    def extra_candidates(self, context: X64Context) -> Iterable[int]:
        """x64 return addresses always live on the stack."""
        return ()

    def step(
        self,
        context: X64Context,
        entry: FunctionEntry | None,
        memory: Memory,
        lookup: Lookup,
        at_return: bool,
    ) -> tuple[X64Context, str, bool]:
        """Unwind the frame of ``context`` with ``entry`` (None: a leaf)."""
        caller = context.copy()
        if entry is None:
            # A leaf: nothing pushed, the return address is at [rsp].
            _return(caller, memory)
            return caller, "leaf", True
        entry = _direct(entry, memory)
        size = entry.end_va - entry.begin_va
        info = read_unwind_info(memory, entry.image_base + entry.unwind_word, size)
        offset = context.pc - entry.begin_va
        inside = 0 <= offset < size
        if not inside and not (at_return and context.pc == entry.end_va):
            raise UnwindStop(
                f"entry 0x{entry.begin_va:x}..0x{entry.end_va:x} does not cover pc 0x{context.pc:x}"
            )
        # A return address just past the entry (a call that ends it) is in the body.
        in_prolog = inside and offset < info.prolog_size and info.chained is None
        if inside and not in_prolog and self._in_epilogue(context, entry, info, memory, lookup):
            _emulate_epilogue(caller, info, memory)
            return caller, "unwind", True
        frame_base = _frame_base(context, info, offset if in_prolog else None)
        machine_frame = False
        current, prolog_offset = info, (offset if inside else None)
        for _ in range(_MAX_CHAIN):
            machine_frame |= _undo_prolog(caller, current, frame_base, prolog_offset, memory)
            if current.chained is None:
                break
            begin, end, unwind = current.chained
            parent = _direct(
                FunctionEntry(
                    entry.image_base, entry.image_base + begin, entry.image_base + end, unwind
                ),
                memory,
            )
            current = read_unwind_info(
                memory, parent.image_base + parent.unwind_word, parent.end_va - parent.begin_va
            )
            prolog_offset = None  # the primary's prolog ran before this fragment
        else:
            raise UnwindStop(f"chained unwind info of 0x{entry.begin_va:x} does not end")
        if machine_frame:
            return caller, "unwind", False
        _return(caller, memory)
        return caller, "unwind", True

    def _in_epilogue(
        self,
        context: X64Context,
        entry: FunctionEntry,
        info: UnwindInfo,
        memory: Memory,
        lookup: Lookup,
    ) -> bool:
        offset = context.pc - entry.begin_va
        if info.version == 2 and info.has_epilog_codes:
            # Version 2 says where its epilogues are; no need to guess from the code.
            return any(start <= offset < end for start, end in info.epilogs)
        code = memory.code(context.pc, _EPILOGUE_WINDOW)
        at = _stack_release_length(code, info.frame_register)
        at = _pops_end(code, at)
        return _ends_epilogue(code, at, context.pc, entry, info, memory, lookup)


def _direct(entry: FunctionEntry, memory: Memory) -> FunctionEntry:
    """Follow indirect entries (unwind word bit 0) to the RUNTIME_FUNCTION they name."""
    for _ in range(_MAX_CHAIN):
        if not entry.unwind_word & 1:
            return entry
        at = entry.image_base + (entry.unwind_word & ~1)
        begin, end, unwind = struct.unpack("<III", memory.read(at, 12))
        entry = FunctionEntry(
            entry.image_base, entry.image_base + begin, entry.image_base + end, unwind
        )
    raise UnwindStop("indirect RUNTIME_FUNCTION entries do not end")


def _return(context: X64Context, memory: Memory) -> None:
    """Pop the return address into rip."""
    context.pc = memory.u64(context.sp)
    context.gpr[_RSP] = context.sp + 8


def _register(context: X64Context, number: int) -> int:
    value = context.gpr[number]
    if value is None:
        raise UnwindStop(f"the unwind data needs {REGISTER_NAMES[number]}, which is not known")
    return value


def _frame_base(context: X64Context, info: UnwindInfo, prolog_offset: int | None) -> int:
    """The frame the SAVE_NONVOL offsets count from: rsp after the fixed allocation.

    With a frame register, that is the register minus its offset, once the prolog
    has set it (inside the prolog: once the UWOP_SET_FPREG instruction has run).
    """
    if info.frame_register == 0:
        return context.sp
    if prolog_offset is not None:
        set_at = [op[0] for op in info.operations if op[1] == UWOP_SET_FPREG]
        if not set_at or prolog_offset < set_at[0]:
            return context.sp
    return (_register(context, info.frame_register) - 16 * info.frame_offset) & _MASK64


def _undo_prolog(
    context: X64Context,
    info: UnwindInfo,
    frame_base: int,
    prolog_offset: int | None,
    memory: Memory,
) -> bool:
    """Undo the operations of ``info`` that have run; True if a machine frame was popped.

    ``prolog_offset`` is the pc's offset into the function, or None when every
    operation has run (the body, or a chained parent).
    """
    machine_frame = False
    for code_offset, operation, op_info, operands in info.operations:
        if prolog_offset is not None and code_offset > prolog_offset:
            continue  # the instruction this code describes has not run yet
        sp = context.sp
        if operation == UWOP_PUSH_NONVOL:
            context.gpr[op_info] = memory.u64(sp)
            context.gpr[_RSP] = sp + 8
        elif operation == UWOP_ALLOC_LARGE:
            size = operands[0] * 8 if op_info == 0 else operands[0] | operands[1] << 16
            context.gpr[_RSP] = sp + size
        elif operation == UWOP_ALLOC_SMALL:
            context.gpr[_RSP] = sp + op_info * 8 + 8
        elif operation == UWOP_SET_FPREG:
            if info.frame_register == 0:
                raise UnwindStop("UWOP_SET_FPREG in unwind info without a frame register")
            value = _register(context, info.frame_register) - 16 * info.frame_offset
            context.gpr[_RSP] = value & _MASK64
        elif operation == UWOP_SAVE_NONVOL:
            context.gpr[op_info] = memory.u64(frame_base + operands[0] * 8)
        elif operation == UWOP_SAVE_NONVOL_FAR:
            context.gpr[op_info] = memory.u64(frame_base + (operands[0] | operands[1] << 16))
        elif operation == UWOP_PUSH_MACHFRAME:
            # An interrupt or exception frame: [error code], rip, cs, eflags, rsp, ss.
            base = sp + (8 if op_info else 0)
            context.pc = memory.u64(base)
            context.gpr[_RSP] = memory.u64(base + 24)
            machine_frame = True
        # UWOP_SAVE_XMM128(_FAR) and the spare code restore nothing the walk needs.
    return machine_frame


def _stack_release_length(code: bytes, frame_register: int) -> int:
    """Length of an ``add rsp, imm`` / ``lea rsp, [frame + disp]`` at the start of ``code``."""
    if len(code) >= 4 and code[0] == 0x48 and code[1] == 0x83 and code[2] == 0xC4:
        return 4
    if len(code) >= 7 and code[0] == 0x48 and code[1] == 0x81 and code[2] == 0xC4:
        return 7
    if len(code) >= 4 and code[0] & 0xFE == 0x48 and code[1] == 0x8D:
        # lea rsp, [frame register + disp8/disp32]: only with the function's frame register.
        register = (code[0] & 1) << 3 | (code[2] & 7)
        if register and register == frame_register:
            if code[2] & 0xF8 == 0x60:
                return 4
            if code[2] & 0xF8 == 0xA0 and len(code) >= 7:
                return 7
    return 0


def _pops_end(code: bytes, at: int) -> int:
    """Offset after the run of ``pop reg`` instructions starting at ``at``."""
    while at < len(code):
        if code[at] & 0xF8 == 0x58:
            at += 1
        elif 0x40 <= code[at] <= 0x4F and at + 1 < len(code) and code[at + 1] & 0xF8 == 0x58:
            at += 2
        else:
            break
    return at


def _ends_epilogue(
    code: bytes,
    at: int,
    pc: int,
    entry: FunctionEntry,
    info: UnwindInfo,
    memory: Memory,
    lookup: Lookup,
) -> bool:
    """True if the instruction at ``code[at]`` ends an epilogue (a return or a tail call)."""
    if at >= len(code):
        return False
    opcode = code[at]
    if opcode in (0xC3, 0xC2) or (opcode == 0xF3 and code[at + 1 : at + 2] == b"\xc3"):
        return True
    if opcode in (0xEB, 0xE9):
        if opcode == 0xEB and at + 2 <= len(code):
            target = pc + at + 2 + struct.unpack_from("<b", code, at + 1)[0]
        elif opcode == 0xE9 and at + 5 <= len(code):
            target = pc + at + 5 + struct.unpack_from("<i", code, at + 1)[0]
        else:
            return False
        return _is_tail_call(target & _MASK64, entry, info, memory, lookup)
    if opcode == 0xFF and code[at + 1 : at + 2] == b"\x25":
        return True  # jmp [rip + disp32]: an import thunk style tail call
    # rex.W jmp r/m64: the REX.W is redundant, so compilers use it to mark a tail call.
    return (
        opcode & 0xF8 == 0x48
        and at + 2 < len(code)
        and code[at + 1] == 0xFF
        and code[at + 2] & 0x38 == 0x20
    )


def _is_tail_call(
    target: int, entry: FunctionEntry, info: UnwindInfo, memory: Memory, lookup: Lookup
) -> bool:
    """Whether a direct jump to ``target`` leaves the function (so it ends an epilogue).

    As Windows: a jump inside the entry is not one, except to its own start (a
    recursive tail call). Beyond Windows, which would call any jump out of the entry a
    tail call: a jump into the middle of another entry, or to an entry that only
    continues a frame (chained info, or unwind codes without a prolog: gcc's ``.cold``
    parts), stays in the function.
    """
    if entry.begin_va <= target < entry.end_va:
        return target == entry.begin_va and info.chained is None
    try:
        other = lookup(target)
    except Exception:  # a lookup that fails tells nothing about the target
        other = None
    if other is None:
        return True
    if other.begin_va != target:
        return False
    try:
        other = _direct(other, memory)
        target_info = read_unwind_info(
            memory, other.image_base + other.unwind_word, other.end_va - other.begin_va
        )
    except UnwindStop:
        return True
    continues_frame = target_info.chained is not None or (
        target_info.prolog_size == 0 and bool(target_info.operations)
    )
    return not continues_frame


def _emulate_epilogue(context: X64Context, info: UnwindInfo, memory: Memory) -> None:
    """Run the epilogue at the pc forward: release the frame, pop, return."""
    code = memory.code(context.pc, _EPILOGUE_WINDOW)
    at = 0
    if len(code) >= 4 and code[0] & 0xF8 == 0x48:
        if code[1] == 0x83 and code[2] == 0xC4:
            context.gpr[_RSP] = (context.sp + struct.unpack_from("<b", code, 3)[0]) & _MASK64
            at = 4
        elif code[1] == 0x81 and code[2] == 0xC4 and len(code) >= 7:
            context.gpr[_RSP] = (context.sp + struct.unpack_from("<i", code, 3)[0]) & _MASK64
            at = 7
        elif code[1] == 0x8D and code[2] & 0xF8 in (0x60, 0xA0):
            register = (code[0] & 1) << 3 | (code[2] & 7)
            if code[2] & 0xF8 == 0x60:
                displacement, at = struct.unpack_from("<b", code, 3)[0], 4
            elif len(code) >= 7:
                displacement, at = struct.unpack_from("<i", code, 3)[0], 7
            else:
                raise UnwindStop("truncated lea rsp in an epilogue")
            context.gpr[_RSP] = (_register(context, register) + displacement) & _MASK64
    while at < len(code):
        if code[at] & 0xF8 == 0x58:
            register, at = code[at] & 7, at + 1
        elif 0x40 <= code[at] <= 0x4F and at + 1 < len(code) and code[at + 1] & 0xF8 == 0x58:
            register, at = (code[at] & 1) << 3 | (code[at + 1] & 7), at + 2
        else:
            break
        value = memory.u64(context.sp)
        context.gpr[_RSP] = context.sp + 8
        if register != _RSP:
            context.gpr[register] = value
    # The ret (or the tail call's jump, which leaves the return address in place).
    _return(context, memory)
