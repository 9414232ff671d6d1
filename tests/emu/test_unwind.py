"""The stack unwinder against the true call chain of emulated code.

Real sample DLLs (all four builds) and synthetic programs (assembled here, with
hand-written unwind data for the formats the samples do not use) run under raw
Unicorn; at every instruction the walker's return addresses must equal the chain
the executed calls and returns built. Then the fallback: corrupt or missing unwind
data must still give every return address, and hostile stacks must end quickly.
"""

from __future__ import annotations

import itertools
import random
import struct
import time
from collections.abc import Callable

import pytest

from hpatch.arch import Machine
from hpatch.emu.unwind import (
    MAX_SCAN_BYTES,
    Frame,
    FunctionEntry,
    Lookup,
    StackWalk,
    walk_stack,
)

from .unwind_support import (
    BUILDS,
    DATA_VA,
    STACK_TOP,
    FakeMemory,
    FunctionTable,
    SampleProcess,
    Stop,
    SyntheticProgram,
    arm64_packed,
    arm64_xdata,
    lookup_in,
    nested_tlv,
    x64_unwind_info,
)

# Sample runs -------------------------------------------------------------------


def run_workload(process: SampleProcess, on_stop: Callable[[Stop], None], full: bool = True) -> int:
    """Call exported functions that recurse, dispatch through tables, hit error paths
    (gcc's ``.cold`` parts) and call imports (bound to a stub without unwind data).

    ``full`` adds the command protocol (the longest run: handlers through a table).
    """
    emulator = process.emulator
    emulator.data_cursor = DATA_VA
    stops = 0

    def counted(stop: Stop) -> None:
        nonlocal stops
        stops += 1
        on_stop(stop)

    def call(name: str, *arguments: int) -> int:
        return emulator.call(process.export_va(name), arguments, counted) & 0xFFFFFFFF

    buffer = emulator.buffer
    assert call("hp_crc32", buffer(b"123456789"), 9) == 0xCBF43926
    nested = nested_tlv(4)
    assert call("hp_tlv_parse", buffer(nested), len(nested), buffer(20)) == 10
    expression = b"1+2*(3-4) | 0x10"
    assert call("hp_expr_eval", buffer(expression), len(expression), buffer(8)) == 16
    assert call("hp_vm_run", buffer(bytes([0, 5, 4, 3, 0, 3, 1])), 7, buffer(8)) == 5
    if full:
        machine = buffer(116)
        call("hp_fsm_init", machine)
        commands = b'add 1 2 0x10 -4\neval "6*7"\nping\n'
        assert call("hp_fsm_feed", machine, buffer(commands), len(commands)) == 3
    # Error paths: the bug triggers of bugs.json and a truncated container.
    call("hp_json_escape", buffer(b"\x01"), 1, buffer(4), 4)
    call("hp_tlv_copy_string", buffer(bytes.fromhex("02040041424344")), 7, 2, buffer(4), 4)
    call("hp_tlv_parse", buffer(bytes.fromhex("8105000110004142")), 8, buffer(20))
    assert call("hp_tlv_parse", buffer(b"\x81\x10\x00"), 3, buffer(20)) == 0xFFFFFFFC
    call("hp_json_quote", buffer(b"abc\0"))  # host_alloc returns 0: the NOMEM path
    return stops


@pytest.fixture(scope="module", params=[(b, v) for b in BUILDS for v in ("v1", "v3")], ids="/".join)
def sample(request: pytest.FixtureRequest) -> SampleProcess:
    """Every build, in the baseline and in the version with all four bugs fixed."""
    build, version = request.param
    return SampleProcess.load(build, version)


@pytest.fixture(scope="module", params=BUILDS)
def baseline(request: pytest.FixtureRequest) -> SampleProcess:
    """Every build, baseline version only: for the slower fallback checks."""
    return SampleProcess.load(request.param)


def test_sample_walks_equal_the_true_call_chain(sample: SampleProcess) -> None:
    """At every instruction of every call, the unwound return addresses are exactly
    the executed chain, innermost first, ending at the sentinel."""
    depths: list[int] = []
    kinds: set[str] = set()

    def check(stop: Stop) -> None:
        walk, reason = sample.walk(stop)
        got = tuple(frame.pc for frame in walk.frames[1:])
        assert got == stop.chain and walk.complete, (
            f"at 0x{stop.pc:x}: want {[hex(a) for a in stop.chain]}, "
            f"got {[hex(a) for a in got]} ({reason})"
        )
        assert walk.scanned == ()
        assert walk.frames[0] == Frame(stop.pc, walk.frames[0].sp, "registers")
        sps = [frame.sp for frame in walk.frames]
        assert sps == sorted(sps) and sps[-1] <= STACK_TOP
        assert walk.return_addresses() == stop.chain
        depths.append(len(stop.chain))
        kinds.update(frame.how for frame in walk.frames[1:])

    # The fixed versions differ in their error paths, which the short workload has.
    full = sample.version == "v1"
    stops = run_workload(sample, check, full=full)
    # The workload must really exercise deep recursion and leaf frames.
    assert stops > (4000 if full else 2000)
    assert max(depths) >= 10
    assert kinds == {"unwind", "leaf"}


# Synthetic x64 program ----------------------------------------------------------

PUSH, ALLOC_LARGE, ALLOC_SMALL, SET_FPREG, SAVE_NONVOL, SAVE_NONVOL_FAR, EPILOG = range(7)
SAVE_XMM128, SAVE_XMM128_FAR = 8, 9
RBX, RBP, RSI, R12, R13, R15 = 3, 5, 6, 12, 13, 15

