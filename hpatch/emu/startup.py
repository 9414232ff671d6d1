"""The start-up surface of Windows and its C runtimes, modelled for entry points.

What an MSVC or mingw DLL's ``DllMain`` and CRT initialisation call (the security
cookie's time and counters, ``_initterm`` and the onexit tables, SList heads, TLS and
FLS slots, processor features, a heap, critical sections, module handles) served by
Python host functions, one table of them (``MODELLED``). Everything is deterministic:
time, counters, process and thread ids are fixed fakes, so two runs of a process agree.

A process binds an import here only when nothing else serves it (a host function, a
loaded or found DLL, the process's ``unmodelled`` handler); anything the table lacks
still faults naming itself.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpatch.emu.cpu import Cpu, HostCall, HostCalls
from hpatch.emu.memory import PAGE_SIZE, Protection, Region, page_floor
from hpatch.errors import HPatchError

if TYPE_CHECKING:
    from hpatch.emu.process import ImportKey, Process

_MASK32 = 0xFFFF_FFFF
_MASK64 = (1 << 64) - 1

#: The fake clock: 2025-01-01 00:00:00 UTC as a FILETIME (100 ns since 1601), advanced
#: a fixed step on each read so that code waiting for time to pass sees it pass.
FILETIME_START = 0x01DB_5BE0_19BA_4000
FILETIME_STEP = 10_000  # 1 ms
TICKS_START = 3_600_000  # GetTickCount: an hour after boot
PERFORMANCE_FREQUENCY = 10_000_000
PERFORMANCE_START = 36_000_000_000
PERFORMANCE_STEP = 1_000
PROCESS_ID = 0x1000
FIRST_THREAD_ID = 0x1004

#: IsProcessorFeaturePresent: PF_* numbers a modest machine of either kind reports.
#: x86 and ARM features have distinct numbers, so one table serves both machines;
#: features Unicorn's CPU models may lack (ARMv8.1 atomics, AVX) are absent.
PROCESSOR_FEATURES = frozenset(
    {
        3,  # PF_MMX_INSTRUCTIONS_AVAILABLE
        6,  # PF_XMMI_INSTRUCTIONS_AVAILABLE (SSE)
        8,  # PF_RDTSC_INSTRUCTION_AVAILABLE
        9,  # PF_PAE_ENABLED
        10,  # PF_XMMI64_INSTRUCTIONS_AVAILABLE (SSE2)
        12,  # PF_NX_ENABLED
        13,  # PF_SSE3_INSTRUCTIONS_AVAILABLE
        14,  # PF_COMPARE_EXCHANGE128
        18,  # PF_ARM_VFP_32_REGISTERS_AVAILABLE
        19,  # PF_ARM_NEON_INSTRUCTIONS_AVAILABLE
        23,  # PF_FASTFAIL_AVAILABLE
        24,  # PF_ARM_DIVIDE_INSTRUCTION_AVAILABLE
        25,  # PF_ARM_64BIT_LOADSTORE_ATOMIC
        27,  # PF_ARM_FMAC_INSTRUCTIONS_AVAILABLE
        29,  # PF_ARM_V8_INSTRUCTIONS_AVAILABLE
        30,  # PF_ARM_V8_CRYPTO_INSTRUCTIONS_AVAILABLE
        31,  # PF_ARM_V8_CRC32_INSTRUCTIONS_AVAILABLE
    }
)

#: Heap bytes one process may hold: an entry point that allocates without bound gets
#: NULL (as a full heap answers) instead of host memory.
HEAP_LIMIT = 64 << 20
_ARENA_SIZE = 1 << 20
_TLS_SLOTS = 1088
_FLS_SLOTS = 4000
_TLS_OUT_OF_INDEXES = _MASK32
_ERROR_INVALID_PARAMETER = 87
_ERROR_MOD_NOT_FOUND = 126
_ERROR_PROC_NOT_FOUND = 127
_ERROR_ENVVAR_NOT_FOUND = 203
_EBADF = 9
_WAIT_OBJECT_0 = 0
_WAIT_TIMEOUT = 0x102
_ERROR_INVALID_HANDLE = 6
_ERROR_NOT_ENOUGH_MEMORY = 8
_ERROR_NOT_OWNER = 288
#: Handles the model hands out: multiples of 4, as the kernel's are, from here.
_FIRST_HANDLE = 0x100
_GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS = 4
_MAX_STRING = 4096
#: Longest string the string functions follow, and most bytes a memory function moves.
_MAX_C_STRING = 1 << 24
#: Entries an ``_initterm`` or onexit table may hold before it is taken for garbage;
#: also the most kernel objects and atexit functions one process keeps.
_MAX_TABLE = 1 << 16
_COMMAND_LINE = "hpatch.exe"
#: Bytes of a FILE: the UCRT's own stream data, and msvcrt's public struct (x64).
_UCRT_FILE = 0x58
_MSVCRT_FILE = 0x30


def _terminator(data: bytes, width: int) -> int:
    """Where the first NUL unit (of ``width`` bytes, aligned) of ``data`` starts, or -1."""
    index = data.find(b"\0" * width)
    while index >= 0 and index % width:
        index = data.find(b"\0" * width, index + 1)
    return index


def _signed32(value: int) -> int:
    value &= _MASK32
    return value - (1 << 32) if value & 0x8000_0000 else value


@dataclass(slots=True)
class _KernelObject:
    """A semaphore (``count``), an event (signalled when 1) or a mutex (held ``count``
    times by the thread ``owner``; free at 0)."""

    kind: str
    count: int
    manual_reset: bool = False
    owner: int = 0


class Startup:
    """The modelled start-up state of one process: clock, ids, heap, slots, tables."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._filetime = FILETIME_START
        self._ticks = TICKS_START
        self._performance = PERFORMANCE_START
        self._arenas: list[Region] = []
        self._arena_used = 0
        self._heap_total = 0
        self._blocks: dict[int, int] = {}
        self._process_heap: int | None = None
        self._strings: dict[str, int] = {}
        self._tls: list[bool] = []
        self._fls: list[bool] = []
        self._slot_values: dict[tuple[str, int, int], int] = {}
        self._last_error: dict[int, int] = {}
        self._init_once: set[int] = set()
        self._errno: dict[int, int] = {}
        self._objects: dict[int, _KernelObject] = {}
        self._next_handle = _FIRST_HANDLE
        #: Vectored exception handlers by the handle given for them: registered, never
        #: called (no exception is dispatched; a processor exception is a fault).
        self.exception_handlers: dict[int, int] = {}
        #: Functions registered with ``atexit``/``_crt_atexit``: kept, never run (the
        #: process never exits).
        self.atexit: list[int] = []
        self._streams: dict[int, int] = {}
        self._locale: dict[str, int] = {}

    def host_call(self, key: ImportKey) -> HostCall | None:
        """The host function serving ``key``, or None when the table does not model it."""
        if key.name is None:
            return None
        entry = MODELLED.get(key.name)
        if entry is None or not key.dll.startswith(entry.dlls):
            return None
        function = entry.function
        return lambda cpu, arguments: function(self, cpu, arguments)

    # memory helpers ---------------------------------------------------------------
    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at ``va`` as emulated code reads them: every page readable."""
        for page in range(page_floor(va), va + size, PAGE_SIZE):
            if not self.process.space.protection_at(page) & Protection.R:
                raise HPatchError(f"read of {size} bytes at 0x{va:x}: 0x{page:x} is not readable")
        return self.process.space.read(va, size)

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def write_u64(self, va: int, value: int) -> None:
        self.process.space.write(va, (value & _MASK64).to_bytes(8, "little"))

    def write_u32(self, va: int, value: int) -> None:
        self.process.space.write(va, (value & _MASK32).to_bytes(4, "little"))

    def read_c(
        self, va: int, wide: bool = False, limit: int = _MAX_STRING, counted: bool = False
    ) -> bytes:
        """The units of a NUL-terminated string (UTF-16 when ``wide``) before its NUL,
        read as the CRT would: a string running off mapped memory faults. At most
        ``limit`` units: with ``counted`` (strncmp's count) that many are the string,
        otherwise a longer one is refused."""
        width = 2 if wide else 1
        data = bytearray()
        limit = min(limit, _MAX_C_STRING)
        while len(data) < limit * width:
            at = va + len(data)
            # A page at a time: the NUL may come before a page that cannot be read.
            chunk = self.read(at, max(width, PAGE_SIZE - at % PAGE_SIZE))
            index = _terminator(chunk, width)
            if index >= 0:
                return bytes(data + chunk[:index])[: limit * width]
            data += chunk[: len(chunk) - len(chunk) % width]
        if counted:
            return bytes(data[: limit * width])
        raise HPatchError(f"no string terminator within {limit} characters at 0x{va:x}")

    def read_string(self, va: int, wide: bool) -> str:
        """A NUL-terminated string (UTF-16 when ``wide``) of at most 4096 characters."""
        return self.read_c(va, wide).decode("utf-16-le" if wide else "latin-1", "replace")

    def static_string(self, text: str, wide: bool) -> int:
        """A NUL-terminated copy of ``text`` on the heap, made once per process."""
        key = f"{'W' if wide else 'A'}{text}"
        if key not in self._strings:
            data = (text + "\0").encode("utf-16-le" if wide else "latin-1")
            self._strings[key] = self.malloc(len(data))
            self.process.space.write(self._strings[key], data)
        return self._strings[key]

    # the heap ---------------------------------------------------------------------
    def malloc(self, size: int) -> int:
        """A zeroed 16-byte-aligned block of ``size`` bytes, or 0 beyond HEAP_LIMIT."""
        size = max(size, 1)
        rounded = (size + 15) & ~15
        if self._heap_total + rounded > HEAP_LIMIT:
            return 0
        arena = self._arenas[-1] if self._arenas else None
        if arena is None or self._arena_used + rounded > arena.size:
            arena = self.process.space.allocate(max(rounded, _ARENA_SIZE), Protection.RW, "heap")
            self._arenas.append(arena)
            self._arena_used = 0
        va = arena.va + self._arena_used
        self._arena_used += rounded
        self._heap_total += rounded
        self._blocks[va] = size
        return va

    def free(self, va: int) -> None:
        # Blocks are not reused: a freed block keeps its bytes, and the limit bounds all.
        self._blocks.pop(va, None)

    def realloc(self, va: int, size: int) -> int:
        if va == 0:
            return self.malloc(size)
        if size == 0:
            self.free(va)
            return 0
        old = self._blocks.get(va)
        if old is None:
            raise HPatchError(f"realloc of 0x{va:x}, which the heap did not allocate")
        moved = self.malloc(size)
        if moved:
            self.process.space.write(moved, self.read(va, min(old, size)))
            self.free(va)
        return moved

    def process_heap(self) -> int:
        if self._process_heap is None:
            # A handle that is also a real address: code may compare it, never read it.
            self._process_heap = self.malloc(PAGE_SIZE)
        return self._process_heap

    # per-thread state -------------------------------------------------------------
    def thread_id(self, cpu: Cpu) -> int:
        thread = cpu.current_thread
        return FIRST_THREAD_ID + 4 * (thread.id if thread is not None else 0)

    def set_last_error(self, cpu: Cpu, code: int) -> None:
        self._last_error[self.thread_id(cpu)] = code & _MASK32

    def last_error(self, cpu: Cpu) -> int:
        return self._last_error.get(self.thread_id(cpu), 0)

    def errno(self, cpu: Cpu) -> int:
        """The calling thread's ``errno`` (a heap int of its own)."""
        thread = self.thread_id(cpu)
        if thread not in self._errno:
            self._errno[thread] = self.malloc(4)
        return self._errno[thread]

    def fail_errno(self, cpu: Cpu, code: int, result: int = -1) -> int:
        self.write_u32(self.errno(cpu), code)
        return result

    def _slot_alloc(self, slots: list[bool], limit: int) -> int:
        for index, used in enumerate(slots):
            if not used:
                slots[index] = True
                return index
        if len(slots) >= limit:
            return _TLS_OUT_OF_INDEXES
        slots.append(True)
        return len(slots) - 1

    def _slot_get(self, cpu: Cpu, kind: str, slots: list[bool], index: int) -> int:
        if not (0 <= index < len(slots) and slots[index]):
            self.set_last_error(cpu, _ERROR_INVALID_PARAMETER)
            return 0
        self.set_last_error(cpu, 0)
        return self._slot_values.get((kind, self.thread_id(cpu), index), 0)

    def _slot_set(self, cpu: Cpu, kind: str, slots: list[bool], index: int, value: int) -> int:
        if not (0 <= index < len(slots) and slots[index]):
            self.set_last_error(cpu, _ERROR_INVALID_PARAMETER)
            return 0
        self._slot_values[(kind, self.thread_id(cpu), index)] = value
        return 1

    def _slot_free(self, kind: str, slots: list[bool], index: int) -> int:
        if not (0 <= index < len(slots) and slots[index]):
            return 0
        slots[index] = False
        for key in [k for k in self._slot_values if k[0] == kind and k[2] == index]:
            del self._slot_values[key]
        return 1

    # tables of function pointers --------------------------------------------------
    def table(self, first: int, last: int) -> range:
        """The slot VAs of a [first, last) table of pointers, bounded."""
        if last < first or (last - first) // 8 > _MAX_TABLE:
            raise HPatchError(f"0x{first:x}..0x{last:x} is no table of function pointers")
        return range(first, last - (last - first) % 8, 8)


# The modelled functions: (startup, cpu, arguments) -> result, or a generator of calls.
Model = Callable[[Startup, Cpu, tuple[int, ...]], "int | HostCalls"]
#: A model that answers at once (no call back into emulated code).
PlainModel = Callable[[Startup, Cpu, tuple[int, ...]], int]


@dataclass(frozen=True, slots=True)
class Modelled:
    """One modelled function: the DLLs (name prefixes) that export it, and the model."""

    dlls: tuple[str, ...]
    function: Model


#: kernel32 and the API sets and DLLs that carry its functions.
KERNEL = ("kernel32.dll", "kernelbase.dll", "api-ms-win-core-")
#: The C runtimes: the UCRT (and its API sets), msvcrt (mingw) and vcruntime.
CRT = ("ucrtbase.dll", "api-ms-win-crt-", "msvcrt.dll", "vcruntime140.dll")


def _filetime(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.write_u64(a[0], s._filetime)
    s._filetime += FILETIME_STEP
    return 0


def _tick_count(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s._ticks += 1
    return s._ticks


def _performance_counter(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.write_u64(a[0], s._performance)
    s._performance += PERFORMANCE_STEP
    return 1


def _performance_frequency(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.write_u64(a[0], PERFORMANCE_FREQUENCY)
    return 1


def _initterm(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> HostCalls:
    # Each slot is read when its turn comes: an initialiser may fill a later one.
    for slot in s.table(a[0], a[1]):
        function = s.read_u64(slot)
        if function:
            yield function, ()
    return 0


def _initterm_e(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> HostCalls:
    for slot in s.table(a[0], a[1]):
        function = s.read_u64(slot)
        if function:
            status = _signed32((yield function, ()))
            if status:
                return status
    return 0


def _initialize_onexit_table(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    for offset in (0, 8, 16):  # _first, _last, _end
        s.write_u64(a[0] + offset, 0)
    return 0


def _register_onexit_function(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    table, function = a[0], a[1]
    first, last, end = (s.read_u64(table + offset) for offset in (0, 8, 16))
    if last == end:
        count = (end - first) // 8 if first else 0
        if count >= _MAX_TABLE:
            return -1
        grown = s.realloc(first, 8 * max(2 * count, 32)) if first else s.malloc(8 * 32)
        if not grown:
            return -1
        first, last, end = grown, grown + 8 * count, grown + 8 * max(2 * count, 32)
    s.write_u64(last, function)
    s.write_u64(table, first)
    s.write_u64(table + 8, last + 8)
    s.write_u64(table + 16, end)
    return 0


def _execute_onexit_table(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> HostCalls:
    table = a[0]
    first, last = s.read_u64(table), s.read_u64(table + 8)
    _initialize_onexit_table(s, cpu, a)  # emptied first: a function may register more
    for slot in reversed(s.table(first, last)):
        function = s.read_u64(slot)
        if function:
            yield function, ()
    if first:
        s.free(first)
    return 0


def _crt_atexit(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if len(s.atexit) >= _MAX_TABLE:
        return -1
    s.atexit.append(a[0])
    return 0


def _onexit(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return 0 if _crt_atexit(s, cpu, a) else a[0]


def _slist_head(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # The header's layout is private to these functions: first entry, then depth.
    s.write_u64(a[0], 0)
    s.write_u64(a[0] + 8, 0)
    return 0


def _slist_push(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    head, entry = a[0], a[1]
    first, depth = s.read_u64(head), s.read_u64(head + 8)
    s.write_u64(entry, first)
    s.write_u64(head, entry)
    s.write_u64(head + 8, depth + 1)
    return first


def _slist_pop(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    head = a[0]
    first = s.read_u64(head)
    if first:
        s.write_u64(head, s.read_u64(first))
        s.write_u64(head + 8, max(s.read_u64(head + 8) - 1, 0))
    return first


def _slist_flush(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    first = s.read_u64(a[0])
    _slist_head(s, cpu, a)
    return first


def _critical_section(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # DebugInfo, LockCount (-1: free), RecursionCount, OwningThread, LockSemaphore,
    # SpinCount: what InitializeCriticalSection leaves in a CRITICAL_SECTION.
    s.process.space.write(a[0], bytes(8) + b"\xff\xff\xff\xff" + bytes(28))
    return 1


def _zero_pointer(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.write_u64(a[0], 0)
    return 0


def _init_once_execute_once(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> HostCalls:
    once, function, parameter, context = a[0], a[1], a[2], a[3]
    if once in s._init_once:
        return 1
    succeeded = (yield function, (once, parameter, context)) & _MASK32
    if succeeded:
        s._init_once.add(once)
        s.write_u64(once, 1)
    return 1 if succeeded else 0


def _processor_feature(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return 1 if (a[0] & _MASK32) in PROCESSOR_FEATURES else 0


def _tls_alloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_alloc(s._tls, _TLS_SLOTS)


def _tls_get(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_get(cpu, "tls", s._tls, a[0] & _MASK32)


def _tls_set(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_set(cpu, "tls", s._tls, a[0] & _MASK32, a[1])


def _tls_free(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_free("tls", s._tls, a[0] & _MASK32)


def _fls_alloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # The callback would run as a fiber or thread ends; none ends here.
    return s._slot_alloc(s._fls, _FLS_SLOTS)


def _fls_get(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_get(cpu, "fls", s._fls, a[0] & _MASK32)


def _fls_set(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_set(cpu, "fls", s._fls, a[0] & _MASK32, a[1])


def _fls_free(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._slot_free("fls", s._fls, a[0] & _MASK32)


def _malloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.malloc(a[0])


def _calloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    count, size = a[0], a[1]
    if size and count > _MASK64 // size:
        return 0
    return s.malloc(count * size)  # heap blocks are fresh, hence zero


def _free(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.free(a[0])
    return 0


def _realloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.realloc(a[0], a[1])


def _heap_alloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.malloc(a[2])


def _heap_free(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.free(a[2])
    return 1


def _heap_realloc(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.realloc(a[2], a[3])


def _heap_size(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s._blocks.get(a[2], _MASK64)


def _module_handle(wide: bool) -> PlainModel:
    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        if a[0] == 0:
            # No executable is modelled: the first image loaded stands for it.
            main = s.process.main_module
            return main.base if main is not None else 0
        name = s.read_string(a[0], wide)
        module = s.process.module(name) or s.process.module(f"{name}.dll")
        if module is None:
            s.set_last_error(cpu, _ERROR_MOD_NOT_FOUND)
            return 0
        return module.base

    return model


def _module_handle_ex(wide: bool) -> Model:
    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        flags, name, handle = a[0], a[1], a[2]
        if flags & _GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS:
            module = s.process.module_at(name)
            base = module.base if module is not None else 0
        else:
            base = _module_handle(wide)(s, cpu, (name,))
        s.write_u64(handle, base)
        if not base:
            s.set_last_error(cpu, _ERROR_MOD_NOT_FOUND)
        return 1 if base else 0

    return model


def _pc_to_file_header(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    module = s.process.module_at(a[0])
    base = module.base if module is not None else 0
    s.write_u64(a[1], base)
    return base


def _proc_address(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    module = s.process.module_at(a[0])
    if module is not None and module.base == a[0]:
        symbol: str | int = a[1] & 0xFFFF if a[1] < 0x10000 else s.read_string(a[1], False)
        va = s.process.import_address(module.name, symbol, beside=module)
        if va:
            return va
    s.set_last_error(cpu, _ERROR_PROC_NOT_FOUND)
    return 0


def _load_library(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # Only what is loaded already is found: a load at run time is not modelled, and
    # the start-up code that asks copes with a missing DLL.
    return _module_handle(False)(s, cpu, a) if a[0] else 0


def _load_library_w(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return _module_handle(True)(s, cpu, a) if a[0] else 0


def _startup_info(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.process.space.write(a[0], (104).to_bytes(4, "little") + bytes(100))
    return 0


def _last_error(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.last_error(cpu)


def _set_last_error(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.set_last_error(cpu, a[0])
    return 0


def _no_variable(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # The modelled environment is empty: every variable is unset.
    s.set_last_error(cpu, _ERROR_ENVVAR_NOT_FOUND)
    return 0


def _getenv_s(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.write_u64(a[0], 0)  # *required: unset
    if a[1] and a[2]:
        s.process.space.write(a[1], b"\0")
    return 0


def _float_model(function: Callable[..., float], single: bool, count: int = 1) -> Model:
    """A C math function whose arguments and result are all float (``single``) or
    double; only functions whose result IEEE 754 fixes exactly are modelled, so no
    libm's rounding is guessed."""
    code = "<f" if single else "<d"
    width = 0xFFFF_FFFF if single else _MASK64

    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        values = [
            struct.unpack(code, (bits & width).to_bytes(4 if single else 8, "little"))[0]
            for bits in cpu.float_arguments(count)
        ]
        try:
            result = function(*values)
        except (ValueError, OverflowError, ZeroDivisionError):
            result = math.nan
        try:
            packed = struct.pack(code, result)
        except OverflowError:  # beyond a float's range: what the hardware rounds it to
            packed = struct.pack(code, math.copysign(math.inf, result))
        cpu.set_float_result(int.from_bytes(packed, "little"))
        return 0

    return model


def _c_round(value: float) -> float:
    # C rounds halves away from zero; Python's round() to even.
    # Adding 0.5 first would round twice (0.49999999999999994, 2**52 + 1): the
    # fraction that truncation drops is exact, so compare that.
    if math.isnan(value) or math.isinf(value):
        return value
    whole = float(math.trunc(value))
    if abs(value - whole) >= 0.5:
        whole += math.copysign(1.0, value)
    return math.copysign(whole, value)


def _c_ceil(value: float) -> float:
    return (
        value if math.isnan(value) or math.isinf(value) else math.copysign(math.ceil(value), value)
    )


def _c_floor(value: float) -> float:
    return (
        value if math.isnan(value) or math.isinf(value) else math.copysign(math.floor(value), value)
    )


def _c_trunc(value: float) -> float:
    return (
        value if math.isnan(value) or math.isinf(value) else math.copysign(math.trunc(value), value)
    )


def _c_sqrt(value: float) -> float:
    return math.sqrt(value) if value >= 0 or math.isnan(value) else math.nan


def _system_info(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # One processor, 4 KiB pages, 64 KiB allocation granularity.
    info = struct.pack(
        "<HHIQQQIIIHH",
        cpu.convention.processor_architecture,
        0,
        PAGE_SIZE,
        0x10000,
        0x7FFF_FFFE_FFFF,
        1,
        1,
        0,
        0x10000,
        0,
        0,
    )
    s.process.space.write(a[0], info)
    return 0


def _bad_descriptor(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # No descriptor is open: the process has no console and no files.
    return s.fail_errno(cpu, _EBADF)


def _not_a_tty(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return s.fail_errno(cpu, _EBADF, 0)


def _bytes(s: Startup, va: int, size: int) -> bytes:
    if size > _MAX_C_STRING:
        raise HPatchError(f"a copy of {size} bytes is beyond what the model moves")
    return s.read(va, size)


def _memcpy(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.process.space.write(a[0], _bytes(s, a[1], a[2]))  # read whole first: memmove too
    return a[0]


def _memset(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if a[2] > _MAX_C_STRING:
        raise HPatchError(f"a fill of {a[2]} bytes is beyond what the model moves")
    s.process.space.write(a[0], bytes([a[1] & 0xFF]) * a[2])
    return a[0]


def _memcmp(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    left, right = _bytes(s, a[0], a[2]), _bytes(s, a[1], a[2])
    return (left > right) - (left < right)


def _strlen(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return len(s.read_c(a[0], limit=_MAX_C_STRING))


def _wcslen(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return len(s.read_c(a[0], wide=True, limit=_MAX_C_STRING)) // 2


def _strcmp(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    left, right = s.read_c(a[0], limit=_MAX_C_STRING), s.read_c(a[1], limit=_MAX_C_STRING)
    return (left > right) - (left < right)


def _strncmp(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if not a[2]:
        return 0
    left = s.read_c(a[0], limit=a[2], counted=True)
    right = s.read_c(a[1], limit=a[2], counted=True)
    return (left > right) - (left < right)


def _strcpy(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    s.process.space.write(a[0], s.read_c(a[1], limit=_MAX_C_STRING) + b"\0")
    return a[0]


def _strncpy(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if a[2] > _MAX_C_STRING:
        raise HPatchError(f"a copy of {a[2]} bytes is beyond what the model moves")
    text = s.read_c(a[1], limit=a[2], counted=True) if a[2] else b""
    s.process.space.write(a[0], text + bytes(a[2] - len(text)))
    return a[0]


def _strdup(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if not a[0]:
        return 0
    text = s.read_c(a[0], limit=_MAX_C_STRING) + b"\0"
    copy = s.malloc(len(text))
    if copy:
        s.process.space.write(copy, text)
    return copy


def _strchr(last: bool) -> Model:
    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        text = s.read_c(a[0], limit=_MAX_C_STRING) + b"\0"  # the NUL itself can be found
        wanted = bytes([a[1] & 0xFF])
        index = text.rfind(wanted) if last else text.find(wanted)
        return a[0] + index if index >= 0 else 0

    return model


def _new_object(kind: str, initial: Callable[[tuple[int, ...]], int]) -> PlainModel:
    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        if len(s._objects) >= _MAX_TABLE:
            s.set_last_error(cpu, _ERROR_NOT_ENOUGH_MEMORY)
            return 0
        # Never a closed object's handle again: a stale handle stays invalid.
        handle, s._next_handle = s._next_handle, s._next_handle + 4
        manual = kind == "event" and bool(a[1] & 0xFF)  # bManualReset
        s._objects[handle] = _KernelObject(kind, initial(a), manual)
        return handle

    return model


def _signal(kind: str, count: Callable[[int, tuple[int, ...]], int]) -> Model:
    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        state = s._objects.get(a[0])
        if state is None or state.kind != kind:
            s.set_last_error(cpu, _ERROR_INVALID_HANDLE)
            return 0
        state.count = count(state.count, a)
        return 1

    return model


def _wait(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    handle, timeout = a[0], a[1] & _MASK32
    state = s._objects.get(handle)
    if state is None:
        s.set_last_error(cpu, _ERROR_INVALID_HANDLE)
        return _MASK32  # WAIT_FAILED
    if state.kind == "mutex":
        if state.count == 0 or state.owner == s.thread_id(cpu):  # free, or held already
            state.count, state.owner = state.count + 1, s.thread_id(cpu)
            return _WAIT_OBJECT_0
    elif state.count > 0:
        if not state.manual_reset:
            state.count -= 1  # taken: a semaphore's count, an auto-reset event
        return _WAIT_OBJECT_0
    if timeout == 0:
        return _WAIT_TIMEOUT
    # One emulated thread runs at a time: nothing could signal it, the wait never ends.
    raise HPatchError(f"a wait on handle 0x{handle:x}, which nothing can signal here")


def _create_mutex(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    handle = _new_object("mutex", lambda a: 0)(s, cpu, a)
    if handle and a[1] & 0xFF:  # bInitialOwner
        s._objects[handle].count, s._objects[handle].owner = 1, s.thread_id(cpu)
    return handle


def _release_mutex(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    state = s._objects.get(a[0])
    if state is None or state.kind != "mutex":
        s.set_last_error(cpu, _ERROR_INVALID_HANDLE)
        return 0
    if state.count == 0 or state.owner != s.thread_id(cpu):
        s.set_last_error(cpu, _ERROR_NOT_OWNER)
        return 0
    state.count -= 1
    return 1


def _close_handle(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    if s._objects.pop(a[0], None) is None:
        s.set_last_error(cpu, _ERROR_INVALID_HANDLE)
        return 0
    return 1


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _parse_integer(text: bytes, base: int) -> tuple[int, int]:
    """strtol's reading of ``text``: (value, bytes consumed; 0 when no digits)."""
    index = 0
    while index < len(text) and text[index] in b" \t\n\v\f\r":
        index += 1
    negative = index < len(text) and text[index] == ord("-")
    if index < len(text) and text[index] in b"+-":
        index += 1
    if base in (0, 16) and text[index : index + 2].lower() == b"0x":
        digits_at = index + 2
        if digits_at < len(text) and chr(text[digits_at]).lower() in "0123456789abcdef":
            base, index = 16, digits_at
    if base == 0:
        base = 8 if text[index : index + 1] == b"0" else 10
    start, value = index, 0
    while index < len(text):
        character = chr(text[index]).lower()
        digit = _DIGITS.find(character) if character.isascii() else -1
        if not 0 <= digit < base:
            break
        value, index = value * base + digit, index + 1
    if index == start:
        return 0, 0
    return (-value if negative else value), index


def _strtol(bits: int, signed: bool) -> Model:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)

    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        text, end, base = s.read_c(a[0], limit=_MAX_STRING), a[1], a[2] & _MASK32
        value, used = _parse_integer(text, base) if base == 0 or 2 <= base <= 36 else (0, 0)
        if end:
            s.write_u64(end, a[0] + used)
        if not signed and value < 0:
            value = value % (1 << bits) if -value <= high else high
        if value < low or value > high:
            s.write_u32(s.errno(cpu), 34)  # ERANGE
            value = high if value > high else low
        return value

    return model


def _atoi(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    value, _ = _parse_integer(s.read_c(a[0], limit=_MAX_STRING), 10)
    return value


def _add_exception_handler(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # The handle is a heap address, as the real one is, so that it is never 0.
    handle = s.malloc(16)
    if handle:
        s.exception_handlers[handle] = a[1]
    return handle


def _remove_exception_handler(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return 1 if s.exception_handlers.pop(a[0], None) is not None else 0


def _streams(size: int) -> Model:
    """stdin, stdout and stderr as FILE objects of ``size`` bytes each, zeroed: code
    may keep their addresses; the stdio functions that would use them are unmodelled."""

    def model(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
        if size not in s._streams:
            s._streams[size] = s.malloc(3 * size)
        index = a[0] & _MASK32 if size == _UCRT_FILE else 0  # __iob_func takes none
        return s._streams[size] + size * index if index < 3 else 0

    return model


#: The "C" locale's character classes (the UCRT's _UPPER, _LOWER, _DIGIT, _SPACE,
#: _PUNCT, _CONTROL, _BLANK, _HEX, _ALPHA bits), for the 128 ASCII characters; the
#: other 128 have none.
def _c_ctype(character: int) -> int:
    text = chr(character)
    bits = 0
    if text.isupper():
        bits |= 0x1 | 0x100
    if text.islower():
        bits |= 0x2 | 0x100
    if text.isdigit():
        bits |= 0x4
    if text in " \t\n\v\f\r":
        bits |= 0x8
    if 0x21 <= character <= 0x7E and not text.isalnum():
        bits |= 0x10
    if character < 0x20 or character == 0x7F:
        bits |= 0x20
    if text in " \t":
        bits |= 0x40
    if text in "0123456789abcdefABCDEF":
        bits |= 0x80
    return bits


def _locale_data(s: Startup, what: str) -> int:
    """The "C" locale's data the CRT hands out, laid out once per process on the heap."""
    if what not in s._locale:
        if what == "ctype":
            # Entry -1 (EOF) first: the pointer handed out is to entry 0.
            table = [0] + [_c_ctype(c) if c < 0x80 else 0 for c in range(256)]
            data = struct.pack(f"<{len(table)}H", *table)
            va = s.malloc(len(data))
            s.process.space.write(va, data)
            s._locale[what] = va + 2
        elif what == "names":
            s._locale[what] = s.malloc(6 * 8)  # a null name for every category
        elif what == "lconv":
            point, empty = s.static_string(".", False), s.static_string("", False)
            wide_point, wide_empty = s.static_string(".", True), s.static_string("", True)
            narrow = [point] + [empty] * 9
            wide = [wide_point] + [wide_empty] * 9
            data = struct.pack("<10Q8B10Q", *narrow, *([0x7F] * 8), *wide)  # CHAR_MAX
            va = s.malloc(len(data))
            s.process.space.write(va, data)
            s._locale[what] = va
        else:
            s._locale[what] = s.static_string("C", False)
    return s._locale[what]


def _setlocale(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # Only the "C" locale exists here: asking for it (or what is set) gives "C".
    if a[1] == 0 or s.read_c(a[1]) in (b"", b"C"):
        return _locale_data(s, "name")
    return 0


def _stream_buffer_pointers(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    # Where a UCRT stream keeps its buffer pointers: _ptr at 0, _base at 8, _cnt at 16.
    stream = a[0]
    for out, offset in ((a[1], 8), (a[2], 0), (a[3], 16)):
        if out:
            s.write_u64(out, stream + offset)
    return 0


def _constant(value: int) -> Model:
    return lambda s, cpu, a: value


def _first_argument(s: Startup, cpu: Cpu, a: tuple[int, ...]) -> int:
    return a[0]


MODELLED: dict[str, Modelled] = {
    # the security cookie's entropy, and time
    "GetSystemTimeAsFileTime": Modelled(KERNEL, _filetime),
    "GetSystemTimePreciseAsFileTime": Modelled(KERNEL, _filetime),
    "GetCurrentProcessId": Modelled(KERNEL, _constant(PROCESS_ID)),
    "GetCurrentThreadId": Modelled(KERNEL, lambda s, cpu, a: s.thread_id(cpu)),
    "GetCurrentProcess": Modelled(KERNEL, _constant(_MASK64)),  # the pseudo handle -1
    "GetCurrentThread": Modelled(KERNEL, _constant(_MASK64 - 1)),  # -2
    "GetTickCount": Modelled(KERNEL, _tick_count),
    "GetTickCount64": Modelled(KERNEL, _tick_count),
    "QueryPerformanceCounter": Modelled(KERNEL, _performance_counter),
    "QueryPerformanceFrequency": Modelled(KERNEL, _performance_frequency),
    # CRT initialisation and termination tables
    "_initterm": Modelled(CRT, _initterm),
    "_initterm_e": Modelled(CRT, _initterm_e),
    "_initialize_onexit_table": Modelled(CRT, _initialize_onexit_table),
    "_register_onexit_function": Modelled(CRT, _register_onexit_function),
    "_execute_onexit_table": Modelled(CRT, _execute_onexit_table),
    "_crt_atexit": Modelled(CRT, _crt_atexit),
    "atexit": Modelled(CRT, _crt_atexit),
    "_onexit": Modelled(CRT, _onexit),
    "_configure_narrow_argv": Modelled(CRT, _constant(0)),
    "_configure_wide_argv": Modelled(CRT, _constant(0)),
    "_initialize_narrow_environment": Modelled(CRT, _constant(0)),
    "_initialize_wide_environment": Modelled(CRT, _constant(0)),
    "_seh_filter_dll": Modelled(CRT, _constant(0)),  # EXCEPTION_CONTINUE_SEARCH
    "_cexit": Modelled(CRT, _constant(0)),
    "_c_exit": Modelled(CRT, _constant(0)),
    "_lock": Modelled(CRT, _constant(0)),
    "_unlock": Modelled(CRT, _constant(0)),
    "__setusermatherr": Modelled(CRT, _constant(0)),
    "_set_new_mode": Modelled(CRT, _constant(0)),
    # the heap
    "malloc": Modelled(CRT, _malloc),
    "calloc": Modelled(CRT, _calloc),
    "free": Modelled(CRT, _free),
    "realloc": Modelled(CRT, _realloc),
    "GetProcessHeap": Modelled(KERNEL, lambda s, cpu, a: s.process_heap()),
    "HeapAlloc": Modelled(KERNEL, _heap_alloc),
    "HeapFree": Modelled(KERNEL, _heap_free),
    "HeapReAlloc": Modelled(KERNEL, _heap_realloc),
    "HeapSize": Modelled(KERNEL, _heap_size),
    # SLists, locks, one-time initialisation
    "InitializeSListHead": Modelled(KERNEL, _slist_head),
    "InterlockedPushEntrySList": Modelled(KERNEL, _slist_push),
    "InterlockedPopEntrySList": Modelled(KERNEL, _slist_pop),
    "InterlockedFlushSList": Modelled(KERNEL, _slist_flush),
    "InitializeCriticalSection": Modelled(KERNEL, _critical_section),
    "InitializeCriticalSectionAndSpinCount": Modelled(KERNEL, _critical_section),
    "InitializeCriticalSectionEx": Modelled(KERNEL, _critical_section),
    # one thread runs at a time, between instructions only when a caller says so:
    # a lock taken inside a call is never contended
    "EnterCriticalSection": Modelled(KERNEL, _constant(0)),
    "TryEnterCriticalSection": Modelled(KERNEL, _constant(1)),
    "LeaveCriticalSection": Modelled(KERNEL, _constant(0)),
    "DeleteCriticalSection": Modelled(KERNEL, _constant(0)),
    "InitializeSRWLock": Modelled(KERNEL, _zero_pointer),
    "AcquireSRWLockExclusive": Modelled(KERNEL, _constant(0)),
    "AcquireSRWLockShared": Modelled(KERNEL, _constant(0)),
    "ReleaseSRWLockExclusive": Modelled(KERNEL, _constant(0)),
    "ReleaseSRWLockShared": Modelled(KERNEL, _constant(0)),
    "InitializeConditionVariable": Modelled(KERNEL, _zero_pointer),
    "InitOnceExecuteOnce": Modelled(KERNEL, _init_once_execute_once),
    # TLS and FLS slots
    "TlsAlloc": Modelled(KERNEL, _tls_alloc),
    "TlsGetValue": Modelled(KERNEL, _tls_get),
    "TlsSetValue": Modelled(KERNEL, _tls_set),
    "TlsFree": Modelled(KERNEL, _tls_free),
    "FlsAlloc": Modelled(KERNEL, _fls_alloc),
    "FlsGetValue": Modelled(KERNEL, _fls_get),
    "FlsSetValue": Modelled(KERNEL, _fls_set),
    "FlsFree": Modelled(KERNEL, _fls_free),
    # the process and its modules
    "IsProcessorFeaturePresent": Modelled(KERNEL, _processor_feature),
    "IsDebuggerPresent": Modelled(KERNEL, _constant(0)),
    "AddVectoredExceptionHandler": Modelled(KERNEL, _add_exception_handler),
    "RemoveVectoredExceptionHandler": Modelled(KERNEL, _remove_exception_handler),
    "SetUnhandledExceptionFilter": Modelled(KERNEL, _constant(0)),  # none was set
    "DisableThreadLibraryCalls": Modelled(KERNEL, _constant(1)),
    "EncodePointer": Modelled(KERNEL, _first_argument),
    "DecodePointer": Modelled(KERNEL, _first_argument),
    "GetLastError": Modelled(KERNEL, _last_error),
    "SetLastError": Modelled(KERNEL, _set_last_error),
    "GetModuleHandleA": Modelled(KERNEL, _module_handle(False)),
    "GetModuleHandleW": Modelled(KERNEL, _module_handle(True)),
    "GetModuleHandleExA": Modelled(KERNEL, _module_handle_ex(False)),
    "GetModuleHandleExW": Modelled(KERNEL, _module_handle_ex(True)),
    "GetProcAddress": Modelled(KERNEL, _proc_address),
    "RtlPcToFileHeader": Modelled((*KERNEL, "ntdll.dll"), _pc_to_file_header),
    "LoadLibraryA": Modelled(KERNEL, _load_library),
    "LoadLibraryW": Modelled(KERNEL, _load_library_w),
    "LoadLibraryExA": Modelled(KERNEL, _load_library),
    "LoadLibraryExW": Modelled(KERNEL, _load_library_w),
    "FreeLibrary": Modelled(KERNEL, _constant(1)),
    "GetStartupInfoW": Modelled(KERNEL, _startup_info),
    "GetStartupInfoA": Modelled(KERNEL, _startup_info),
    "GetCommandLineA": Modelled(KERNEL, lambda s, cpu, a: s.static_string(_COMMAND_LINE, False)),
    "GetCommandLineW": Modelled(KERNEL, lambda s, cpu, a: s.static_string(_COMMAND_LINE, True)),
    "GetSystemInfo": Modelled(KERNEL, _system_info),
    "GetNativeSystemInfo": Modelled(KERNEL, _system_info),
    # no open files: stdin, stdout and stderr are closed
    "_errno": Modelled(CRT, lambda s, cpu, a: s.errno(cpu)),
    "_fstat64": Modelled(CRT, _bad_descriptor),
    "_fstat64i32": Modelled(CRT, _bad_descriptor),
    "_fstat32": Modelled(CRT, _bad_descriptor),
    "_fstat": Modelled(CRT, _bad_descriptor),
    "_isatty": Modelled(CRT, _not_a_tty),
    "__acrt_iob_func": Modelled(CRT, _streams(_UCRT_FILE)),
    "__iob_func": Modelled(CRT, _streams(_MSVCRT_FILE)),
    "_get_stream_buffer_pointers": Modelled(CRT, _stream_buffer_pointers),
    **{
        name: Modelled(CRT, _bad_descriptor)
        for name in (
            "_setmode",
            "_lseek",
            "_lseeki64",
            "_read",
            "_write",
            "_close",
            "_dup",
            "_get_osfhandle",
        )
    },
    # memory and strings
    "memcpy": Modelled(CRT, _memcpy),
    "memmove": Modelled(CRT, _memcpy),
    "memset": Modelled(CRT, _memset),
    "memcmp": Modelled(CRT, _memcmp),
    "strlen": Modelled(CRT, _strlen),
    "wcslen": Modelled(CRT, _wcslen),
    "strcmp": Modelled(CRT, _strcmp),
    "strncmp": Modelled(CRT, _strncmp),
    "strcpy": Modelled(CRT, _strcpy),
    "strncpy": Modelled(CRT, _strncpy),
    "_strdup": Modelled(CRT, _strdup),
    "strdup": Modelled(CRT, _strdup),
    "strchr": Modelled(CRT, _strchr(last=False)),
    "strrchr": Modelled(CRT, _strchr(last=True)),
    # kernel objects one thread can use alone: semaphores, events, mutexes
    "CreateSemaphoreA": Modelled(KERNEL, _new_object("semaphore", lambda a: a[1] & _MASK32)),
    "CreateSemaphoreW": Modelled(KERNEL, _new_object("semaphore", lambda a: a[1] & _MASK32)),
    "CreateSemaphoreExW": Modelled(KERNEL, _new_object("semaphore", lambda a: a[1] & _MASK32)),
    "ReleaseSemaphore": Modelled(KERNEL, _signal("semaphore", lambda n, a: n + (a[1] & _MASK32))),
    "CreateEventA": Modelled(KERNEL, _new_object("event", lambda a: 1 if a[2] & 0xFF else 0)),
    "CreateEventW": Modelled(KERNEL, _new_object("event", lambda a: 1 if a[2] & 0xFF else 0)),
    "SetEvent": Modelled(KERNEL, _signal("event", lambda n, a: 1)),
    "ResetEvent": Modelled(KERNEL, _signal("event", lambda n, a: 0)),
    "CreateMutexA": Modelled(KERNEL, _create_mutex),
    "CreateMutexW": Modelled(KERNEL, _create_mutex),
    "ReleaseMutex": Modelled(KERNEL, _release_mutex),
    "WaitForSingleObject": Modelled(KERNEL, _wait),
    "WaitForSingleObjectEx": Modelled(KERNEL, _wait),
    "CloseHandle": Modelled(KERNEL, _close_handle),
    # numbers from text
    "atoi": Modelled(CRT, _atoi),
    "atol": Modelled(CRT, _atoi),
    "_atoi64": Modelled(CRT, _atoi),
    "strtol": Modelled(CRT, _strtol(32, signed=True)),
    "strtoul": Modelled(CRT, _strtol(32, signed=False)),
    "strtoll": Modelled(CRT, _strtol(64, signed=True)),
    "strtoull": Modelled(CRT, _strtol(64, signed=False)),
    "_strtoi64": Modelled(CRT, _strtol(64, signed=True)),
    "_strtoui64": Modelled(CRT, _strtol(64, signed=False)),
    # the "C" locale, and only it
    "_lock_locales": Modelled(CRT, _constant(0)),
    "_unlock_locales": Modelled(CRT, _constant(0)),
    "setlocale": Modelled(CRT, _setlocale),
    "localeconv": Modelled(CRT, lambda s, cpu, a: _locale_data(s, "lconv")),
    "__pctype_func": Modelled(CRT, lambda s, cpu, a: _locale_data(s, "ctype")),
    "___lc_locale_name_func": Modelled(CRT, lambda s, cpu, a: _locale_data(s, "names")),
    "___lc_codepage_func": Modelled(CRT, _constant(0)),
    "___lc_collate_cp_func": Modelled(CRT, _constant(0)),
    "___mb_cur_max_func": Modelled(CRT, _constant(1)),
    "_set_new_handler": Modelled(CRT, _constant(0)),  # no handler was set
    # an empty environment
    "GetEnvironmentVariableA": Modelled(KERNEL, _no_variable),
    "GetEnvironmentVariableW": Modelled(KERNEL, _no_variable),
    "getenv": Modelled(CRT, _constant(0)),
    "_wgetenv": Modelled(CRT, _constant(0)),
    "getenv_s": Modelled(CRT, _getenv_s),
    # math whose results are exact (no libm's rounding to match)
    **{
        f"{name}{suffix}": Modelled(CRT, _float_model(function, suffix == "f", count))
        for name, function, count in (
            ("ceil", _c_ceil, 1),
            ("floor", _c_floor, 1),
            ("trunc", _c_trunc, 1),
            ("round", _c_round, 1),
            ("fabs", math.fabs, 1),
            ("sqrt", _c_sqrt, 1),
            ("fmod", math.fmod, 2),
            ("copysign", math.copysign, 2),
        )
        for suffix in ("", "f")
    },
}
