"""Virtual stack unwinding for emulated threads, the way Windows walks x64 and ARM64 stacks.

The applier must know every function an emulated thread is executing or will return
into (the consistency model of Linux livepatch and libcare). ``walk_stack`` finds those
return addresses: it unwinds frame by frame with the image's unwind data (``.pdata`` /
``.xdata``), as ``RtlLookupFunctionEntry`` + ``RtlVirtualUnwind`` do, and where that
cannot go on (no usable unwind data, a corrupt or hostile stack) it scans the rest of
the stack conservatively: every aligned word that points at code counts as a possible
return address. Nothing here raises on bad data; a walk that had to guess says so
(``complete`` is False).

The machine-specific decoding lives in ``unwind_x64`` and ``unwind_arm64``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hpatch.arch import Machine, machine_name
from hpatch.arch.base import UnwindFormat
from hpatch.emu.machine import arch_of
from hpatch.emu.unwind_base import (
    FunctionEntry,
    Lookup,
    Memory,
    ReadMemory,
    UnwindStop,
)
from hpatch.errors import HPatchError, UnsupportedError

__all__ = [
    "Frame",
    "FunctionEntry",
    "Lookup",
    "Memory",
    "ReadMemory",
    "StackWalk",
    "UnwindStop",
    "walk_stack",
    "walk_stack_explained",
]

#: The conservative scan never reads more than this many bytes of stack: a thread
#: whose stack pointer was moved far below its stack (a pivot) would otherwise make
#: the scan read gigabytes. A walk cut short this way is not complete either.
MAX_SCAN_BYTES = 1 << 24
_SCAN_CHUNK = 1 << 16
_PAGE = 0x1000
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a walk: where it executes and its stack pointer.

    ``how`` says how the frame was found: ``"registers"`` for frame 0 (the thread's
    own pc and sp), ``"unwind"`` when the callee's unwind data gave it, ``"leaf"`` when
    the callee had no unwind entry (x64: the return address at [rsp]; ARM64: LR).
    Stack words found by the conservative scan are not frames; they are
    ``StackWalk.scanned`` (their ``how`` is "scan").
    """

    pc: int
    sp: int
    how: str


@dataclass(frozen=True, slots=True)
class StackWalk:
    """The frames of one thread, innermost first, and what a fallback scan found."""

    frames: tuple[Frame, ...]
    #: Words taken as possible return addresses once the walk could not continue
    #: (empty when it completed), in stack order from the last good frame upwards.
    scanned: tuple[int, ...]
    #: True when the walk reached the stack top or the sentinel return address
    #: without guessing.
    complete: bool

    def return_addresses(self) -> tuple[int, ...]:
        """Every address the thread may return into: the callers' pcs, then the scan."""
        return tuple(frame.pc for frame in self.frames[1:]) + self.scanned


class UnwindContext(Protocol):
    """The registers an unwinder tracks; ``pc`` and ``sp`` are always known."""

    @property
    def pc(self) -> int: ...

    @property
    def sp(self) -> int: ...


ContextT = TypeVar("ContextT", bound=UnwindContext)


class Unwinder(Protocol[ContextT]):
    """One machine's virtual unwinder (``X64Unwinder``, ``Arm64Unwinder``)."""

    #: Bytes to step back from a return address to land inside the call instruction.
    call_back: int
    #: True where unwinding out of a frameless leaf may leave sp unchanged (ARM64: LR).
    leaf_keeps_sp: bool

    def context(self, registers: Mapping[str, int]) -> ContextT:
        """The unwind context of a thread's registers; UnwindStop without pc or sp."""
        ...

    def step(
        self,
        context: ContextT,
        entry: FunctionEntry | None,
        memory: Memory,
        lookup: Lookup,
        at_return: bool,
    ) -> tuple[ContextT, str, bool]:
        """Unwind one frame: (caller's context, how, whether its pc is a return address)."""
        ...

    def extra_candidates(self, context: ContextT) -> Iterable[int]:
        """Registers that may hold the only copy of a return address (ARM64: LR)."""
        ...


def _unwinder(machine: Machine) -> Unwinder[Any]:
    """The unwinder of the machine's unwind format, the one place the walk picks one."""
    # Imported here: the machine modules import this one for its records.
    from hpatch.emu.unwind_arm64 import Arm64Unwinder
    from hpatch.emu.unwind_x64 import X64Unwinder

    try:
        unwind_format = arch_of(machine).unwind_format
    except UnsupportedError:
        raise HPatchError(f"no stack unwinder for machine {machine_name(machine)}") from None
    unwinders: dict[UnwindFormat, Callable[[], Unwinder[Any]]] = {
        UnwindFormat.UNWIND_INFO: X64Unwinder,
        UnwindFormat.XDATA: Arm64Unwinder,
    }
    return unwinders[unwind_format]()


def walk_stack(
    machine: Machine,
    read: ReadMemory,
    lookup: Lookup,
    registers: Mapping[str, int],
    stack_top: int,
    *,
    is_code: Callable[[int], bool],
    stop_at: int | None = None,
    max_frames: int = 1024,
) -> StackWalk:
    """Walk one thread's stack from its registers up to ``stack_top`` (exclusive).

    ``read(va, size)`` reads emulated memory, ``lookup(pc)`` gives the unwind entry
    covering a pc (or None: a leaf), ``registers`` are the thread's registers by
    lower-case name. The walk is complete when a frame's pc is ``stop_at`` (the
    sentinel return address of the outermost call; that frame is included) or, without
    a sentinel, when the stack top or a zero return address is reached. Where it cannot
    go on, it scans every aligned word from the last good sp to ``stack_top`` for which
    ``is_code`` holds. Never raises for bad unwind data or a hostile stack (only
    ValueError when the registers lack the pc or the stack pointer).
    """
    walk, _reason = walk_stack_explained(
        machine,
        read,
        lookup,
        registers,
        stack_top,
        is_code=is_code,
        stop_at=stop_at,
        max_frames=max_frames,
    )
    return walk