#: outer: frame pointer (rbp, offset 0x80), alloca, UWOP_ALLOC_LARGE (scaled), SAVE_NONVOL,
#: SAVE_XMM128, epilogue through lea rsp, [rbp + disp32].
#: middle: r13 as frame register, SAVE_NONVOL_FAR of the caller's frame pointer rbp
#: (which it then clobbers), SAVE_XMM128_FAR, alloca; continued by middle_frag, a
#: chained entry that jumps to its own start and ends in an epilogue with lea rsp.
#: tail2: version 2 unwind info with two epilogs (one ends in a tail call through
#: jmp rax, which no instruction scan would call an epilogue) and a padding slot.
#: leaf: UWOP_ALLOC_LARGE (unscaled form); jumps to cold, an entry without a prolog
#: whose codes restate leaf's frame (gcc's .cold parts), which jumps back into leaf.
X64_PROGRAM = {
    "outer": """
        push rbp
      a1:
        push rbx
      a2:
        sub rsp, 0x1008
      a3:
        mov qword ptr [rsp + 0x100], rsi
      a4:
        movups xmmword ptr [rsp + 0x20], xmm6
      a5:
        lea rbp, [rsp + 0x80]
      a6:
        mov ebx, 3
      loop:
        mov rcx, 0x40
        sub rsp, rcx
        and rsp, -16
        mov r12d, ebx
        call {middle}
        dec ebx
        jnz {loop}
        movups xmm6, xmmword ptr [rbp - 0x60]
        mov rsi, qword ptr [rbp + 0x80]
        lea rsp, [rbp + 0xf88]
        pop rbx
        pop rbp
        ret
    """,
    "middle": """
        push r12
      m1:
        push r13
      m2:
        sub rsp, 0x38
      m3:
        mov qword ptr [rsp + 0x18], rbp
      m4:
        movups xmmword ptr [rsp + 0x20], xmm7
      m5:
        lea r13, [rsp + 0x10]
      m6:
        xor ebp, ebp
        sub rsp, 0x30
        and rsp, -16
        mov r12d, 2
        call {leaf}
        call {tail2}
        jmp {middle_frag}
    """,
    "middle_frag": """
        call {leaf}
        sub rsp, 0x20
        call {tail2}
        dec r12d
        jz {done}
        jmp {middle_frag}
      done:
        call {leafless}
        movups xmm7, xmmword ptr [r13 + 0x10]
        mov rbp, qword ptr [r13 + 0x8]
        lea rsp, [r13 + 0x28]
        pop r13
        pop r12
        ret
    """,
    "tail2": """
        push rbx
      p1:
        push rsi
      p2:
        sub rsp, 0x20
      p3:
        call {leaf}
        test r12d, 1
        jz {second}
        add rsp, 0x20
      e1:
        pop rsi
        pop rbx
        ret
      second:
        call {leafless}
        mov rax, {leafless}
        add rsp, 0x20
      e2:
        pop rsi
        pop rbx
        jmp rax
    """,
    "leaf": """
        push r15
      l1:
        sub rsp, 0x2010
      l2:
        call {leafless}
        jmp {cold}
      back:
        add rsp, 0x2010
        pop r15
        ret
    """,
    "cold": """
        call {leafless}
        jmp {leaf_back}
    """,
    "leafless": """
        mov eax, 1
        ret
    """,
}


