"""Execution on Unicorn over an AddressSpace: calls, threads that stop and resume, faults.

One Unicorn engine runs every thread of a process; a thread is a saved register
context plus its own stack and TEB. The engine maps each region of the address space
through ``mem_map_ptr``, so emulated code and the host see the same bytes; code
written by the host drops Unicorn's translated blocks for that range.

Unicorn is imported here only, so the rest of hpatch loads without it.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import unicorn
import unicorn.unicorn_py3.unicorn as _binding
from unicorn import arm64_const, x86_const

from hpatch.arch import Machine
from hpatch.emu.memory import PAGE_SIZE, AddressSpace, Protection, Region
from hpatch.errors import EmulationFault, HPatchError

#: Instructions one call may run before it is stopped as a runaway.
DEFAULT_STEP_LIMIT = 20_000_000
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Convention:
    """How the Windows ABI of one machine passes arguments and results, and what else
    the emulator does differently on it (Unicorn's engine, the TEB register, where a
    trap leaves the pc). One per machine in ``_CONVENTIONS``, picked when a Cpu is
    made: no other code of the Cpu looks at the machine."""

    pc: int
    sp: int
    result: int
    arguments: tuple[int, ...]
    #: Bytes between the stack pointer at entry and the first stack argument.
    stack_arguments_at: int
    link: int | None  # ARM64: the return address goes in LR; x64 pushes it
    names: dict[str, int]
    #: Floating-point arguments of a function that takes only such (x64: XMM0-3,
    #: ARM64: D0-7), and where a floating-point result goes (XMM0, D0).
    float_arguments: tuple[int, ...]
    #: PROCESSOR_ARCHITECTURE_* of the machine, as GetSystemInfo reports it.
    processor_architecture: int
    #: Stack a host function's call into emulated code takes below the host function's
    #: own entry sp: x64 the callee's return address, home space and padding (its own
    #: return address stays above); ARM64 a frame record (fp, the host function's
    #: return address). Either way a stack walk finds the host function's caller.
    host_frame: int
    #: Unicorn's (architecture, mode).
    engine: tuple[int, int]
    #: The register that holds the thread's TEB (x64 GS base, ARM64 X18).
    teb_register: int
    #: Names ``registers`` gives too, each for another name's register (x64: pc, sp).
    aliases: tuple[tuple[str, str], ...]
    #: The pc of the instruction that raised interrupt ``number``, from the pc Unicorn
    #: reports and a read of emulated memory.
    trap_pc: Callable[[int, int, Callable[[int, int], bytes]], int]


def _x64_trap_pc(number: int, pc: int, read: Callable[[int, int], bytes]) -> int:
    if number == 3 or number >= 32:
        # int3 (CC), int 3 (CD 03) and int n (CD n: __fastfail is int 0x29) are traps:
        # rip is past them already. The fault names the instruction, as faults do.
        pc -= 1 if number == 3 and read(pc - 1, 1) == b"\xcc" else 2
    return pc


def _trap_at_pc(number: int, pc: int, read: Callable[[int, int], bytes]) -> int:
    return pc  # BRK leaves the pc at itself


def _x64() -> Convention:
    names = {
        name: getattr(x86_const, f"UC_X86_REG_{name.upper()}")
        for name in (
            "rax",
            "rbx",
            "rcx",
            "rdx",
            "rsi",
            "rdi",
            "rbp",
            "rsp",
            "r8",
            "r9",
            "r10",
            "r11",
            "r12",
            "r13",
            "r14",
            "r15",
            "rip",
        )
    }
    return Convention(
        pc=names["rip"],
        sp=names["rsp"],
        result=names["rax"],
        arguments=(names["rcx"], names["rdx"], names["r8"], names["r9"]),
        stack_arguments_at=8 + 32,  # return address, then the callee's home space
        link=None,
        names=names,
        float_arguments=tuple(getattr(x86_const, f"UC_X86_REG_XMM{i}") for i in range(4)),
        processor_architecture=9,
        host_frame=8 + 32 + 8,
        engine=(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64),
        teb_register=x86_const.UC_X86_REG_GS_BASE,
        aliases=(("pc", "rip"), ("sp", "rsp")),
        trap_pc=_x64_trap_pc,
    )


def _arm64() -> Convention:
    names = {f"x{i}": getattr(arm64_const, f"UC_ARM64_REG_X{i}") for i in range(29)}
    names.update(
        fp=arm64_const.UC_ARM64_REG_X29,
        lr=arm64_const.UC_ARM64_REG_X30,
        sp=arm64_const.UC_ARM64_REG_SP,
        pc=arm64_const.UC_ARM64_REG_PC,
    )
    return Convention(
        pc=names["pc"],
        sp=names["sp"],
        result=names["x0"],
        arguments=tuple(names[f"x{i}"] for i in range(8)),
        stack_arguments_at=0,
        link=names["lr"],
        names=names,
        float_arguments=tuple(getattr(arm64_const, f"UC_ARM64_REG_D{i}") for i in range(8)),
        processor_architecture=12,
        host_frame=16,
        engine=(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM),
        teb_register=arm64_const.UC_ARM64_REG_X18,
        aliases=(),
        trap_pc=_trap_at_pc,
    )


#: The register tables: the one place the emulator picks by machine.
_CONVENTIONS: dict[Machine, Callable[[], Convention]] = {
    Machine.AMD64: _x64,
    Machine.ARM64: _arm64,
}


def _uc_protection(protection: Protection) -> int:
    value = 0
    if protection & Protection.R:
        value |= unicorn.UC_PROT_READ
    if protection & Protection.W:
        value |= unicorn.UC_PROT_WRITE
    if protection & Protection.X:
        value |= unicorn.UC_PROT_EXEC
    return value


#: Unicorn's C library, as its binding loaded it.
_LIB: Any = _binding.uclib
#: Unicorn's callbacks, as its C API declares them. A UC_HOOK_CODE callback: (engine,
#: address, instruction size, user data).
_CODE_HOOK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)
#: UC_HOOK_MEM_*_UNMAPPED and _PROT: (engine, access, address, size, value, user data),
#: true to go on.
_INVALID_ACCESS_HOOK = ctypes.CFUNCTYPE(
    ctypes.c_bool,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_void_p,
)
#: UC_HOOK_INTR: (engine, interrupt number, user data).
_INTERRUPT_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)


def _check(status: int) -> None:
    if status != unicorn.UC_ERR_OK:
        raise unicorn.UcError(status)


class _Registers:
    """A fixed list of 64-bit registers of one engine, read or written together in one
    call of Unicorn's C API. The binding's reg_read and reg_write pick a ctypes type for
    the register in Python on every call (several microseconds each, more for a batch):
    over the few registers a call touches, that was a large part of an emulated call's
    cost. The arrays are made once; every status is checked."""

    def __init__(self, uc: unicorn.Uc, registers: Sequence[int]) -> None:
        count = len(registers)
        self._handle = uc._uch  # the engine handle the C API takes
        self._ids = (ctypes.c_int * count)(*registers)
        self._values = (ctypes.c_uint64 * count)()
        base = ctypes.addressof(self._values)
        self._pointers = (ctypes.c_void_p * count)(*(base + 8 * i for i in range(count)))
        self._count = count

    def read(self) -> list[int]:
        _check(_LIB.uc_reg_read_batch(self._handle, self._ids, self._pointers, self._count))
        return self._values[:]

    def write(self, values: Sequence[int]) -> None:
        """Write one value per register (each masked to 64 bits)."""
        self._values[:] = list(values)
        _check(_LIB.uc_reg_write_batch(self._handle, self._ids, self._pointers, self._count))

    def write_first(self, value: int) -> None:
        """Write ``value`` (masked to 64 bits) to the first register alone."""
        self._values[0] = value
        _check(_LIB.uc_reg_write(self._handle, self._ids[0], self._pointers[0]))


#: What a Unicorn invalid-access hook's access type was.
_ACCESS_KINDS = {
    unicorn.UC_MEM_READ_UNMAPPED: "read",
    unicorn.UC_MEM_WRITE_UNMAPPED: "write",
    unicorn.UC_MEM_FETCH_UNMAPPED: "execute",
    unicorn.UC_MEM_READ_PROT: "read",
    unicorn.UC_MEM_WRITE_PROT: "write",
    unicorn.UC_MEM_FETCH_PROT: "execute",
}


class ThreadState(Enum):
    IDLE = "idle"  # no call in progress
    STOPPED = "stopped"  # inside a call, stopped at an instruction boundary
    RETURNED = "returned"
    FAULTED = "faulted"


@dataclass(eq=False)
class Thread:
    """An emulated thread: its stack, TEB and saved registers."""

    id: int
    stack: Region
    teb: Region
    state: ThreadState = ThreadState.IDLE
    context: Any = None  # a unicorn context, once the thread was switched away from
    result: int | None = None
    fault: EmulationFault | None = None
    entry_va: int = 0
    #: Host functions in progress on this thread that call back into emulated code,
    #: innermost last.
    host_frames: list[HostFrame] = field(default_factory=list)

    @property
    def stack_top(self) -> int:
        return self.stack.end


#: A call a host function makes into emulated code: the VA and its integer arguments.
Callback = tuple[int, tuple[int, ...]]

#: A host function that calls back into emulated code (``_initterm`` calls every entry of
#: a table): it yields each call, is sent that call's integer result, and returns its own.
HostCalls = Generator[Callback, int, int]

#: A host function: gets the CPU and the call's first eight integer arguments, returns
#: the integer result, or a generator (``HostCalls``) when it calls emulated code.
HostCall = Callable[["Cpu", tuple[int, ...]], "int | HostCalls"]


@dataclass(eq=False)
class HostFrame:
    """A host function in the middle of a call back into emulated code: its generator
    and how its own caller entered it (stack pointer, return address)."""

    calls: HostCalls
    sp: int
    return_va: int


class Cpu:
    """A Unicorn engine mirroring one address space, and the threads that run on it."""

    def __init__(self, machine: Machine, space: AddressSpace) -> None:
        self.machine = machine
        self.space = space
        self.convention = _CONVENTIONS[machine]()
        self.uc = unicorn.Uc(*self.convention.engine)
        self._handle = self.uc._uch  # the engine handle Unicorn's C API takes
        self.threads: list[Thread] = []
        self.host_stubs: dict[int, tuple[str, HostCall]] = {}
        #: The callbacks handed to Unicorn directly, kept alive as long as the engine.
        self._callbacks: list[Any] = []
        #: Where calls a host function makes return to (a ``ret`` in a watched region;
        #: see ``set_continuation``).
        self.continuation_va: int | None = None
        self._pending: BaseException | None = None
        self._fault: EmulationFault | None = None
        self._current: Thread | None = None
        self._clean_context: Any = None  # a unicorn context, see start()
        #: The thread whose registers the engine holds now: its saved context is written
        #: only when another thread needs the engine (``_switch_to``).
        self._live: Thread | None = None
        #: A thread started and not run since: its pc is its entry.
        self._fresh: Thread | None = None
        convention = self.convention
        entry = [*convention.arguments, convention.sp, convention.pc]
        if convention.link is not None:
            entry.append(convention.link)
        entry.append(convention.teb_register)
        #: What ``start`` writes: the register arguments, sp, pc, the link register (on
        #: ARM64) and the TEB register.
        self._entry = _Registers(self.uc, entry)
        self._arguments = _Registers(self.uc, [*convention.arguments, convention.sp])
        self._ending = _Registers(self.uc, [convention.pc, convention.result])
        self._pc = _Registers(self.uc, [convention.pc])
        self._result = _Registers(self.uc, [convention.result])
        self._named = _Registers(self.uc, list(convention.names.values()))
        self.describe: Callable[[int], str] = lambda va: f"0x{va:x}"
        for region in space.regions:
            self.region_mapped(region)
        space.observers.append(self)
        # Every hook is registered through the C API: the binding's wrappers around a
        # callback cost two more Python calls each time it runs (every import a run
        # makes, every fault), and it reports a failed run by raising. The callbacks
        # catch whatever they raise, as those wrappers would, and leave it for run().
        self._add_hook(
            unicorn.UC_HOOK_MEM_UNMAPPED | unicorn.UC_HOOK_MEM_PROT,
            _INVALID_ACCESS_HOOK(self._on_invalid_access),
        )
        self._add_hook(unicorn.UC_HOOK_INTR, _INTERRUPT_HOOK(self._on_interrupt))
        # The page where calls return to: never mapped executable, so a return lands
        # nowhere but stops the run at ``until``.
        sentinel = space.allocate(PAGE_SIZE, Protection.R, "return trap")
        self.return_va = sentinel.va

    # SpaceObserver ----------------------------------------------------------------
    def region_mapped(self, region: Region) -> None:
        self.uc.mem_map_ptr(region.va, region.size, unicorn.UC_PROT_ALL, region.address)
        first = 0
        for index in range(1, len(region.protections) + 1):
            if (
                index == len(region.protections)
                or region.protections[index] != region.protections[first]
            ):
                self.uc.mem_protect(
                    region.va + first * PAGE_SIZE,
                    (index - first) * PAGE_SIZE,
                    _uc_protection(region.protections[first]),
                )
                first = index

    def region_unmapped(self, region: Region) -> None:
        self.uc.ctl_remove_cache(region.va, region.end)
        self.uc.mem_unmap(region.va, region.size)

    def protection_changed(self, va: int, size: int, protection: Protection) -> None:
        self.uc.mem_protect(va, size, _uc_protection(protection))
        # Unicorn checks execute permission when it translates, not when it runs a
        # translated block: code made non-executable must be translated afresh.
        self.uc.ctl_remove_cache(va, va + size)

    def code_written(self, va: int, size: int) -> None:
        # Translated blocks over these bytes are stale now.
        self.uc.ctl_remove_cache(va, va + size)

    # host stubs -------------------------------------------------------------------
    def watch_stubs(self, region: Region) -> None:
        """Host stubs live in ``region``: hook execution there (and only there)."""
        self._add_hook(unicorn.UC_HOOK_CODE, _CODE_HOOK(self._on_code), region.va, region.end - 1)

    def _add_hook(self, kind: int, callback: Any, begin: int = 1, end: int = 0) -> None:
        """Have Unicorn call ``callback`` (one of the ``_*_HOOK`` types) for ``kind``
        between ``begin`` and ``end`` (everywhere by default)."""
        handle = ctypes.c_size_t()
        _check(
            _LIB.uc_hook_add(
                self._handle,
                ctypes.byref(handle),
                kind,
                ctypes.cast(callback, ctypes.c_void_p),
                None,
                ctypes.c_uint64(begin),
                ctypes.c_uint64(end),
            )
        )
        self._callbacks.append(callback)  # Unicorn holds only its address

    def add_host_stub(self, va: int, name: str, call: HostCall) -> None:
        """Run ``call`` whenever execution reaches ``va`` (in a watched region; the stub's
        own ``ret`` then returns the result to the caller)."""
        self.host_stubs[va] = (name, call)

    def set_continuation(self, va: int) -> None:
        """Calls host functions make return to ``va``: a ``ret`` in a watched region, kept
        for this (its host function resumes whoever made the call)."""
        self.continuation_va = va

    def _on_code(self, engine: int, address: int, size: int, user: int | None) -> None:
        uc = self.uc
        try:
            if address == self.continuation_va and self._current is not None:
                frames = self._current.host_frames
                if frames:
                    self._advance(frames[-1], uc.reg_read(self.convention.result))
                return
            stub = self.host_stubs.get(address)
            if stub is None:
                return
            _name, call = stub
            result = call(self, self.arguments(8))
            if not isinstance(result, int) and isinstance(result, Generator):
                sp = self.uc.reg_read(self.convention.sp)
                frame = HostFrame(result, sp, self._return_address(sp))
                assert self._current is not None
                self._current.host_frames.append(frame)
                self._advance(frame, None)
                return
            self._result.write_first(result & _MASK64)
        except BaseException as error:  # re-raised once emu_start returns
            self._pending = error
            uc.emu_stop()

    def _return_address(self, sp: int) -> int:
        link = self.convention.link
        return self.uc.reg_read(link) if link is not None else self.space.read_u64(sp)

    def _advance(self, frame: HostFrame, value: int | None) -> None:
        """Resume ``frame``'s host function with the result of its last call: set up its
        next call, returning to the continuation, or return its result to its caller as
        if the stub had been entered (the ``ret`` under the hook then returns it)."""
        convention = self.convention
        try:
            target, arguments = frame.calls.send(value)  # type: ignore[arg-type]
        except StopIteration as done:
            assert self._current is not None
            self._current.host_frames.pop()
            self._enter_as(frame.sp, frame.return_va)
            self.uc.reg_write(convention.result, int(done.value or 0) & _MASK64)
            return
        if len(arguments) > len(convention.arguments):
            raise HPatchError("a host function's call takes register arguments only")
        assert self.continuation_va is not None
        for register, argument in zip(convention.arguments, arguments, strict=False):
            self.uc.reg_write(register, argument & _MASK64)
        sp = frame.sp - convention.host_frame
        if convention.link is None:
            # The callee's return address; the host function's own stays at frame.sp.
            self.space.write(sp, self.continuation_va.to_bytes(8, "little"))
        else:
            # A frame record as a prologue's stp leaves: fp, then the return address.
            fp = self.uc.reg_read(convention.names["fp"])
            record = fp.to_bytes(8, "little") + frame.return_va.to_bytes(8, "little")
            self.space.write(sp, record)
            self.uc.reg_write(convention.link, self.continuation_va)
        self.uc.reg_write(convention.sp, sp)
        self.uc.reg_write(convention.pc, target & _MASK64)

    def _enter_as(self, sp: int, return_va: int) -> None:
        """The stack pointer and return address a call has at its first instruction."""
        link = self.convention.link
        self.uc.reg_write(self.convention.sp, sp)
        if link is not None:
            self.uc.reg_write(link, return_va)
        else:
            self.space.write(sp, return_va.to_bytes(8, "little"))

    def arguments(self, count: int) -> tuple[int, ...]:
        """The first ``count`` integer arguments of the call being entered."""
        convention = self.convention
        *values, sp = self._arguments.read()
        del values[count:]
        extra = count - len(values)
        if extra > 0:
            first = sp + convention.stack_arguments_at
            current = self._current
            if current is not None and current.stack.va <= first <= current.stack.end - 8 * extra:
                # The common case, read straight from the thread's stack.
                values += struct.unpack_from(
                    f"<{extra}Q", current.stack.view, first - current.stack.va
                )
                return tuple(values)
            try:
                stack = self.space.read(first, 8 * extra)
            except EmulationFault:  # slot by slot: those outside mapped memory read as 0
                stack = b"".join(self._stack_slot(first + 8 * index) for index in range(extra))
            values += struct.unpack(f"<{extra}Q", stack)
        return tuple(values)

    def _stack_slot(self, va: int) -> bytes:
        try:
            return self.space.read(va, 8)
        except EmulationFault:
            return bytes(8)

    def float_arguments(self, count: int) -> tuple[int, ...]:
        """The first ``count`` floating-point arguments of a function that takes only
        such, as the 64 bits of each register's low half (a float in its low 32)."""
        return tuple(self.uc.reg_read(r) & _MASK64 for r in self.convention.float_arguments[:count])

    def set_float_result(self, bits: int) -> None:
        """Return ``bits`` (a double's, or a float's in the low 32) in the floating-point
        result register."""
        self.uc.reg_write(self.convention.float_arguments[0], bits & _MASK64)

    # faults -----------------------------------------------------------------------
    def _on_invalid_access(
        self, engine: int, access: int, address: int, size: int, value: int, user: int | None
    ) -> bool:
        try:
            kind = _ACCESS_KINDS.get(access, "access")
            pc = address if kind == "execute" else self._pc.read()[0]
            self._fault = self._make_fault(
                f"{kind} of {size} bytes at 0x{address:x}", address, kind, pc
            )
        except BaseException as error:  # re-raised once emu_start returns
            self._pending = error
        return False

    def _on_interrupt(self, engine: int, number: int, user: int | None) -> None:
        try:
            pc = self.convention.trap_pc(number, self._pc.read()[0], self.space.read)
            self._fault = self._make_fault(f"processor exception {number}", pc, "execute", pc)
        except BaseException as error:  # re-raised once emu_start returns
            self._pending = error
        self.uc.emu_stop()

    def _make_fault(self, what: str, address: int, access: str, pc: int) -> EmulationFault:
        where = self.describe(pc)
        return EmulationFault(
            f"{what}, pc 0x{pc:x} in {where}", address=address, access=access, pc=pc
        )

    # threads ----------------------------------------------------------------------
    def new_thread(self, stack_size: int = 0x40000) -> Thread:
        """A thread with its own stack (guard pages either side) and TEB."""
        stack = self.space.allocate(
            stack_size, Protection.RW, f"stack {len(self.threads)}", guard=True
        )
        teb = self.space.allocate(PAGE_SIZE, Protection.RW, f"teb {len(self.threads)}")
        tib = bytearray(0x38)
        tib[0x08:0x10] = stack.end.to_bytes(8, "little")  # StackBase
        tib[0x10:0x18] = stack.va.to_bytes(8, "little")  # StackLimit
        tib[0x30:0x38] = teb.va.to_bytes(8, "little")  # Self
        teb.view[: len(tib)] = tib
        thread = Thread(id=len(self.threads), stack=stack, teb=teb)
        self.threads.append(thread)
        return thread

    def start(self, thread: Thread, entry_va: int, arguments: Sequence[int]) -> None:
        """Set ``thread`` up to call ``entry_va`` with integer ``arguments`` (then ``run``)."""
        if thread.state == ThreadState.STOPPED:
            raise HPatchError(f"thread {thread.id} is inside a call already")
        convention = self.convention
        count = len(convention.arguments)
        in_registers = [a & _MASK64 for a in arguments[:count]]
        in_registers += [0] * (count - len(in_registers))
        on_stack = [a & _MASK64 for a in arguments[count:]]
        sp = thread.stack_top - 0x100
        sp -= 8 * len(on_stack) + convention.stack_arguments_at
        sp &= ~0xF
        if convention.link is None:
            sp -= 8  # as if a call had pushed the return address
        view, offset = thread.stack.view, sp - thread.stack.va
        if on_stack:
            struct.pack_into(
                f"<{len(on_stack)}Q", view, offset + convention.stack_arguments_at, *on_stack
            )
        values = [*in_registers, sp, entry_va & _MASK64]
        if convention.link is None:
            struct.pack_into("<Q", view, offset, self.return_va)
        else:
            values.append(self.return_va)
        values.append(thread.teb.va)
        self._switch_to(None)
        if self._clean_context is None:
            # Every call starts from one CPU state: the convention's registers zero, the
            # rest as the first call found them. Restored whole, then the arguments, sp,
            # pc, link and TEB registers are written in one batch.
            for register in convention.names.values():
                self.uc.reg_write(register, 0)
            self._clean_context = self.uc.context_save()
        _check(_LIB.uc_context_restore(self._handle, self._clean_context.context))
        self._entry.write(values)
        # The engine holds the thread's registers now; they are saved only if another
        # thread takes the engine before the call is finished.
        self._live = self._fresh = thread
        thread.state = ThreadState.STOPPED
        thread.result = None
        thread.fault = None
        thread.entry_va = entry_va

    def _switch_to(self, thread: Thread | None) -> None:
        """Give the engine to ``thread`` (None: to nobody, as ``start`` needs it): the
        registers of the thread holding it are saved first, and ``thread``'s restored."""
        live = self._live
        if live is not thread:
            if live is not None:
                if live.context is None:
                    live.context = self.uc.context_save()
                else:
                    self.uc.context_update(live.context)
                self._live = None
            if thread is not None and thread.context is not None:
                self.uc.context_restore(thread.context)
                self._live = thread
        self._current = thread

    def run(self, thread: Thread, steps: int | None = None) -> ThreadState:
        """Run ``thread`` for at most ``steps`` instructions (to its return without).

        Ends in RETURNED (``thread.result``), FAULTED (``thread.fault``) or, when the
        step budget ran out first, STOPPED at an instruction boundary.
        """
        if thread.state != ThreadState.STOPPED:
            raise HPatchError(f"thread {thread.id} has no call in progress")
        self._switch_to(thread)
        budget = DEFAULT_STEP_LIMIT if steps is None else steps
        if self._fresh is thread:
            pc = thread.entry_va & _MASK64
            self._fresh = None
        else:
            (pc,) = self._pc.read()
        self._pending = None
        self._fault = None
        status = unicorn.UC_ERR_OK
        if pc != self.return_va and budget > 0:
            status = _LIB.uc_emu_start(self._handle, pc, self.return_va, 0, budget)
        self._live = thread
        pc, result = self._ending.read()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            what = (
                str(pending)
                if isinstance(pending, HPatchError)
                else f"a host function raised {type(pending).__name__}: {pending}"
            )
            # The call cannot go on either way: the thread must not stay inside it.
            self._faulted(thread, self._make_fault(what, pc, "execute", pc))
            if not isinstance(pending, HPatchError):
                raise pending
            return thread.state
        if self._fault is not None:
            return self._faulted(thread, self._fault)
        if status != unicorn.UC_ERR_OK:
            error = unicorn.UcError(status)
            return self._faulted(
                thread,
                self._make_fault(f"emulation stopped: {error}", pc, "execute", pc),
            )
        if pc == self.return_va:
            thread.state = ThreadState.RETURNED
            thread.result = result
            return thread.state
        if steps is None:
            return self._faulted(
                thread,
                self._make_fault(f"still running after {budget} instructions", pc, "execute", pc),
            )
        return thread.state

    def _faulted(self, thread: Thread, fault: EmulationFault) -> ThreadState:
        thread.state = ThreadState.FAULTED
        thread.fault = fault
        return thread.state

    def pc(self) -> int:
        return self._pc.read()[0]

    @property
    def current_thread(self) -> Thread | None:
        """The thread running now (inside a host function, the one that called it)."""
        return self._current

    def registers(self, thread: Thread) -> dict[str, int]:
        """The thread's saved registers by lower-case name (pc and sp always present)."""
        self._switch_to(thread)
        values = dict(zip(self.convention.names, self._named.read(), strict=True))
        for alias, name in self.convention.aliases:
            values[alias] = values[name]
        return values

    def set_register(self, thread: Thread, name: str, value: int) -> None:
        self._switch_to(thread)
        self.uc.reg_write(self.convention.names[name], value & _MASK64)
        self._live = thread
        self._fresh = None

    def finish(self, thread: Thread) -> None:
        """Forget the thread's call (after it returned or faulted)."""
        thread.state = ThreadState.IDLE
        thread.context = None
        if self._live is thread:
            self._live = None
        if self._fresh is thread:
            self._fresh = None
        while thread.host_frames:
            thread.host_frames.pop().calls.close()
