"""A page an ARM64 function leaves in an argument register at a call is handed on only
if the callee may read that register before writing it. MSVC leaves x8 (the indirect
result register) holding an ADRP's page at calls to functions that set x8 themselves
first (psutil 7.1.2's error paths): those pages die at the call."""

from __future__ import annotations

import struct
from collections.abc import Callable

import keystone

from hpatch.arch.arm64 import Arm64
from hpatch.arch.arm64_relocate import arm64_code_fixups

from .test_arm64_relocate import adrp

KS = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
ARCH = Arm64()
CALLER = 0x6000
CALLEE = 0x7000
NESTED = 0x7800


def image(functions: dict[int, list[str]]) -> Callable[[int, int], bytes]:
    """A read over the functions assembled at their RVAs (branch targets absolute)."""
    memory: dict[int, bytes] = {}
    for start, lines in functions.items():
        for index, line in enumerate(lines):
            encoding, _ = KS.asm(line, start + 4 * index)
            assert encoding is not None and len(encoding) == 4, line
            memory[start + 4 * index] = bytes(encoding)

    def read(rva: int, size: int) -> bytes:
        return b"".join(memory.get(rva + at, b"\0\0\0\0") for at in range(0, size, 4))[:size]

    return read


WRITES_X8 = ["stp x19, x20, [sp, #-0x30]!", "str x30, [sp, #0x20]", "adrp x8, #0xd000", "ret"]
READS_X8 = ["stp x19, x20, [sp, #-0x30]!", "add x0, x8, #0x10", "ret"]


def test_a_callee_that_writes_x8_first_does_not_read_it() -> None:
    read = image({CALLEE: WRITES_X8})
    assert ARCH.registers_read_first(read, CALLEE, frozenset({8})) is False
    assert ARCH.registers_read_first(image({CALLEE: READS_X8}), CALLEE, frozenset({8})) is True


def test_calls_inside_the_callee_are_followed() -> None:
    nested_writes = image({CALLEE: [f"bl #{NESTED:#x}", "ret"], NESTED: WRITES_X8})
    assert ARCH.registers_read_first(nested_writes, CALLEE, frozenset({8})) is False
    nested_reads = image({CALLEE: [f"bl #{NESTED:#x}", "ret"], NESTED: READS_X8})
    assert ARCH.registers_read_first(nested_reads, CALLEE, frozenset({8})) is True
    # too deep to tell
    chain = {CALLEE + 0x100 * n: [f"bl #{CALLEE + 0x100 * (n + 1):#x}"] for n in range(5)}
    assert ARCH.registers_read_first(image(chain), CALLEE, frozenset({8})) is True


def test_every_path_of_the_callee_is_followed() -> None:
    # psutil 7.1.3's formatting helper spills its variadic arguments, then branches
    both_write = image(
        {
            CALLEE: ["stp x2, x3, [sp, #-0x10]!", f"cbnz x1, #{CALLEE + 0x20:#x}", *WRITES_X8],
            CALLEE + 0x20: ["adrp x8, #0xd000", "ret"],
        }
    )
    assert ARCH.registers_read_first(both_write, CALLEE, frozenset({8})) is False
    one_reads = image(
        {
            CALLEE: ["stp x2, x3, [sp, #-0x10]!", f"cbnz x1, #{CALLEE + 0x20:#x}", *WRITES_X8],
            CALLEE + 0x20: ["ldr x0, [x8]", "ret"],
        }
    )
    assert ARCH.registers_read_first(one_reads, CALLEE, frozenset({8})) is True
    loop = image({CALLEE: ["sub x1, x1, #1", f"cbnz x1, #{CALLEE:#x}", "adrp x8, #0xd000", "ret"]})
    assert ARCH.registers_read_first(loop, CALLEE, frozenset({8})) is False


def test_what_cannot_be_decided_is_a_read() -> None:
    branches = image({CALLEE: ["cbz x0, #0x7100", "adrp x8, #0xd000", "ret"]})
    assert ARCH.registers_read_first(branches, CALLEE, frozenset({8})) is True
    returns_x0 = image({CALLEE: ["ret"]})
    assert ARCH.registers_read_first(returns_x0, CALLEE, frozenset({0})) is True
    assert ARCH.registers_read_first(returns_x0, CALLEE, frozenset({8})) is False
    assert ARCH.registers_read_first(image({}), CALLEE + 2, frozenset({8})) is True


def passed_on(callee_reads: Callable[[int, frozenset[int]], bool] | None) -> set[int]:
    """The relocator's passed-on places for ``adrp x8; add x1, x8, #0x2b0; bl CALLEE``."""
    words = [adrp(8, CALLER)]
    for index, line in enumerate(["add x1, x8, #0x2b0", f"bl #{CALLEE:#x}", "ret"], start=1):
        encoding, _ = KS.asm(line, CALLER + 4 * index)
        assert encoding is not None
        words.append(struct.unpack("<I", bytes(encoding))[0])
    code = struct.pack(f"<{len(words)}I", *words)
    end = CALLER + len(code)
    found = arm64_code_fixups(code, CALLER, [(CALLER, end)], (CALLER, end), [], 0, (), callee_reads)
    return {f.passed_on for f in found if f.page_group >= 0}


def test_the_relocator_asks_about_the_callee() -> None:
    assert passed_on(None) == {CALLER + 8}
    assert passed_on(lambda callee, registers: True) == {CALLER + 8}
    asked: list[tuple[int, frozenset[int]]] = []

    def writes_first(callee: int, registers: frozenset[int]) -> bool:
        asked.append((callee, registers))
        return False

    assert passed_on(writes_first) == {-1}
    assert asked == [(CALLEE, frozenset({8}))]
