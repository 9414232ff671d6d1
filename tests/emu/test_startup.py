"""The modelled start-up surface (hpatch/emu/startup.py), called through its stubs on
every sample build, so on both machines' calling conventions: _initterm and the onexit
tables calling sample functions back, the security cookie's sources, the heap, slots,
SLists, locks, module handles, strings and exact math; deterministic, and what the
table lacks still faults naming itself."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest

from hpatch.arch import Machine
from hpatch.emu import Process, ThreadState
from hpatch.emu.cpu import Cpu
from hpatch.emu.process import ImportKey
from hpatch.emu.startup import (
    FILETIME_START,
    FIRST_THREAD_ID,
    HEAP_LIMIT,
    MODELLED,
    PERFORMANCE_FREQUENCY,
    PERFORMANCE_START,
    PROCESS_ID,
)
from hpatch.emu.unwind import walk_stack
from hpatch.errors import EmulationFault, HPatchError

from .test_process import BUILDS, code_page, i32, machine, new_process

UCRT = "api-ms-win-crt-runtime-l1-1-0.dll"
HEAP = "api-ms-win-crt-heap-l1-1-0.dll"
STRING = "api-ms-win-crt-string-l1-1-0.dll"
KERNEL = "kernel32.dll"


def stub(process: Process, dll: str, name: str) -> int:
    va = process.import_address(dll, name)
    assert va, f"{dll}!{name} is not served"
    return va


def invoke(process: Process, dll: str, name: str, *arguments: int) -> int:
    """Call ``dll!name`` as an image importing it would, on the main thread."""
    thread = process.main_thread
    process.cpu.start(thread, stub(process, dll, name), arguments)
    try:
        process.cpu.run(thread)
        fault, result = thread.fault, thread.result
    finally:
        process.cpu.finish(thread)
    if fault is not None:
        raise fault
    assert result is not None
    return result


def counting(values: list[int]) -> tuple[list[int], dict]:
    """A host_now that returns ``values`` in turn, and the list of its calls."""
    calls: list[int] = []

    def now(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        calls.append(len(calls))
        return values[len(calls) - 1] if len(calls) <= len(values) else 0

    return calls, {"host_now": now}


def pointer_table(process: Process, pointers: list[int]) -> tuple[int, int]:
    first = process.buffer(b"".join(p.to_bytes(8, "little") for p in pointers))
    return first, first + 8 * len(pointers)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dll", ["msvcrt.dll", UCRT, "ucrtbase.dll"])
def test_initterm_calls_every_non_null_entry_through_the_emulator(build: str, dll: str) -> None:
    calls, hosts = counting([5, 6])
    process = new_process(build, "v1", hosts=hosts)
    reset = process.function_va("hp_reset")
    first, last = pointer_table(process, [reset, 0, reset])
    invoke(process, dll, "_initterm", first, last)
    assert len(calls) == 2
    assert process.main_thread.host_frames == []
    assert process.call("hp_identity", 41) == 41  # the thread is free again


@pytest.mark.parametrize("build", BUILDS)
def test_initterm_e_returns_the_first_failure_and_stops(build: str) -> None:
    calls, hosts = counting([0, 7, 9])
    process = new_process(build, "v1", hosts=hosts)
    reset = process.function_va("hp_reset")
    first, last = pointer_table(process, [reset, reset, reset])
    assert invoke(process, UCRT, "_initterm_e", first, last) == 7
    assert len(calls) == 2
    assert invoke(process, UCRT, "_initterm_e", first, first) == 0  # an empty table


@pytest.mark.parametrize("build", BUILDS)
def test_onexit_table_registers_and_runs_in_reverse(build: str) -> None:
    calls, hosts = counting([1, 2, 3])
    process = new_process(build, "v1", hosts=hosts)
    table = process.buffer(24)
    process.space.write(table, b"\xaa" * 24)
    assert invoke(process, UCRT, "_initialize_onexit_table", table) == 0
    assert process.space.read(table, 24) == bytes(24)
    for _ in range(40):  # past the first allocation: the table grows
        assert invoke(process, UCRT, "_register_onexit_function", table, 0) == 0
    reset = process.function_va("hp_reset")
    assert invoke(process, UCRT, "_register_onexit_function", table, reset) == 0
    first, last, end = struct.unpack("<QQQ", process.space.read(table, 24))
    assert last - first == 8 * 41 and end >= last
    assert process.space.read_u64(last - 8) == reset
    assert invoke(process, UCRT, "_execute_onexit_table", table) == 0
    assert len(calls) == 1  # the null entries are skipped
    assert process.space.read(table, 24) == bytes(24)  # emptied


@pytest.mark.parametrize("build", BUILDS)
def test_a_fault_in_a_called_back_entry_names_it_and_frees_the_thread(build: str) -> None:
    process = new_process(build, "v1")
    first, last = pointer_table(process, [0x1234_0000])
    with pytest.raises(EmulationFault, match="0x12340000"):
        invoke(process, "msvcrt.dll", "_initterm", first, last)
    assert process.main_thread.host_frames == []
    assert process.call("hp_zero") == 0


@pytest.mark.parametrize("build", BUILDS)
def test_a_thread_stops_inside_a_called_back_entry_and_resumes(build: str) -> None:
    calls, hosts = counting([5, 6, 7])
    process = new_process(build, "v1", hosts=hosts)
    reset = process.function_va("hp_reset")
    first, last = pointer_table(process, [reset, reset, reset])
    thread = process.new_thread()
    process.cpu.start(thread, stub(process, UCRT, "_initterm"), (first, last))
    inside = 0
    while process.cpu.run(thread, steps=3) == ThreadState.STOPPED:
        inside += bool(thread.host_frames)
        process.call("hp_zero")  # another call on the main thread meanwhile
    assert thread.state == ThreadState.RETURNED and thread.fault is None
    assert inside > 0 and len(calls) == 3 and thread.host_frames == []
    process.cpu.finish(thread)


_CALL_THIRD = {
    # call the third argument with the first two; the return address follows the call
    Machine.AMD64: ("sub rsp, 40; call r8; add rsp, 40; ret", 7),
    Machine.ARM64: (
        "stp x29, x30, [sp, #-16]!; mov x29, sp; blr x2; ldp x29, x30, [sp], #16; ret",
        12,
    ),
}


@pytest.mark.parametrize("build", BUILDS)
def test_a_stack_walk_inside_a_called_back_entry_still_finds_the_caller(build: str) -> None:
    """What the applier's thread check sees: a thread stopped in an initialiser that
    _initterm called returns, in the end, into _initterm's caller; that return address
    stays on the emulated stack (the walk finds it, by unwinding or by its scan)."""
    process = new_process(build, "v1", hosts=counting([1])[1])
    source, after_call = _CALL_THIRD[machine(build)]
    caller = code_page(process, source)
    reset = process.function_va("hp_reset")
    first, last = pointer_table(process, [reset])
    thread = process.new_thread()
    process.cpu.start(thread, caller, (first, last, stub(process, UCRT, "_initterm")))
    module = process.main_module
    assert module is not None
    while not (thread.host_frames and module.contains(process.cpu.registers(thread)["pc"])):
        assert process.cpu.run(thread, steps=1) == ThreadState.STOPPED
    walk = walk_stack(
        process.machine,
        process.space.read,
        process.function_tables.lookup,
        process.cpu.registers(thread),
        thread.stack_top,
        is_code=process.space.is_executable,
        stop_at=process.cpu.return_va,
    )
    assert caller + after_call in walk.return_addresses()
    assert process.cpu.run(thread) == ThreadState.RETURNED
    process.cpu.finish(thread)


@pytest.mark.parametrize("build", BUILDS)
def test_init_once_calls_its_function_once(build: str) -> None:
    process = new_process(build, "v1")
    once = process.buffer(8)
    identity = process.function_va("hp_identity")
    assert invoke(process, KERNEL, "InitOnceExecuteOnce", once, identity, 0, 0) == 1
    assert process.space.read_u64(once) == 1
    process.space.write(once, bytes(8))
    # Done already: the function is not called again (it would see once == 0 and fail).
    assert invoke(process, KERNEL, "InitOnceExecuteOnce", once, identity, 0, 0) == 1


@pytest.mark.parametrize("build", BUILDS)
def test_security_cookie_sources_are_fixed_fakes(build: str) -> None:
    def sources() -> list[int]:
        process = new_process(build, "v1")
        out = process.buffer(8)
        values = []
        for name in ("GetSystemTimeAsFileTime", "QueryPerformanceCounter"):
            invoke(process, KERNEL, name, out)
            values.append(process.space.read_u64(out))
        assert invoke(process, KERNEL, "QueryPerformanceFrequency", out) == 1
        values.append(process.space.read_u64(out))
        for name in ("GetCurrentProcessId", "GetCurrentThreadId", "GetTickCount64"):
            values.append(invoke(process, KERNEL, name))
        invoke(process, KERNEL, "GetSystemTimeAsFileTime", out)
        values.append(process.space.read_u64(out))
        return values

    values = sources()
    assert values == sources()  # deterministic
    assert values[:5] == [
        FILETIME_START,
        PERFORMANCE_START,
        PERFORMANCE_FREQUENCY,
        PROCESS_ID,
        FIRST_THREAD_ID,
    ]
    assert values[-1] > values[0]  # time passes


@pytest.mark.parametrize("build", BUILDS)
def test_heap(build: str) -> None:
    process = new_process(build, "v1")
    block = invoke(process, HEAP, "malloc", 100)
    assert block and block % 16 == 0
    process.space.write(block, bytes(range(100)))
    moved = invoke(process, HEAP, "realloc", block, 300)
    assert moved % 16 == 0 and process.space.read(moved, 100) == bytes(range(100))
    zeroed = invoke(process, "msvcrt.dll", "calloc", 10, 10)
    assert process.space.read(zeroed, 100) == bytes(100)
    assert invoke(process, HEAP, "calloc", 1 << 62, 8) == 0  # the product overflows
    assert invoke(process, HEAP, "malloc", HEAP_LIMIT + 1) == 0  # a full heap
    invoke(process, HEAP, "free", moved)
    assert invoke(process, HEAP, "realloc", 0, 8) != 0
    heap = invoke(process, KERNEL, "GetProcessHeap")
    assert heap == invoke(process, KERNEL, "GetProcessHeap")
    block = invoke(process, KERNEL, "HeapAlloc", heap, 0, 24)
    assert invoke(process, KERNEL, "HeapSize", heap, 0, block) == 24
    grown = invoke(process, KERNEL, "HeapReAlloc", heap, 0, block, 64)
    assert invoke(process, KERNEL, "HeapSize", heap, 0, grown) == 64
    assert invoke(process, KERNEL, "HeapFree", heap, 0, grown) == 1


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("kind", ["Tls", "Fls"])
def test_slots_are_per_thread(build: str, kind: str) -> None:
    process = new_process(build, "v1")
    index = invoke(process, KERNEL, f"{kind}Alloc", 0)
    assert index == 0 and invoke(process, KERNEL, f"{kind}Alloc", 0) == 1
    assert invoke(process, KERNEL, f"{kind}SetValue", index, 0xDEAD) == 1
    assert invoke(process, KERNEL, f"{kind}GetValue", index) == 0xDEAD
    other = process.new_thread()
    process.cpu.start(other, stub(process, KERNEL, f"{kind}GetValue"), (index,))
    process.cpu.run(other)
    assert other.result == 0  # another thread's slot starts empty
    process.cpu.finish(other)
    assert invoke(process, KERNEL, f"{kind}Free", index) == 1
    assert invoke(process, KERNEL, f"{kind}GetValue", index) == 0
    assert invoke(process, KERNEL, "GetLastError") == 87  # ERROR_INVALID_PARAMETER
    assert invoke(process, KERNEL, f"{kind}Alloc", 0) == index  # reused


@pytest.mark.parametrize("build", BUILDS)
def test_slist_and_critical_section(build: str) -> None:
    process = new_process(build, "v1")
    head, a, b = process.buffer(16), process.buffer(16), process.buffer(16)
    process.space.write(head, b"\xff" * 16)
    invoke(process, KERNEL, "InitializeSListHead", head)
    assert invoke(process, KERNEL, "InterlockedPushEntrySList", head, a) == 0
    assert invoke(process, KERNEL, "InterlockedPushEntrySList", head, b) == a
    assert invoke(process, KERNEL, "InterlockedPopEntrySList", head) == b
    assert invoke(process, KERNEL, "InterlockedFlushSList", head) == a
    assert invoke(process, KERNEL, "InterlockedPopEntrySList", head) == 0
    section = process.buffer(40)
    assert invoke(process, KERNEL, "InitializeCriticalSectionAndSpinCount", section, 4000) == 1
    assert process.space.read(section + 8, 4) == b"\xff\xff\xff\xff"  # LockCount: free
    invoke(process, KERNEL, "EnterCriticalSection", section)
    invoke(process, KERNEL, "LeaveCriticalSection", section)
    invoke(process, KERNEL, "DeleteCriticalSection", section)


@pytest.mark.parametrize("build", BUILDS)
def test_kernel_objects_never_wait_for_what_cannot_come(build: str) -> None:
    process = new_process(build, "v1")
    semaphore = invoke(process, KERNEL, "CreateSemaphoreA", 0, 1, 10, 0)
    assert invoke(process, KERNEL, "WaitForSingleObject", semaphore, 0xFFFFFFFF) == 0
    assert invoke(process, KERNEL, "WaitForSingleObject", semaphore, 0) == 0x102  # timeout
    with pytest.raises(EmulationFault, match="nothing can signal"):
        invoke(process, KERNEL, "WaitForSingleObject", semaphore, 0xFFFFFFFF)
    assert invoke(process, KERNEL, "ReleaseSemaphore", semaphore, 1, 0) == 1
    assert invoke(process, KERNEL, "WaitForSingleObject", semaphore, 0xFFFFFFFF) == 0
    event = invoke(process, KERNEL, "CreateEventW", 0, 1, 0, 0)  # manual reset, unset
    assert invoke(process, KERNEL, "SetEvent", event) == 1
    for _ in range(2):  # a manual-reset event stays signalled
        assert invoke(process, KERNEL, "WaitForSingleObject", event, 0) == 0
    assert invoke(process, KERNEL, "CloseHandle", event) == 1
    assert invoke(process, KERNEL, "CloseHandle", event) == 0
    mutex = invoke(process, KERNEL, "CreateMutexW", 0, 0, 0)
    assert mutex not in (semaphore, event)  # a closed handle is never given again
    assert invoke(process, KERNEL, "SetEvent", event) == 0  # stale
    for _ in range(2):  # free, then held already by this thread: taken again
        assert invoke(process, KERNEL, "WaitForSingleObject", mutex, 0) == 0
    other = process.new_thread()
    process.cpu.start(other, stub(process, KERNEL, "WaitForSingleObject"), (mutex, 0))
    process.cpu.run(other)
    assert other.result == 0x102  # another thread times out
    process.cpu.finish(other)
    assert invoke(process, KERNEL, "ReleaseMutex", mutex) == 1
    assert invoke(process, KERNEL, "ReleaseMutex", mutex) == 1
    assert invoke(process, KERNEL, "ReleaseMutex", mutex) == 0  # not held any more
    assert invoke(process, KERNEL, "GetLastError") == 288


@pytest.mark.parametrize("build", BUILDS)
def test_processor_features_modules_and_procedures(build: str) -> None:
    process = new_process(build, "v1")
    assert invoke(process, KERNEL, "IsProcessorFeaturePresent", 23) == 1  # fast fail
    assert invoke(process, KERNEL, "IsProcessorFeaturePresent", 34) == 0  # v8.1 atomics
    main = process.main_module
    assert main is not None
    host = process.module("samplehost.dll")
    assert host is not None
    assert invoke(process, KERNEL, "GetModuleHandleW", 0) == main.base
    name = process.buffer("SampleHost.dll\0".encode("utf-16-le"))
    assert invoke(process, KERNEL, "GetModuleHandleW", name) == host.base
    missing = process.buffer(b"user32.dll\0")
    assert invoke(process, KERNEL, "GetModuleHandleA", missing) == 0
    assert invoke(process, KERNEL, "GetLastError") == 126
    handle = process.buffer(8)
    from_address = process.function_va("hp_zero") + 1
    assert invoke(process, KERNEL, "GetModuleHandleExW", 4, from_address, handle) == 1
    assert process.space.read_u64(handle) == main.base
    symbol = process.buffer(b"hp_zero\0")
    zero = invoke(process, KERNEL, "GetProcAddress", main.base, symbol)
    assert zero == process.function_va("hp_zero")
    assert invoke(process, KERNEL, "GetProcAddress", main.base, missing) == 0
    assert invoke(process, KERNEL, "GetLastError") == 127
    assert invoke(process, KERNEL, "DisableThreadLibraryCalls", main.base) == 1
    assert invoke(process, KERNEL, "GetEnvironmentVariableW", name, 0, 0) == 0
    assert invoke(process, "api-ms-win-crt-environment-l1-1-0.dll", "getenv", missing) == 0


@pytest.mark.parametrize("build", BUILDS)
def test_strings_and_numbers(build: str) -> None:
    process = new_process(build, "v1")
    text = process.buffer(b"  -0x1fz\0")
    end = process.buffer(8)
    assert i32(invoke(process, "api-ms-win-crt-convert-l1-1-0.dll", "strtol", text, end, 0)) == -31
    assert process.space.read_u64(end) == text + 7
    assert i32(invoke(process, "msvcrt.dll", "atoi", process.buffer(b" 42abc\0"))) == 42
    assert invoke(process, "msvcrt.dll", "strlen", text) == 8
    copy = invoke(process, STRING, "_strdup", text)
    assert process.space.read(copy, 9) == b"  -0x1fz\0"
    assert invoke(process, "msvcrt.dll", "strcmp", text, copy) == 0
    other = process.buffer(b"  -0x2\0")
    assert i32(invoke(process, "msvcrt.dll", "strcmp", text, other)) == -1
    assert invoke(process, "msvcrt.dll", "strncmp", text, other, 5) == 0
    assert invoke(process, "vcruntime140.dll", "strchr", text, ord("x")) == text + 4
    target = process.buffer(16)
    invoke(process, "vcruntime140.dll", "memset", target, 0x41, 16)
    invoke(process, "vcruntime140.dll", "memcpy", target, text, 4)
    assert process.space.read(target, 6) == b"  -0AA"
    unterminated = process.buffer(b"abc")  # ends at a guard page
    with pytest.raises(EmulationFault, match="not readable"):
        invoke(process, "msvcrt.dll", "strlen", unterminated)
    assert invoke(process, "msvcrt.dll", "strncmp", unterminated, process.buffer(b"abd\0"), 2) == 0


@pytest.mark.parametrize("build", BUILDS)
def test_the_c_locale_and_the_standard_streams(build: str) -> None:
    process = new_process(build, "v1")
    locale = "api-ms-win-crt-locale-l1-1-0.dll"
    name = invoke(process, locale, "setlocale", 0, 0)
    assert process.space.read(name, 2) == b"C\0"
    assert invoke(process, locale, "setlocale", 0, process.buffer(b"C\0")) == name
    assert invoke(process, locale, "setlocale", 0, process.buffer(b"de_DE\0")) == 0
    ctype = invoke(process, locale, "__pctype_func")

    def classes(character: int) -> int:
        return int.from_bytes(process.space.read(ctype + 2 * character, 2), "little")

    assert classes(ord("A")) == 0x1 | 0x80 | 0x100  # upper, hex, alpha
    assert classes(ord("7")) == 0x4 | 0x80
    assert classes(ord(" ")) == 0x8 | 0x40
    assert classes(0xE9) == 0 and classes(-1) == 0  # no class above ASCII, nor EOF
    conventions = invoke(process, locale, "localeconv")
    assert process.space.read(process.space.read_u64(conventions), 2) == b".\0"
    assert invoke(process, locale, "___mb_cur_max_func") == 1
    stdio = "api-ms-win-crt-stdio-l1-1-0.dll"
    streams = [invoke(process, stdio, "__acrt_iob_func", index) for index in range(3)]
    assert streams[1] - streams[0] == streams[2] - streams[1] > 0
    out = process.buffer(24)
    assert invoke(process, stdio, "_get_stream_buffer_pointers", streams[1], out, out + 8, 0) == 0
    assert struct.unpack("<QQ", process.space.read(out, 16)) == (streams[1] + 8, streams[1])
    module = process.main_module
    assert module is not None
    pc = process.function_va("hp_zero")
    assert invoke(process, "ntdll.dll", "RtlPcToFileHeader", pc, out) == module.base
    assert process.space.read_u64(out) == module.base


_FLOAT_CALL = {
    # the stub's VA comes in the second argument, the value's bits in the first
    Machine.AMD64: "movq xmm0, rcx; sub rsp, 40; call rdx; add rsp, 40; movq rax, xmm0; ret",
    Machine.ARM64: "stp x29, x30, [sp, #-16]!; fmov d0, x0; blr x1; fmov x0, d0; "
    "ldp x29, x30, [sp], #16; ret",
}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ceil", 2.25, 3.0),
        ("floor", -2.25, -3.0),
        ("round", 2.5, 3.0),
        ("round", -2.5, -3.0),
        ("round", 8388609.0, 8388609.0),  # 2**23 + 1: an integer already
        ("sqrt", 6.25, 2.5),
        ("trunc", -7.75, -7.0),
    ],
)
def test_exact_math_takes_and_returns_floating_point_registers(
    build: str, name: str, value: float, expected: float
) -> None:
    process = new_process(build, "v1")
    code = code_page(process, _FLOAT_CALL[machine(build)])
    math = "api-ms-win-crt-math-l1-1-0.dll"
    double = struct.unpack("<Q", struct.pack("<d", value))[0]
    result = process.call(code, double, stub(process, math, name))
    assert struct.unpack("<d", struct.pack("<Q", result))[0] == expected
    single = struct.unpack("<I", struct.pack("<f", value))[0]
    result = process.call(code, single, stub(process, math, f"{name}f"))
    assert struct.unpack("<f", struct.pack("<I", result & 0xFFFFFFFF))[0] == expected


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
@pytest.mark.parametrize("value", [0.49999999999999994, 2.0**52 + 1, -(2.0**52) - 1])
def test_round_does_not_round_twice(build: str, value: float) -> None:
    # value + 0.5 is not exact for these: rounding it first would give the wrong integer.
    process = new_process(build, "v1")
    code = code_page(process, _FLOAT_CALL[machine(build)])
    double = struct.unpack("<Q", struct.pack("<d", value))[0]
    result = process.call(code, double, stub(process, "ucrtbase.dll", "round"))
    assert struct.unpack("<d", struct.pack("<Q", result))[0] == (0.0 if abs(value) < 1 else value)


@pytest.mark.parametrize("build", BUILDS)
def test_what_the_table_lacks_still_faults_naming_itself(build: str) -> None:
    process = new_process(build, "v1")
    assert "CreateThread" not in MODELLED and "exp" not in MODELLED
    assert process.import_address(KERNEL, "CreateThread") is None
    assert process.import_address("samplehost.dll", "malloc") is None  # not a CRT
    assert process.import_address("msvcrt.dll", "GetTickCount") is None  # not kernel32
    key = ImportKey.of(KERNEL, "CreateThread")
    with pytest.raises(EmulationFault, match=r"kernel32\.dll!CreateThread, which nothing"):
        process.call(process._resolve_key(key, None))  # the stub an image's import gets


def test_an_unmodelled_handler_takes_precedence_over_the_model() -> None:
    # Verification gives every import one logging stub, start-up functions included.
    process = Process(machine("x64-clang"), unmodelled=lambda key: lambda cpu, a: 77)
    assert process.call(stub(process, KERNEL, "GetTickCount")) == 77


def _dll_for(prefixes: tuple[str, ...]) -> str:
    prefix = prefixes[-1]
    return f"{prefix}test-l1-1-0.dll" if prefix.endswith("-") else prefix


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_hostile_arguments_fault_and_never_escape_as_python_errors(build: str) -> None:
    """Every modelled function with null, all-ones, huge and garbage-pointer arguments
    returns or faults (an HPatchError naming why); no Python error escapes the CPU."""
    process = new_process(build, "v1")
    chance = random.Random(16)
    garbage = process.buffer(bytes(chance.randrange(1, 256) for _ in range(256)))
    # Text that starts like a number, a name or a path, then turns to non-ASCII bytes.
    text = process.buffer(b" -0x7\xe9\xb2\xff9C:\\\xe9." + bytes(range(1, 200)))
    argument_sets = [
        (0,) * 8,
        ((1 << 64) - 1,) * 8,
        (garbage,) * 8,
        (garbage, 1 << 40, garbage + 255, 3, garbage, 0, 0, 0),
        (garbage + 8, garbage, 1 << 20, garbage + 1, 0, 0, 0, 0),
        (garbage, 0, 0, 0, 0, 0, 0, 0),
        (garbage + 3, garbage + 128, 16, 200, 0, 0, 0, 0),
        (text, 0, 0, 0, 0, 0, 0, 0),
        (text, text, 10, text, text, 0, 0, 0),
        (text + 3, garbage, 36, 1, text, 0, 0, 0),
    ]
    for name, entry in sorted(MODELLED.items()):
        va = stub(process, _dll_for(entry.dlls), name)
        for arguments in argument_sets:
            # A fault, or a runaway callback stopped, is an HPatchError; nothing else.
            with contextlib.suppress(HPatchError):
                process.call(va, *arguments, steps=100_000)
