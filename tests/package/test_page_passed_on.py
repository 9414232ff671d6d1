"""ARM64 ADRP pages that may be handed on beyond the code the package carries."""

from __future__ import annotations

import struct

import keystone
import pytest

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
    """Words for ``lines``: assembly text, or a word given as an int."""
    words = []
    for index, line in enumerate(lines):
        if isinstance(line, int):
            words.append(line)
            continue
        encoding, _ = KS.asm(line, CODE_RVA + 4 * index)
        assert encoding is not None and len(encoding) == 4, line
        words.append(struct.unpack("<I", bytes(encoding))[0])
    return struct.pack(f"<{len(words)}I", *words)


def fixups(lines: list[str | int]) -> list[CodeFixup]:
    code = assemble(lines)
    end = CODE_RVA + len(code)
    return arm64_code_fixups(code, CODE_RVA, [(CODE_RVA, end)], (CODE_RVA, end), [], 0)


def test_a_page_left_in_an_argument_register_at_a_call_is_marked() -> None:
    # As MSVC leaves it: the page is kept in a callee-saved register, and the copy in
    # x3 is still there when an import is called.
    lines: list[str | int] = [
        adrp(3, CODE_RVA),
        "mov x23, x3",
        "ldr x8, [x24, #0x1c8]",
        "blr x8",
        "ldr x8, [x23, #0x1c8]",
        "blr x8",
        "ret",
    ]
    found = fixups(lines)
    call = CODE_RVA + 12
    group = [f for f in found if f.page_group == CODE_RVA]
    assert {(f.field_rva, f.kind) for f in group} == {
        (CODE_RVA, Fixup.ARM64_PAGEBASE_REL21),
        (CODE_RVA + 16, Fixup.ARM64_PAGEOFFSET_12L),
    }
    assert all(f.passed_on == call and f.target_rva == DATA_PAGE + 0x1C8 for f in group)


@pytest.mark.parametrize(
    "clobber",
    [
        "mov x3, #0",  # overwritten before the call
        "ldr x3, [x3, #0x10]",  # completed in place
        "add x3, x3, #0x10",
    ],
)
def test_a_page_no_longer_held_at_the_call_is_not_marked(clobber: str) -> None:
    lines: list[str | int] = [adrp(3, CODE_RVA), "mov x23, x3", clobber, "blr x8"]
    lines += ["ldr x8, [x23, #0x1c8]", "ret"]
    found = fixups(lines)
    assert [f for f in found if f.page_group == CODE_RVA]
    assert all(f.passed_on == -1 for f in found)


def test_a_page_in_a_callee_saved_register_across_a_call_is_not_marked() -> None:
    lines: list[str | int] = [adrp(23, CODE_RVA), "blr x8", "ldr x0, [x23, #0x20]", "ret"]
    found = fixups(lines)
    assert {f.passed_on for f in found} == {-1}
    assert {f.target_rva for f in found if f.page_group == CODE_RVA} == {DATA_PAGE + 0x20}


def test_a_page_returned_is_marked_at_the_return() -> None:
    lines: list[str | int] = [adrp(1, CODE_RVA), "ldr x0, [x1, #0x40]", "ret"]
    found = fixups(lines)
    assert {f.passed_on for f in found if f.page_group == CODE_RVA} == {CODE_RVA + 8}


def test_a_page_passed_on_that_nothing_completes_is_refused() -> None:
    lines: list[str | int] = [adrp(4, CODE_RVA), "blr x8", "ret"]
    with pytest.raises(RelocationError, match=r"0x6000 may be passed on at 0x6004.*unknown"):
        fixups(lines)
