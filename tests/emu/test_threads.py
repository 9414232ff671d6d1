"""Threads: calls that stop after N instructions and resume, interleaved on one engine,
their own stacks and TEBs, and runaway code stopped by the step limit."""

from __future__ import annotations

import pytest
import unicorn

from hpatch.arch import Machine
from hpatch.emu import Process, ThreadState
from hpatch.emu import cpu as cpu_module
from hpatch.emu.cpu import Cpu, Thread
from hpatch.errors import EmulationFault, HPatchError

from .test_process import BLOB, BUILDS, DATA, code_page, i32, new_process, tlv_summary


def run_in_slices(process: Process, threads: list[Thread], steps: int) -> int:
    """Run ``threads`` round-robin, ``steps`` instructions at a time, until none is
    inside its call; returns how many slices ran. Checks every stop on the way."""
    slices = 0
    while any(thread.state == ThreadState.STOPPED for thread in threads):
        for thread in threads:
            if thread.state != ThreadState.STOPPED:
                continue
            state = process.cpu.run(thread, steps=steps)
            slices += 1
            registers = process.cpu.registers(thread)
            # Whatever ran before, this thread's stack is its own.
            assert thread.stack.va <= registers["sp"] < thread.stack.end
            if state == ThreadState.STOPPED:
                assert process.space.is_executable(registers["pc"])
    return slices


def count_instructions(process: Process, function: str, *arguments: int) -> tuple[int, int]:
    """(result, instructions) of a straight call, counted by a hook of our own."""
    count = [0]

    def tick(uc: unicorn.Uc, address: int, size: int, user: object) -> None:
        count[0] += 1

    hook = process.cpu.uc.hook_add(unicorn.UC_HOOK_CODE, tick)
    process.cpu.uc.ctl_flush_tb()  # blocks translated before the hook would not call it
    try:
        result = process.call(function, *arguments)
    finally:
        process.cpu.uc.hook_del(hook)
    return result, count[0]


@pytest.mark.parametrize("steps", [1, 7, 100])
@pytest.mark.parametrize("build", BUILDS)
def test_interleaved_threads_finish_with_straight_results(build: str, steps: int) -> None:
    process = new_process(build)
    expression = b"((1+2)*(3+4) - 5*6) | 0x100"
    data, source = process.buffer(DATA[:200]), process.buffer(expression)
    expected_crc = process.call("hp_crc32", data, 200)
    value = process.buffer(8)
    expected_eval = process.call("hp_expr_eval", source, len(expression), value)
    expected_value = process.space.read(value, 8)
    process.space.write(value, bytes(8))

    crc_thread, eval_thread, parse_thread = (process.new_thread() for _ in range(3))
    blob, summary = process.buffer(BLOB), process.buffer(20)
    process.cpu.start(crc_thread, process.function_va("hp_crc32"), (data, 200))
    process.cpu.start(
        eval_thread, process.function_va("hp_expr_eval"), (source, len(expression), value)
    )
    process.cpu.start(parse_thread, process.function_va("hp_tlv_parse"), (blob, len(BLOB), summary))
    threads = [crc_thread, eval_thread, parse_thread]
    slices = run_in_slices(process, threads, steps)
    assert slices > 3  # they did take turns
    assert [t.state for t in threads] == [ThreadState.RETURNED] * 3
    assert crc_thread.result == expected_crc
    assert eval_thread.result == expected_eval
    assert process.space.read(value, 8) == expected_value
    assert int.from_bytes(expected_value, "little", signed=True) == (21 - 30) | 0x100
    fields = process.space.read(summary, 20)
    assert (i32(parse_thread.result), fields) == (
        4,
        b"".join(v.to_bytes(4, "little") for v in tlv_summary(BLOB)),
    )


