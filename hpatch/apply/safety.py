"""Is it safe to change code now? The consistency check of Linux livepatch and libcare.

No thread may have its PC inside bytes a redirect overwrites, and no thread may be
executing inside, or have a return address into, a function being replaced: such a
thread would resume old code that then calls into new code (or the reverse), a mix
neither build was tested as. Return addresses come from walking each thread's stack
with the unwind data; where a walk cannot finish, every code address on the rest of
the stack counts (a conservative scan never misses a frame).

A patch region about to be freed (a rollback, a replacement) must also not be pointed
at from any thread's registers or live stack: patch code passes pointers to its own
read-only data to code that is not patched (a message to a logging import, say), and a
thread stopped there would read freed memory when it resumes. Every register and every
aligned word from the stack pointer up counts, whether or not it is still used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpatch.emu.cpu import Thread, ThreadState
from hpatch.emu.process import Process
from hpatch.emu.unwind import walk_stack


@dataclass(frozen=True, slots=True)
class Range:
    """[start_va, end_va) of code, and what to call it in a message."""

    start_va: int
    end_va: int
    name: str

    def holds(self, va: int) -> bool:
        return self.start_va <= va < self.end_va


@dataclass(frozen=True, slots=True)
class BusyThread:
    """A thread that blocks the change, and why."""

    thread_id: int
    pc: int
    reason: str


def busy_threads(
    process: Process, spans: list[Range], functions: list[Range], freed: Sequence[Range] = ()
) -> list[BusyThread]:
    """The threads that block changing ``spans`` (redirect bytes), replacing
    ``functions`` and freeing ``freed`` (patch regions); empty when the change is safe
    now."""
    busy = []
    cpu = process.cpu
    for thread in cpu.threads:
        if thread.state != ThreadState.STOPPED:
            continue
        registers = cpu.registers(thread)
        pc = registers["pc"]
        reason = _pc_reason(pc, spans, functions, process)
        if reason is None:
            walk = walk_stack(
                process.machine,
                process.space.read,
                process.function_tables.lookup,
                registers,
                thread.stack_top,
                is_code=process.space.is_executable,
                stop_at=cpu.return_va,
            )
            for address in walk.return_addresses():
                # The call instruction sits just before the return address.
                hit = next((f for f in functions if f.holds(address - 1)), None)
                if hit is not None:
                    how = (
                        "found by scanning the stack" if address in walk.scanned else "on its stack"
                    )
                    reason = f"has a return address into {hit.name} (0x{address:x}, {how})"
                    break
        if reason is None and freed:
            reason = _pointer_reason(process, thread, registers, freed)
        if reason is not None:
            busy.append(BusyThread(thread.id, pc, f"thread {thread.id} {reason}"))
    return busy


def _pointer_reason(
    process: Process, thread: Thread, registers: dict[str, int], freed: Sequence[Range]
) -> str | None:
    for name, value in registers.items():
        hit = next((r for r in freed if r.holds(value)), None)
        if hit is not None:
            return f"holds a pointer into {hit.name} (0x{value:x} in {name})"
    stack = thread.stack
    low = min(max(registers["sp"], stack.va), stack.end) & ~7
    words = process.space.read(low, stack.end - low)
    for offset in range(0, len(words) - 7, 8):
        value = int.from_bytes(words[offset : offset + 8], "little")
        hit = next((r for r in freed if r.holds(value)), None)
        if hit is not None:
            return (
                f"holds a pointer into {hit.name} (0x{value:x} on its stack at 0x{low + offset:x})"
            )
    return None


def _pc_reason(pc: int, spans: list[Range], functions: list[Range], process: Process) -> str | None:
    for span in spans:
        if span.holds(pc):
            return (
                f"is stopped at 0x{pc:x}, inside the bytes the redirect of {span.name} overwrites"
            )
    for function in functions:
        if function.holds(pc):
            return f"is executing {function.name} ({process.describe(pc)}), which is being replaced"
    return None