def walk_stack_explained(
    machine: Machine,
    read: ReadMemory,
    lookup: Lookup,
    registers: Mapping[str, int],
    stack_top: int,
    *,
    is_code: Callable[[int], bool],
    stop_at: int | None = None,
    max_frames: int = 1024,
) -> tuple[StackWalk, str]:
    """``walk_stack``, plus why the walk stopped unwinding (for diagnostics)."""
    unwinder = _unwinder(machine)
    memory = Memory(read)
    try:
        context = unwinder.context(registers)
    except UnwindStop as exc:  # the caller's mistake, not the stack's
        raise ValueError(str(exc)) from exc
    frames = [Frame(context.pc, context.sp, "registers")]
    if stop_at is not None and context.pc == stop_at:
        return StackWalk(tuple(frames), (), True), "the thread is at the sentinel"
    at_return = False
    while True:
        if context.sp > stack_top:
            reason = f"sp 0x{context.sp:x} is above the stack top 0x{stack_top:x}"
            break
        if stop_at is None and context.sp == stack_top:
            return StackWalk(tuple(frames), (), True), "reached the stack top"
        if len(frames) >= max(max_frames, 1):
            reason = f"more than {max_frames} frames"
            break
        try:
            pc = context.pc - unwinder.call_back if at_return else context.pc
            entry = lookup(pc & _MASK64)
            caller, how, caller_at_return = unwinder.step(context, entry, memory, lookup, at_return)
        except (UnwindStop, HPatchError, struct.error, ValueError, IndexError) as exc:
            reason = str(exc) or type(exc).__name__
            break
        reason = _implausible(unwinder, context, caller, stack_top, len(frames) == 1)
        if reason:
            break
        if stop_at is not None and caller.pc == stop_at:
            frames.append(Frame(caller.pc, caller.sp, how))
            return StackWalk(tuple(frames), (), True), "reached the sentinel"
        if stop_at is None and caller.pc == 0:
            return StackWalk(tuple(frames), (), True), "reached a zero return address"
        if not is_code(caller.pc):
            reason = f"return address 0x{caller.pc:x} is not code"
            break
        frames.append(Frame(caller.pc, caller.sp, how))
        context, at_return = caller, caller_at_return
    scanned = _scan(memory, unwinder, context, stack_top, is_code)
    return StackWalk(tuple(frames), scanned, False), reason


def _implausible(
    unwinder: Unwinder[Any],
    callee: UnwindContext,
    caller: UnwindContext,
    stack_top: int,
    first: bool,
) -> str:
    """Why the unwound caller cannot be right, or "" if it may be."""
    if caller.sp > stack_top:
        return f"unwound sp 0x{caller.sp:x} is above the stack top 0x{stack_top:x}"
    if caller.sp > callee.sp:
        return ""
    # Only a frameless leaf at the top of the stack returns without popping anything
    # (ARM64 returns through LR); any other frame that does not move sp up could
    # make the walk loop.
    if first and unwinder.leaf_keeps_sp and caller.sp == callee.sp and caller.pc != callee.pc:
        return ""
    return f"unwound sp 0x{caller.sp:x} does not lie above sp 0x{callee.sp:x}"


def _scan(
    memory: Memory,
    unwinder: Unwinder[Any],
    context: UnwindContext,
    stack_top: int,
    is_code: Callable[[int], bool],
) -> tuple[int, ...]:
    """Every aligned word in [sp, stack_top) that points at code, and the link register."""
    known: dict[int, bool] = {}

    def code(value: int) -> bool:
        # Stacks repeat values (zeros, saved pointers): ask is_code once per value.
        verdict = known.get(value)
        if verdict is None:
            verdict = known[value] = bool(is_code(value))
        return verdict

    found = [value for value in unwinder.extra_candidates(context) if code(value)]
    start = (context.sp + 7) & ~7
    end = min(stack_top, start + MAX_SCAN_BYTES) & ~7
    va = start
    while va < end:
        # Chunks end on page boundaries so that an unmapped page costs only itself.
        size = min(_SCAN_CHUNK - (va % _SCAN_CHUNK), end - va)
        data = _read_or_none(memory, va, size)
        if data is None:
            found.extend(_words_in_pages(memory, va, size, code))
        else:
            found.extend(word for (word,) in struct.iter_unpack("<Q", data) if code(word))
        va += size
    return tuple(found)


def _words_in_pages(memory: Memory, va: int, size: int, code: Callable[[int], bool]) -> list[int]:
    """Code-pointing words of [va, va + size), skipping the pages that cannot be read."""
    found: list[int] = []
    page = va
    while page < va + size:
        length = min(_PAGE - (page % _PAGE), va + size - page)
        data = _read_or_none(memory, page, length)
        if data:
            found.extend(word for (word,) in struct.iter_unpack("<Q", data) if code(word))
        page += length
    return found


def _read_or_none(memory: Memory, va: int, size: int) -> bytes | None:
    try:
        return memory.read(va, size)
    except UnwindStop:
        return None
