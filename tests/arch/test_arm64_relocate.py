"""The ARM64 relocator follows each ADRP's page along the control flow: every place
that completes it is rebound, and anything else that reads it refuses the copy."""

from __future__ import annotations

import struct

import keystone
import pytest

from hpatch.arch import Machine, arch_for
from hpatch.arch.arm64_relocate import arm64_code_fixups
from hpatch.arch.relocate import CodeFixup, RelocationError
from hpatch.arch.rewrite import Fixup

KS = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
CODE_RVA = 0x6000
DATA_PAGE = 0xD000


def adrp(register: int, rva: int, page: int = DATA_PAGE) -> int:
    """ADRP x<register>, page (built by hand: the immediate is relative to ``rva``)."""
    pages = (page - (rva & ~0xFFF)) >> 12
    return 0x90000000 | (pages & 3) << 29 | ((pages >> 2) & 0x7FFFF) << 5 | register


def assemble(lines: list[str | int]) -> bytes:
    """Words for ``lines``: assembly text (branch targets are absolute, ``{n}`` is the
    RVA of line n), or a word given as an int."""
    words = []
    for index, line in enumerate(lines):
        if isinstance(line, int):
            words.append(line)
            continue
        text = line.format(*(CODE_RVA + 4 * n for n in range(len(lines))))
        encoding, _ = KS.asm(text, CODE_RVA + 4 * index)
        assert encoding is not None and len(encoding) == 4, line
        words.append(struct.unpack("<I", bytes(encoding))[0])
    return struct.pack(f"<{len(words)}I", *words)


def fixups(lines: list[str | int]) -> list[CodeFixup]:
    code = assemble(lines)
    end = CODE_RVA + len(code)
    return arm64_code_fixups(code, CODE_RVA, [(CODE_RVA, end)], (CODE_RVA, end), [], 0)


def completions(lines: list[str | int]) -> dict[int, int]:
    """Line -> the address it completes, for every page offset the relocator rebinds."""
    return {
        (f.field_rva - CODE_RVA) // 4: f.target_rva
        for f in fixups(lines)
        if f.kind in (Fixup.ARM64_PAGEOFFSET_12A, Fixup.ARM64_PAGEOFFSET_12L)
    }


# Each overwrites x8 with something else. Capstone reports the destination of a shift
# or extend (a bitfield move) as read too, which used to refuse the page as "used".
OVERWRITES = [
    "asr w8, w27, #1",
    "lsl x8, x21, #1",
    "sxtw x8, w20",
    "ubfx x8, x9, #3, #5",
    "sbfx x8, x9, #0, #8",
    "movz x8, #1",
    "cset x8, eq",
    "umov w8, v0.h[0]",
    "fmov x8, d0",
    "fcvtzs x8, d0",
    "ldp x8, x9, [sp]",
    "ldr x8, [sp], #16",
    "mrs x8, tpidr_el0",
]


@pytest.mark.parametrize("overwrite", OVERWRITES)
def test_a_page_overwritten_is_followed_no_further(overwrite: str) -> None:
    lines: list[str | int] = [
        adrp(8, CODE_RVA),
        "ldr w9, [x8, #0x20]",
        overwrite,
        "ldr w10, [x8, #0x30]",  # x8 is no page here: its offset stays as it is
        "ret",
    ]
    assert completions(lines) == {1: DATA_PAGE + 0x20}


def test_a_page_in_a_callee_saved_register_is_completed_after_calls_and_around_a_loop() -> None:
    lines: list[str | int] = [
        adrp(23, CODE_RVA),
        "ldrb w8, [x23, #4]",
        "bl #0x1000",
        "ldrb w8, [x23, #4]",
        "cbnz w8, {1}",
        "lsl x23, x21, #1",
        "ldr x0, [x23]",  # a plain load: x23 was overwritten
        "ret",
    ]
    assert completions(lines) == {1: DATA_PAGE + 4, 3: DATA_PAGE + 4}


def test_a_page_copied_is_completed_through_the_copy() -> None:
    lines: list[str | int] = [
        adrp(8, CODE_RVA),
        "mov x20, x8",
        "bl #0x1000",
        "add x0, x20, #0x48",
        "ret",
    ]
    assert completions(lines) == {3: DATA_PAGE + 0x48}