def x64_program() -> SyntheticProgram:
    program = SyntheticProgram(
        Machine.AMD64, {name: code.strip().splitlines() for name, code in X64_PROGRAM.items()}
    )

    def at(name: str, label: str) -> int:
        return program.offset(name, label)

    program.add_entry(
        "outer",
        x64_unwind_info(
            at("outer", "a6"),
            [
                (at("outer", "a6"), SET_FPREG, 0),
                (at("outer", "a5"), SAVE_XMM128, 6, 0x20 // 16),
                (at("outer", "a4"), SAVE_NONVOL, RSI, 0x100 // 8),
                (at("outer", "a3"), ALLOC_LARGE, 0, 0x1008 // 8),
                (at("outer", "a2"), PUSH, RBX),
                (at("outer", "a1"), PUSH, RBP),
            ],
            frame_register=RBP,
            frame_offset=0x80 // 16,
        ),
    )
    middle = program.add_entry(
        "middle",
        x64_unwind_info(
            at("middle", "m6"),
            [
                (at("middle", "m6"), SET_FPREG, 0),
                (at("middle", "m5"), SAVE_XMM128_FAR, 7, 0x20, 0),
                (at("middle", "m4"), SAVE_NONVOL_FAR, RBP, 0x18, 0),
                (at("middle", "m3"), ALLOC_SMALL, (0x38 - 8) // 8),
                (at("middle", "m2"), PUSH, R13),
                (at("middle", "m1"), PUSH, R12),
            ],
            frame_register=R13,
            frame_offset=1,
        ),
    )
    parent = (program.rva(middle.begin_va), program.rva(middle.end_va), middle.unwind_word)
    program.add_entry(
        "middle_frag", x64_unwind_info(0, [], frame_register=R13, frame_offset=1, chained=parent)
    )
    end = program.end("tail2")

    def epilog_at(label: str) -> int:
        distance = end - program.address("tail2", label)
        return distance & 0xFF | EPILOG << 8 | (distance >> 8) << 12

    # Size 3 (two pops and the terminator's first byte), no epilog ends the function,
    # one slot per epilog and a zero slot to make the count even.
    epilogs = [3 | EPILOG << 8, epilog_at("e2"), epilog_at("e1"), EPILOG << 8]
    program.add_entry(
        "tail2",
        x64_unwind_info(
            at("tail2", "p3"),
            [
                (at("tail2", "p3"), ALLOC_SMALL, (0x20 - 8) // 8),
                (at("tail2", "p2"), PUSH, RSI),
                (at("tail2", "p1"), PUSH, RBX),
            ],
            version=2,
            epilog_slots=epilogs,
        ),
    )
    frame = [(0, ALLOC_LARGE, 1, 0x2010, 0), (0, PUSH, R15)]
    program.add_entry(
        "leaf",
        x64_unwind_info(
            at("leaf", "l2"),
            [(at("leaf", "l2"), ALLOC_LARGE, 1, 0x2010, 0), (at("leaf", "l1"), PUSH, R15)],
        ),
    )
    program.add_entry("cold", x64_unwind_info(0, frame))
    return program


# Synthetic ARM64 program --------------------------------------------------------

#: outer: packed, chained (CR 3), RegI 2, RegF 1, homed parameters (H), small locals.
#: packed_lr: packed, CR 1 with an odd RegI (stp x21, lr), RegF 2 (str d10), locals.
#: packed_big: packed, CR 3 with locals over 4088 bytes (two subs, stp without writeback).
#: pac: packed, CR 2 (pacibsp / autibsp).
#: middle: .xdata with save_r19r20_x + save_next, save_reg, save_fplr_x, set_fp, alloc_m,
#: alloca in the body, two epilog scopes that reuse the prolog codes from index 2.
#: leaf_x: .xdata with a single epilog in the header (E): alloc_s, save_lrpair,
#: save_any_reg (x29, pre-indexed), save_fregp_x, save_freg_x, save_regp_x, save_reg_x,
#: nop, add_fp, alloc_l.
#: frag_parent / frag_mid / frag_tail: a function in three fragments: a prolog-only part
#: (extended header, no epilog), a packed Flag 2 part, and a part that saves x21 itself
#: (shrink wrapping: save_reg, end_c, then the phantom prolog) with the epilog.
ARM64_PROGRAM = {
    "outer": """
        stp x19, x20, [sp, #-96]!
        stp d8, d9, [sp, #16]
        stp x0, x1, [sp, #32]
        stp x2, x3, [sp, #48]
        stp x4, x5, [sp, #64]
        stp x6, x7, [sp, #80]
        stp x29, x30, [sp, #-32]!
        mov x29, sp
        mov x19, #3
      loop:
        mov x0, x19
        bl {middle}
        bl {packed_lr}
        subs x19, x19, #1
        b.ne {loop}
        ldp x29, x30, [sp], #32
        ldp d8, d9, [sp, #16]
        ldp x19, x20, [sp], #96
        ret
    """,
    "packed_lr": """
        stp x19, x20, [sp, #-64]!
        stp x21, x30, [sp, #16]
        stp d8, d9, [sp, #32]
        str d10, [sp, #48]
        sub sp, sp, #32
        bl {leaf}
        bl {packed_big}
        bl {pac}
        add sp, sp, #32
        ldr d10, [sp, #48]
        ldp d8, d9, [sp, #32]
        ldp x21, x30, [sp, #16]
        ldp x19, x20, [sp], #64
        ret
    """,
    "packed_big": """
        sub sp, sp, #4088
        sub sp, sp, #920
        stp x29, x30, [sp, #0]
        add x29, sp, #0
        bl {leaf}
        bl {leaf}
        ldp x29, x30, [sp, #0]
        add sp, sp, #920
        add sp, sp, #4088
        ret
    """,
    "pac": """
        hint #27
        stp x29, x30, [sp, #-16]!
        mov x29, sp
        bl {leaf}
        ldp x29, x30, [sp], #16
        hint #31
        ret
    """,
    "middle": """
        stp x19, x20, [sp, #-48]!
        stp x21, x22, [sp, #16]
        str x23, [sp, #32]
        stp x29, x30, [sp, #-32]!
        mov x29, sp
        sub sp, sp, #0x7f0
        mov x22, x0
        mov x9, #64
        sub sp, sp, x9
        bl {leaf_x}
        bl {frag_parent}
        tbz x22, #0, {second}
      e1:
        mov sp, x29
        ldp x29, x30, [sp], #32
        ldr x23, [sp, #32]
        ldp x21, x22, [sp, #16]
        ldp x19, x20, [sp], #48
        ret
      second:
        bl {leaf}
      e2:
        mov sp, x29
        ldp x29, x30, [sp], #32
        ldr x23, [sp, #32]
        ldp x21, x22, [sp, #16]
        ldp x19, x20, [sp], #48
        ret
    """,
    "leaf_x": """
        sub sp, sp, #32
        stp x19, x30, [sp, #0]
        str x29, [sp, #-16]!
        stp d8, d9, [sp, #-16]!
        str d10, [sp, #-16]!
        stp x25, x26, [sp, #-32]!
        str x27, [sp, #-16]!
        nop
        add x29, sp, #16
        sub sp, sp, #0x10000
        bl {leaf}
        bl {leaf}
        add sp, sp, #0x10000
        sub sp, x29, #16
        nop
        ldr x27, [sp], #16
        ldp x25, x26, [sp], #32
        ldr d10, [sp], #16
        ldp d8, d9, [sp], #16
        ldr x29, [sp], #16
        ldp x19, x30, [sp]
        add sp, sp, #32
        ret
    """,
    "frag_parent": """
        stp x19, x20, [sp, #-32]!
        stp x29, x30, [sp, #-16]!
        mov x29, sp
        mov x19, #2
        b {frag_mid}
    """,
    "frag_mid": """
        bl {leaf}
        subs x19, x19, #1
        b.ne {frag_mid}
        b {frag_tail}
    """,
    "frag_tail": """
        str x21, [sp, #32]
        mov x21, #7
        bl {leaf}
      e:
        ldr x21, [sp, #32]
        mov sp, x29
        ldp x29, x30, [sp], #16
        ldp x19, x20, [sp], #32
        ret
    """,
    "leaf": """
        add x0, x0, #1
        ret
    """,
}

END, END_C, SAVE_NEXT, SET_FP, NOP = 0xE4, 0xE5, 0xE6, 0xE1, 0xE3


def arm64_program() -> SyntheticProgram:
    program = SyntheticProgram(
        Machine.ARM64, {name: code.strip().splitlines() for name, code in ARM64_PROGRAM.items()}
    )

    def length(name: str) -> int:
        return program.end(name) - program.address(name)

    add = program.add_entry
    add("outer", arm64_packed(length("outer"), reg_f=1, reg_i=2, homes=1, chain=3, frame_size=128))
    add("packed_lr", arm64_packed(length("packed_lr"), reg_f=2, reg_i=3, chain=1, frame_size=96))
    add("packed_big", arm64_packed(length("packed_big"), chain=3, frame_size=4088 + 920))
    add("pac", arm64_packed(length("pac"), chain=2, frame_size=16))
    middle = bytes(
        [
            0xC0, 0x7F,  # alloc_m 0x7f0
            SET_FP,
            0x80 | 3,  # save_fplr_x -32
            0xD0 | 4 >> 2, (4 & 3) << 6 | 4,  # save_reg x23, [sp, #32]
            SAVE_NEXT,
            0x20 | 6,  # save_r19r20_x -48
            END,
        ]
    )  # fmt: skip
    epilogs = [(program.offset("middle", "e1"), 2), (program.offset("middle", "e2"), 2)]
    add("middle", arm64_xdata(length("middle"), middle, epilogs=epilogs))
    leaf_x = bytes(
        [
            0xE0, 0x00, 0x10, 0x00,  # alloc_l 0x10000
            0xE2, 16 // 8,  # add_fp 16
            NOP,
            0xD4 | 8 >> 3, (8 & 7) << 5 | 1,  # save_reg_x x27, -16
            0xCC | 6 >> 2, (6 & 3) << 6 | 3,  # save_regp_x x25, -32
            0xDE, 2 << 5 | 1,  # save_freg_x d10, -16
            0xDA, 1,  # save_fregp_x d8, -16
            0xE7, 0x20 | 29, 0x00,  # save_any_reg x29, pre-indexed, -16
            0xD6, 0,  # save_lrpair x19, lr, [sp]
            0x02,  # alloc_s 32
            END,
        ]
    )  # fmt: skip
    add("leaf_x", arm64_xdata(length("leaf_x"), leaf_x, single_epilog_index=0))
    phantom = bytes([SET_FP, 0x80 | 1, 0x20 | 4, END])  # mov x29,sp; stp fp,lr,-16; stp x19,x20,-32
    add("frag_parent", arm64_xdata(length("frag_parent"), phantom, extended=True))
    add("frag_mid", arm64_packed(length("frag_mid"), flag=2, reg_i=3, chain=3, frame_size=48))
    own = bytes([0xD0, 2 << 6 | 4, END_C])  # save_reg x21, [sp, #32]; end_c
    tail_epilog = [(program.offset("frag_tail", "e"), 0)]
    add("frag_tail", arm64_xdata(length("frag_tail"), own + phantom, epilogs=tail_epilog))
    return program


@pytest.mark.parametrize("build", [x64_program, arm64_program], ids=["x64", "arm64"])
def test_synthetic_walks_equal_the_true_call_chain(build: Callable[[], SyntheticProgram]) -> None:
    """Every unwind format the samples lack, checked at every instruction."""
    program = build()
    lookup = program.table().lookup
    stops = 0

    def check(stop: Stop) -> None:
        nonlocal stops
        stops += 1
        walk, reason = program.walk(stop, lookup)
        got = tuple(frame.pc for frame in walk.frames[1:])
        assert got == stop.chain and walk.complete, (
            f"at 0x{stop.pc:x}: want {[hex(a) for a in stop.chain]}, "
            f"got {[hex(a) for a in got]} ({reason})"
        )

    program.emulator.call(program.address(next(iter(program.starts))), [], check)
    assert stops > 300


# Fallback -----------------------------------------------------------------------


def corrupt(entry: FunctionEntry, machine: Machine) -> FunctionEntry:
    """The same range with unwind data that cannot be used (a bad version / flag 3)."""
    if machine == Machine.AMD64:
        # The DOS header's "MZ": version 5, which no unwind info has.
        return FunctionEntry(entry.image_base, entry.begin_va, entry.end_va, 0)
    return FunctionEntry(entry.image_base, entry.begin_va, entry.end_va, entry.unwind_word | 3)


@pytest.mark.parametrize("depth", [0, 1], ids=["own-entry", "caller-entry"])
def test_corrupt_unwind_data_falls_back_to_a_scan_holding_every_return_address(
    baseline: SampleProcess, depth: int
) -> None:
    """With the entry of the stopped function (or of its caller) corrupted, the walk
    stops there, is not complete, and its scan still holds every return address (on
    ARM64 also the one only LR holds, at a function's first instructions)."""
    sample = baseline
    table, machine = sample.table, sample.machine
    fell_back = 0

    def check(stop: Stop) -> None:
        nonlocal fell_back
        if depth == 0:
            bad_begin = table.lookup(stop.pc)
        else:
            bad_begin = table.lookup(stop.chain[0] - 1) if len(stop.chain) > 1 else None
        if bad_begin is None:
            return
        begin = bad_begin.begin_va

        def lookup(pc: int) -> FunctionEntry | None:
            entry = table.lookup(pc)
            return corrupt(entry, machine) if entry and entry.begin_va == begin else entry

        walk, _ = sample.walk(stop, lookup)
        true = set(stop.chain[:-1])
        assert true <= set(walk.return_addresses()), f"at 0x{stop.pc:x}"
        assert all(sample.emulator.is_code(word) for word in walk.scanned)
        if not walk.complete:
            fell_back += 1
            # The frames before the corrupt entry are still the true ones.
            found = tuple(frame.pc for frame in walk.frames[1:])
            assert found == stop.chain[: len(found)]

    run_workload(sample, check, full=False)
    assert fell_back > 1000


def test_unknown_code_falls_back_conservatively(baseline: SampleProcess) -> None:
    """Without any unwind data the leaf rule and the scan still find every return
    address, at every instruction."""
    walks = incomplete = 0

    def check(stop: Stop) -> None:
        nonlocal walks, incomplete
        walk, _ = baseline.walk(stop, lambda pc: None)
        assert set(stop.chain[:-1]) <= set(walk.return_addresses()), f"at 0x{stop.pc:x}"
        walks += 1
        incomplete += not walk.complete

    run_workload(baseline, check, full=False)
    assert incomplete > walks // 2


# Hostile stacks and unwind data -------------------------------------------------

STACK = 0x7000000
TOP = STACK + 0x10000
CODE = 0x400000
CODE_END = CODE + 0x1000
UNWIND = 0x500000


def is_fake_code(va: int) -> bool:
    return CODE <= va < CODE_END


def hostile_walk(
    machine: Machine,
    memory: FakeMemory,
    lookup: Lookup,
    registers: dict[str, int],
    *,
    stack_top: int = TOP,
    stop_at: int | None = None,
    max_frames: int = 1024,
) -> StackWalk:
    """A walk over fake memory, which must end within two seconds."""
    started = time.perf_counter()
    walk = walk_stack(
        machine, memory.read, lookup, registers, stack_top,
        is_code=is_fake_code, stop_at=stop_at, max_frames=max_frames,
    )  # fmt: skip
    assert time.perf_counter() - started < 2.0
    return walk


X64_NAMES = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
             "r13", "r14", "r15")  # fmt: skip


def registers_for(machine: Machine, pc: int, sp: int, fp: int = 0, lr: int = 0) -> dict[str, int]:
    """Registers by the walker's names: every x64 integer register holds ``fp``."""
    if machine == Machine.AMD64:
        return {"rip": pc, "rsp": sp, **dict.fromkeys(X64_NAMES, fp)}
    return {"pc": pc, "sp": sp, "lr": lr, "fp": fp}


MACHINES = [Machine.AMD64, Machine.ARM64]


def random_unwind_record(rng: random.Random, machine: Machine) -> tuple[bytes, int | None]:
    """A plausible but random unwind record for a 0x100-byte function: (bytes to place,
    or an ARM64 packed word to use instead)."""
    if machine == Machine.AMD64:
        slots: list[int] = []
        operations = [PUSH, PUSH, PUSH, ALLOC_LARGE, ALLOC_SMALL, SET_FPREG, SAVE_NONVOL,
                      SAVE_NONVOL_FAR, SAVE_XMM128, SAVE_XMM128_FAR, 10]  # fmt: skip
        for _ in range(rng.randrange(6)):
            operation = rng.choice(operations) if rng.random() < 0.97 else rng.randrange(16)
            info = rng.randrange(2) if operation == ALLOC_LARGE else rng.randrange(16)
            extra = {1: 1 + info, 4: 1, 5: 2, 8: 1, 9: 2}.get(operation, 0)
            slots.append(rng.randrange(24) | (operation | info << 4) << 8)
            slots.extend(rng.randrange(0x40) for _ in range(extra))
        header = bytes(
            [
                rng.choice([1] * 8 + [2, 3]) | (4 if rng.random() < 0.1 else 0) << 3,
                rng.randrange(0, 24),
                len(slots),
                rng.randrange(256),
            ]
        )
        slots_bytes = struct.pack(f"<{len(slots) + 1}H", *slots, 0)
        return header + slots_bytes + rng.randbytes(12), None
    if rng.random() < 0.4:
        packed = rng.getrandbits(32) & ~(0x7FF << 2) | (0x100 // 4) << 2
        return b"", packed & ~3 | rng.choice([1, 1, 2, 3])
    codes = bytes(
        rng.choice([rng.randrange(0x20), 0x20 | rng.randrange(8), 0x80 | rng.randrange(8),
                    0xC8 | rng.randrange(8), rng.randrange(0xC0, 0xE8), END, SAVE_NEXT])
        for _ in range(rng.randrange(1, 16))
    )  # fmt: skip
    scopes = [
        (4 * rng.randrange(64), rng.randrange(len(codes) + 2)) for _ in range(rng.randrange(3))
    ]
    if rng.random() < 0.3:
        return arm64_xdata(0x100, codes, single_epilog_index=rng.randrange(len(codes) + 2)), None
    return arm64_xdata(0x100, codes, epilogs=scopes), None


@pytest.mark.parametrize("machine", MACHINES, ids=["x64", "arm64"])
def test_random_stacks_and_unwind_data_end_quickly_with_a_sane_walk(machine: Machine) -> None:
    """Fuzzed stacks, registers and unwind records: no exception, bounded frames whose
    sp only grows inside the stack, and a scan of code addresses only."""
    rng = random.Random(0x5EED)
    align = 1 if machine == Machine.AMD64 else 4
    deepest = 0
    size = 0x4000
    for _round in range(200):
        memory = FakeMemory()
        memory.add(CODE, rng.randbytes(0x1000))  # junk code: epilogue checks read it
        stack = bytearray(rng.randbytes(size))
        for _ in range(size // 16):  # plenty of plausible return addresses and stack pointers
            at = rng.randrange(0, size - 8) & ~7
            value = rng.choice([CODE + rng.randrange(0x1000), STACK + rng.randrange(size)])
            stack[at : at + 8] = struct.pack("<Q", value & ~(align - 1))
        memory.add(STACK, bytes(stack))
        records = bytearray(0x1000)
        entries = []
        for index in range(15):
            record, packed = random_unwind_record(rng, machine)
            records[0x100 * index : 0x100 * index + len(record)] = record[:0x100]
            word = packed if packed is not None else 0x100 * (index + 1)
            begin = CODE + 0x100 * index
            entries.append(FunctionEntry(UNWIND - 0x100, begin, begin + 0x100, word))
        memory.add(UNWIND, bytes(records))
        table = FunctionTable(machine, entries)
        sp = STACK + (rng.randrange(0, size) & ~15)
        registers = registers_for(
            machine,
            CODE + (rng.randrange(0x1000) & ~(align - 1)),
            sp,
            fp=rng.choice([sp + 16 * rng.randrange(64), rng.getrandbits(64)]),
            lr=CODE + (rng.randrange(0x1000) & ~(align - 1)),
        )
        max_frames = rng.choice([4, 1024])
        walk = hostile_walk(
            machine, memory, table.lookup, registers, stack_top=STACK + size, max_frames=max_frames
        )
        assert len(walk.frames) <= max_frames
        sps = [frame.sp for frame in walk.frames]
        assert all(STACK <= s <= STACK + size for s in sps)
        assert all(a < b for a, b in itertools.pairwise(sps[1:]))
        assert all(is_fake_code(word) for word in walk.scanned)
        assert walk.complete is False or walk.scanned == ()
        deepest = max(deepest, len(walk.frames))
    assert deepest >= 3  # the fuzz does get past the first frames


@pytest.mark.parametrize("machine", MACHINES, ids=["x64", "arm64"])
def test_a_stack_of_return_addresses_stops_at_max_frames(machine: Machine) -> None:
    """A stack that is nothing but return addresses (a loop) ends at ``max_frames``."""
    memory = FakeMemory()
    memory.add(CODE, 0x1000)
    memory.add(STACK, struct.pack("<Q", CODE + 0x10) * (0x10000 // 8))
    # x64: no entry, so each frame is a leaf returning to [rsp]. ARM64: each frame
    # keeps its LR at [sp] and pops 16 bytes (packed, CR 1, a 16-byte frame).
    entry = FunctionEntry(0, CODE, CODE + 0x100, arm64_packed(0x100, chain=1, frame_size=16))

    def lookup(pc: int) -> FunctionEntry | None:
        return None if machine == Machine.AMD64 else entry

    registers = registers_for(machine, CODE + 0x40, STACK, lr=CODE + 0x10)
    walk = hostile_walk(machine, memory, lookup, registers, max_frames=100)
    assert len(walk.frames) == 100 and not walk.complete
    assert walk.scanned.count(CODE + 0x10) >= 0x10000 // 8 - 100 * 2


@pytest.mark.parametrize("machine", MACHINES, ids=["x64", "arm64"])
def test_sp_outside_any_memory(machine: Machine) -> None:
    """An sp in unmapped memory, or above the stack top: a conservative, empty result."""
    memory = FakeMemory()
    memory.add(CODE, 0x1000)
    for sp, top in [(0x9000000, 0x9010000), (TOP + 0x100, TOP), (0x1000, 1 << 47)]:
        registers = registers_for(machine, CODE, sp, lr=0x1234)
        walk = hostile_walk(machine, memory, lambda pc: None, registers, stack_top=top)
        assert not walk.complete
        assert walk.scanned == ()
        assert len(walk.frames) <= 2


def test_scan_is_bounded() -> None:
    """A stack pointer far below the stack top reads at most MAX_SCAN_BYTES."""
    reads: list[int] = []

    def read(va: int, size: int) -> bytes:
        reads.append(size)
        return b"\x01" * size  # no zero return address: the leaf rule finds no end

    started = time.perf_counter()
    walk = walk_stack(
        Machine.AMD64,
        read,
        lambda pc: None,
        {"rip": 0, "rsp": 0x10000},
        1 << 47,
        is_code=lambda va: False,
    )
    assert time.perf_counter() - started < 5
    assert not walk.complete and walk.scanned == ()
    assert sum(reads) <= MAX_SCAN_BYTES + 64


def x64_fixture(info: bytes, stack_words: list[int]) -> tuple[FakeMemory, FunctionTable]:
    memory = FakeMemory()
    memory.add(CODE, b"\x90" * 0x1000)  # nops: no epilogue at any pc
    memory.add(UNWIND, info.ljust(0x100, b"\0"))
    memory.add(STACK, 0x10000)
    memory.write_u64(STACK, *stack_words)
    entry = FunctionEntry(UNWIND - 0x10, CODE, CODE + 0x100, 0x10)
    return memory, FunctionTable(Machine.AMD64, [entry])


@pytest.mark.parametrize(
    "info",
    [
        x64_unwind_info(4, [(4, ALLOC_LARGE, 1, 0xFFF8, 0xFFFF)]),  # 4 GiB frame
        x64_unwind_info(4, [(4, ALLOC_LARGE, 2, 0, 0)]),  # no such form
        x64_unwind_info(1, [(1, 11, 0)]),  # unknown operation
        x64_unwind_info(1, [(1, EPILOG, 0)]),  # UWOP_EPILOG in version 1
        x64_unwind_info(4, [(4, SAVE_NONVOL, RBX)]),  # truncated: the operand slot is missing
        x64_unwind_info(0, [], chained=(0x100 - 0x10, 0x200 - 0x10, 0x10)),  # chained to itself
        x64_unwind_info(2, [(2, SET_FPREG, 0)]),  # SET_FPREG without a frame register
        bytes([3, 0, 0, 0, 0, 0, 0, 0]),  # version 3
    ],
    ids=["huge-alloc", "alloc-form", "unknown-op", "v1-epilog", "truncated", "chain-loop",
         "no-frame-register", "version"],
)  # fmt: skip
def test_x64_bad_unwind_info_falls_back(info: bytes) -> None:
    """Unusable unwind info never raises: the walk scans from the thread's sp."""
    memory, table = x64_fixture(info, [CODE + 0x20, CODE + 0x30, 0])
    walk = hostile_walk(
        Machine.AMD64, memory, table.lookup, registers_for(Machine.AMD64, CODE + 0x10, STACK)
    )
    assert not walk.complete
    assert walk.frames == (Frame(CODE + 0x10, STACK, "registers"),)
    assert walk.scanned == (CODE + 0x20, CODE + 0x30)


@pytest.mark.parametrize(
    "codes",
    [
        bytes([0xE0, 0xFF, 0xFF, 0xFF, END]),  # alloc_l of 256 MiB
        bytes([SET_FP, END]),  # sp = fp = 0: below the stack
        bytes([0xDF, 0x00, END]),  # a code this unwinder does not know
        bytes([0xE8, END]),  # MSFT_OP_TRAP_FRAME: not modelled
        bytes([NOP, NOP, NOP, 0xE0]),  # alloc_l cut off by the end of the codes
        bytes([0xE7, 0x00, 0xC0, END]),  # save_any_reg with the reserved kind 3
    ],
    ids=["huge-alloc", "fp-below", "unknown", "trap-frame", "truncated", "any-reg-kind"],
)
def test_arm64_bad_unwind_codes_fall_back(codes: bytes) -> None:
    memory = FakeMemory()
    memory.add(CODE, 0x1000)
    memory.add(UNWIND, arm64_xdata(0x100, codes).ljust(0x100, b"\0"))
    memory.add(STACK, 0x10000)
    memory.write_u64(STACK, CODE + 0x20, 0)
    entry = FunctionEntry(UNWIND, CODE, CODE + 0x100, 0)
    registers = registers_for(Machine.ARM64, CODE + 0x40, STACK, lr=CODE + 0x30, fp=0)
    walk = hostile_walk(Machine.ARM64, memory, lambda pc: entry, registers)
    assert not walk.complete
    assert walk.frames == (Frame(CODE + 0x40, STACK, "registers"),)
    # LR first: at a leaf or early in a prolog it may be the only copy.
    assert walk.scanned == (CODE + 0x30, CODE + 0x20)


# Single formats, checked by hand ------------------------------------------------


def test_x64_machine_frame() -> None:
    """UWOP_PUSH_MACHFRAME (with an error code): rip and rsp come from the trap frame,
    and the interrupted rip is no return address (the next lookup uses it as is)."""
    info = x64_unwind_info(1, [(1, PUSH, RBX), (0, 10, 1)])
    memory, table = x64_fixture(info, [0x1111, 0xE, CODE + 0x200, 0x33, 0x246, STACK + 0x80, 0x2B])
    memory.write_u64(STACK + 0x80, CODE + 0x300, 0)
    seen: list[int] = []

    def lookup(pc: int) -> FunctionEntry | None:
        seen.append(pc)
        return table.lookup(pc)

    registers = registers_for(Machine.AMD64, CODE + 0x10, STACK)
    walk = hostile_walk(Machine.AMD64, memory, lookup, registers, stack_top=STACK + 0x90)
    assert [(f.pc, f.sp) for f in walk.frames] == [
        (CODE + 0x10, STACK),
        (CODE + 0x200, STACK + 0x80),
        (CODE + 0x300, STACK + 0x88),
    ]
    # The machine frame's rip is looked up as is; a return address one byte back.
    assert seen[:3] == [CODE + 0x10, CODE + 0x200, CODE + 0x300 - 1]


def test_arm64_machine_frame() -> None:
    """MSFT_OP_MACHINE_FRAME: pc and sp from the frame the trap pushed, not from LR."""
    memory = FakeMemory()
    memory.add(CODE, 0x1000)
    memory.add(UNWIND, arm64_xdata(0x100, bytes([0xE9, END])).ljust(0x100, b"\0"))
    memory.add(STACK, 0x10000)
    memory.write_u64(STACK, STACK + 0x40, CODE + 0x200)
    entry = FunctionEntry(UNWIND, CODE, CODE + 0x100, 0)
    registers = registers_for(Machine.ARM64, CODE + 0x10, STACK, lr=CODE + 0x900)
    walk = hostile_walk(
        Machine.ARM64, memory, lambda pc: entry if pc < CODE + 0x100 else None, registers,
        stack_top=STACK + 0x40,
    )  # fmt: skip
    assert [(f.pc, f.sp, f.how) for f in walk.frames[:2]] == [
        (CODE + 0x10, STACK, "registers"),
        (CODE + 0x200, STACK + 0x40, "unwind"),
    ]
    assert walk.complete  # the stack top is reached


def test_without_a_sentinel_a_zero_return_address_ends_the_walk() -> None:
    memory, table = x64_fixture(x64_unwind_info(1, [(1, PUSH, RBX)]), [7, CODE + 0x200, 0])
    registers = registers_for(Machine.AMD64, CODE + 0x10, STACK)
    walk = hostile_walk(Machine.AMD64, memory, table.lookup, registers)
    assert walk.complete and walk.scanned == ()
    assert [(f.pc, f.sp, f.how) for f in walk.frames] == [
        (CODE + 0x10, STACK, "registers"),
        (CODE + 0x200, STACK + 16, "unwind"),
    ]


def test_x64_epilogue_is_emulated_not_unwound() -> None:
    """At add rsp / the pops / the ret of an epilogue the codes no longer describe the
    stack; the unwinder runs the rest of the epilogue forward instead."""
    code = bytes.fromhex("534883ec20") + b"\x90" * 3 + bytes.fromhex("4883c4205bc3")
    info = x64_unwind_info(5, [(5, ALLOC_SMALL, 3), (1, PUSH, RBX)])
    memory, table = x64_fixture(info, [])
    memory.write(CODE, code)
    ret = CODE + 0x500
    frames = {  # pc offset: sp at that pc (relative to the caller's sp after the return)
        0: -8, 1: -16, 5: -48, 8: -48, 12: -16, 13: -8,
    }  # fmt: skip
    caller_sp = STACK + 0x100
    for offset, delta in frames.items():
        sp = caller_sp + delta
        memory.write_u64(caller_sp - 8, ret)
        memory.write_u64(caller_sp - 16, 0xB0B)
        walk = hostile_walk(
            Machine.AMD64, memory, table.lookup, registers_for(Machine.AMD64, CODE + offset, sp),
            stop_at=ret,
        )  # fmt: skip
        assert walk.complete and [(f.pc, f.sp) for f in walk.frames[1:]] == [(ret, caller_sp)], (
            f"pc offset {offset}"
        )


def test_function_table_agrees_with_the_image_model(sample: SampleProcess) -> None:
    """FunctionTable.from_pdata gives every .pdata entry's range as hpatch.image does."""
    base = sample.image.identity.image_base
    expected = {(base + e.begin_rva, base + e.end_rva) for e in sample.image.unwind_entries}
    assert {(e.begin_va, e.end_va) for e in sample.table.entries} == expected
    for begin, end in expected:
        for pc in (begin, end - 1):
            found = sample.table.lookup(pc)
            assert found is not None and found.begin_va == begin
    assert sample.table.lookup(base) is None


def test_x64_indirect_entry_is_followed() -> None:
    """An entry whose unwind word has bit 0 set stands for the RUNTIME_FUNCTION it names:
    the walk unwinds with that function's unwind info (sub rsp, 0x20)."""
    base = CODE - 0x10000
    memory = FakeMemory()
    memory.add(CODE, b"\x90" * 0x1000)
    named = struct.pack("<III", CODE - base, CODE + 0x100 - base, UNWIND + 0x40 - base)
    info = x64_unwind_info(4, [(4, ALLOC_SMALL, 3)])
    memory.add(UNWIND, named.ljust(0x40, b"\0") + info.ljust(0xC0, b"\0"))
    memory.add(STACK, 0x10000)
    ret = CODE + 0x500
    memory.write_u64(STACK + 0x20, ret)
    indirect = FunctionEntry(base, CODE + 0x80, CODE + 0x90, (UNWIND - base) | 1)
    table = FunctionTable(Machine.AMD64, [indirect])
    walk = hostile_walk(
        Machine.AMD64, memory, table.lookup, registers_for(Machine.AMD64, CODE + 0x88, STACK),
        stop_at=ret,
    )  # fmt: skip
    assert walk.complete
    assert [(f.pc, f.sp, f.how) for f in walk.frames] == [
        (CODE + 0x88, STACK, "registers"),
        (ret, STACK + 0x28, "unwind"),
    ]
    assert lookup_in([table])(CODE + 0x90) is None


def test_return_addresses() -> None:
    walk = StackWalk(
        (Frame(1, 0, "registers"), Frame(2, 8, "unwind"), Frame(3, 16, "leaf")), (5, 6), False
    )
    assert walk.return_addresses() == (2, 3, 5, 6)


def test_registers_without_pc_or_sp_are_a_caller_error() -> None:
    with pytest.raises(ValueError, match="rip or rsp"):
        walk_stack(Machine.AMD64, FakeMemory().read, lambda pc: None, {"rip": 1}, 0, is_code=bool)