@pytest.mark.parametrize("build", BUILDS)
def test_one_instruction_at_a_time_is_the_same_call(build: str) -> None:
    process = new_process(build)
    blob, summary = process.buffer(BLOB), process.buffer(20)
    result, instructions = count_instructions(process, "hp_tlv_parse", blob, len(BLOB), summary)
    expected = process.space.read(summary, 20)
    process.space.write(summary, bytes(20))

    thread = process.new_thread()
    process.cpu.start(thread, process.function_va("hp_tlv_parse"), (blob, len(BLOB), summary))
    runs, pcs = 0, set()
    while True:
        before = process.cpu.registers(thread)["pc"]
        state = process.cpu.run(thread, steps=1)
        runs += 1
        if state != ThreadState.STOPPED:
            break
        pcs.add(before)
        assert process.cpu.registers(thread)["pc"] != before or runs == 1  # one step on
    assert state == ThreadState.RETURNED
    assert (thread.result, process.space.read(summary, 20)) == (result, expected)
    assert runs == instructions  # each run of one step ran one instruction
    assert len(pcs) > 20


@pytest.mark.parametrize("build", BUILDS)
def test_stepping_across_host_functions_calls_each_once(build: str) -> None:
    ticks: list[int] = []

    def now(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        ticks.append(len(ticks))
        return 500 + len(ticks)

    process = new_process(build, hosts={"host_now": now})
    thread = process.new_thread()
    process.cpu.start(thread, process.function_va("hp_reset"), ())
    while process.cpu.run(thread, steps=1) == ThreadState.STOPPED:
        pass
    assert (thread.state, thread.result, ticks) == (ThreadState.RETURNED, 501, [0])

    # hp_pkt_process with flag 1 goes through the emulated host_alloc and host_free.
    packet = process.buffer(64)
    blob, summary = process.buffer(BLOB), process.buffer(20)
    size = process.call("hp_pkt_build", packet, 64, 1, blob, len(BLOB))
    expected = process.call("hp_pkt_process", packet, size, summary)
    expected_summary = process.space.read(summary, 20)
    process.space.write(summary, bytes(20))
    process.cpu.start(thread, process.function_va("hp_pkt_process"), (packet, size, summary))
    run_in_slices(process, [thread], 1)
    assert (thread.result, process.space.read(summary, 20)) == (expected, expected_summary)
    assert len(ticks) == 3  # hp_pkt_process asks the clock once per call


@pytest.mark.parametrize("build", BUILDS)
def test_a_stopped_thread_resumes_with_changed_registers(build: str) -> None:
    process = new_process(build)
    thread = process.new_thread()
    process.cpu.start(thread, process.function_va("hp_identity"), (5,))
    assert process.cpu.run(thread, steps=0) == ThreadState.STOPPED
    assert process.cpu.registers(thread)["pc"] == process.function_va("hp_identity")
    first = "rcx" if process.machine == Machine.AMD64 else "x0"
    assert process.cpu.registers(thread)[first] == 5
    process.cpu.set_register(thread, first, 9)
    other = process.new_thread()  # something else runs in between
    process.cpu.start(other, process.function_va("hp_identity"), (7,))
    assert process.cpu.run(other) == ThreadState.RETURNED and other.result == 7
    assert process.cpu.run(thread) == ThreadState.RETURNED
    assert thread.result == 9


LOOPS = {
    Machine.AMD64: ("xor eax, eax; again: add rax, 1; jmp again", "rax", 2),
    Machine.ARM64: ("mov x0, #0; again: add x0, x0, #1; b again", "x0", 4),
}


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_runaway_loop_is_stopped_by_the_step_limit(build: str) -> None:
    process = new_process(build)
    source, counter, first = LOOPS[process.machine]
    loop = code_page(process, source, "runaway")
    with pytest.raises(HPatchError, match="did not return within 1000 steps"):
        process.call(loop, steps=1000)
    assert process.main_thread.state == ThreadState.IDLE  # ready for the next call
    assert process.call("hp_zero") == 0

    thread = process.new_thread()
    process.cpu.start(thread, loop, ())
    assert process.cpu.run(thread, steps=1) == ThreadState.STOPPED
    assert process.cpu.registers(thread)["pc"] == loop + first
    assert process.cpu.run(thread, steps=1000) == ThreadState.STOPPED  # 500 turns
    assert process.cpu.registers(thread)[counter] == 500
    assert process.cpu.registers(thread)["pc"] == loop + first

    # Without a budget, the default limit ends it as a fault, counted exactly.
    process.cpu.finish(thread)  # abandon the stopped call
    process.cpu.start(thread, loop, ())
    assert process.cpu.run(thread) == ThreadState.FAULTED
    # An even count of instructions ends after an add (4 bytes on both machines).
    assert thread.fault is not None and thread.fault.pc == loop + first + 4
    assert f"still running after {cpu_module.DEFAULT_STEP_LIMIT} instructions" in str(thread.fault)
    assert "runaway+0x" in str(thread.fault)
    assert process.cpu.registers(thread)[counter] == cpu_module.DEFAULT_STEP_LIMIT // 2
    with pytest.raises(EmulationFault, match="still running"):
        process.call(loop)


def test_thread_misuse_is_refused() -> None:
    process = new_process("x64-clang")
    thread = process.new_thread()
    with pytest.raises(HPatchError, match="no call in progress"):
        process.cpu.run(thread)
    process.cpu.start(thread, process.function_va("hp_zero"), ())
    with pytest.raises(HPatchError, match="inside a call already"):
        process.cpu.start(thread, process.function_va("hp_zero"), ())
    with pytest.raises(HPatchError, match="inside a call already"):
        process.call("hp_zero", thread=thread)
    assert process.cpu.run(thread) == ThreadState.RETURNED
    with pytest.raises(HPatchError, match="no call in progress"):
        process.cpu.run(thread)
    assert process.call("hp_zero", thread=thread) == 0  # a finished thread takes a new call
    assert thread.state == ThreadState.IDLE


THREAD_PROBES = {
    # (TEB self pointer, StackBase from the TEB, the stack pointer at entry)
    Machine.AMD64: ("mov rax, gs:[0x30]; ret", "mov rax, gs:[0x8]; ret", "mov rax, rsp; ret"),
    Machine.ARM64: ("mov x0, x18; ret", "ldr x0, [x18, #8]; ret", "mov x0, sp; ret"),
}


@pytest.mark.parametrize("build", ["x64-gcc", "arm64-clang"])
def test_threads_have_their_own_stack_and_teb(build: str) -> None:
    process = new_process(build)
    teb, stack_base, stack_pointer = (
        code_page(process, source) for source in THREAD_PROBES[process.machine]
    )
    threads = [process.main_thread, process.new_thread(), process.new_thread()]
    assert len({t.stack.va for t in threads}) == len({t.teb.va for t in threads}) == 3
    for thread in threads:
        assert process.call(teb, thread=thread) == thread.teb.va
        assert process.call(stack_base, thread=thread) == thread.stack.end
        sp = process.call(stack_pointer, thread=thread)
        assert thread.stack.va <= sp < thread.stack.end
        # At entry, x64 has just pushed a return address onto a 16-byte aligned stack.
        assert (sp + (8 if process.machine == Machine.AMD64 else 0)) % 16 == 0


@pytest.mark.parametrize("build", ["x64-clang-hotpatch", "arm64-clang"])
def test_stack_overflow_runs_into_the_guard_page(build: str) -> None:
    process = new_process(build)
    source = (
        "again: push rax; jmp again"
        if process.machine == Machine.AMD64
        else "again: str x0, [sp, #-16]!; b again"
    )
    thread = process.new_thread()
    process.cpu.start(thread, code_page(process, source), ())
    assert process.cpu.run(thread) == ThreadState.FAULTED
    fault = thread.fault
    assert fault is not None and fault.access == "write"
    assert thread.stack.guards[0] <= fault.address < thread.stack.va
    assert process.space.region_at(fault.address).name.startswith("guard below stack")