@pytest.mark.parametrize(
    ("use", "how"),
    [
        # Capstone takes these to write x8, not read it: the page would have been
        # dropped and a later completion left pointing into the new build's layout.
        ("cmp x8, #0", "used in a way"),
        ("tst x8, #1", "used in a way"),
        ("cmn x8, x9", "used in a way"),
        ("adds x9, x8, #1", "used in a way"),
        ("add x9, x8, x10", "used in a way"),
        ("bfi x8, x9, #0, #8", "used in a way"),  # keeps bits of the page
        ("ldr x9, [x8, x10]", "used in a way"),
        ("ldr x9, [x8, #0x10]!", "used in a way"),  # a completion that moves the base
        ("stp x8, x9, [sp]", "used in a way"),  # spilled: reloaded out of sight
        ("str x8, [x8, #0x10]", "stored to memory"),  # a completion that stores the page
        ("cbz x8, {4}", "used in a way"),
        ("ldaxr x9, [x8]", "used in a way"),
        ("svc #0", "does not model"),
    ],
)
def test_a_page_read_other_than_by_its_completions_is_refused(use: str, how: str) -> None:
    lines: list[str | int] = [adrp(8, CODE_RVA), use, "ldr x0, [x8, #0x10]", "ret", "ret"]
    with pytest.raises(RelocationError, match=f"0x6000 .*{how}.* at 0x6004"):
        fixups(lines)


def test_a_completion_reached_by_another_value_on_another_path_is_refused() -> None:
    # The page reaches the load from one side only: rewriting its offset would break
    # the other side, where x8 is an argument.
    lines: list[str | int] = [
        "mov x8, x1",
        "cbz x0, {3}",
        adrp(8, CODE_RVA + 8),
        "ldr x0, [x8, #0x10]",
        "ret",
    ]
    with pytest.raises(RelocationError, match="0x600c completes the page set at 0x6008 on one"):
        fixups(lines)


def test_two_adrps_of_one_page_may_meet_at_their_completion() -> None:
    lines: list[str | int] = [
        "cbz x0, {3}",
        adrp(8, CODE_RVA + 4),
        "b {4}",
        adrp(8, CODE_RVA + 12),
        "ldr x0, [x8, #0x10]",
        "ret",
    ]
    assert completions(lines) == {4: DATA_PAGE + 0x10}
    groups = {f.page_group for f in fixups(lines) if f.page_group >= 0}
    assert groups == {CODE_RVA + 4, CODE_RVA + 12}  # named by the ADRP's RVA


def test_a_page_live_in_any_register_at_a_jump_out_of_the_code_is_marked() -> None:
    # Another part of the same function may complete x19 where the jump lands.
    lines: list[str | int] = [adrp(19, CODE_RVA), "ldr x0, [x19, #0x10]", "b #0x9000"]
    assert {f.passed_on for f in fixups(lines) if f.page_group >= 0} == {CODE_RVA + 8}


def test_a_page_left_in_x8_at_a_call_is_marked() -> None:
    # x8 carries the address of a result returned in memory.
    lines: list[str | int] = [adrp(8, CODE_RVA), "ldr w0, [x8, #0x10]", "bl #0x9000", "ret"]
    assert {f.passed_on for f in fixups(lines) if f.page_group >= 0} == {CODE_RVA + 8}


def test_the_diff_sees_no_completion_the_control_flow_rules_out() -> None:
    """The load past the ADRP in address order is reached only from the path where
    x22 is the first argument: the fingerprint follows the flow as the relocator
    does (where the two would part, the builder takes the relocator's answer:
    tests/package/test_fingerprint_pages.py)."""
    lines: list[str | int] = [
        "mov x22, x0",
        "cbz x1, {5}",
        adrp(22, CODE_RVA + 8),
        "ldrb w8, [x22, #4]",
        "ret",
        "ldr x0, [x22]",
        "ret",
    ]
    code = assemble(lines)
    end = CODE_RVA + len(code)
    normalised = arch_for(Machine.ARM64).normalise(code, CODE_RVA, (CODE_RVA, end), b"", 0)
    seen = {r.site_rva: r.target_rva for r in normalised.references}
    assert seen == {CODE_RVA + 8: DATA_PAGE + 4, CODE_RVA + 12: DATA_PAGE + 4}
    assert completions(lines) == {3: DATA_PAGE + 4}
