"""Translation validation of an ARM64 function in parts: an ADRP's page followed into
the part that completes it, and code that runs on past the end of its last part."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import cast

import keystone
import pytest

from hpatch.arch import Arch, Machine, arch_for
from hpatch.image import Evidence, Fragment, Function
from hpatch.package.model import NO_RVA, FunctionStatus, Part, PatchFunction
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.model import Outcome
from hpatch.verify.session import Session
from hpatch.verify.translation import TranslationValidator

KS = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
BASE = 0x1_8000_0000
FUNCTION_RVA = 0x6000
#: Where the package's copy of the function lies (an RVA of the patched old image).
COPY_RVA = 0x20000
NEW_DATA = 0xDE24  # what the function's ADRP and ADD name in the new build
OLD_DATA = 0xEE30  # the same object in the old image: another page, another offset


def adrp(register: int, rva: int, target: int) -> int:
    """ADRP x<register>, the page of ``target``, placed at ``rva``."""
    pages = ((target & ~0xFFF) - (rva & ~0xFFF)) >> 12
    return 0x90000000 | (pages & 3) << 29 | ((pages >> 2) & 0x7FFFF) << 5 | register


def assemble(lines: list[str | int], rva: int) -> bytes:
    words = []
    for index, line in enumerate(lines):
        if isinstance(line, int):
            words.append(line)
            continue
        encoding, _ = KS.asm(line, rva + 4 * index)
        assert encoding is not None and len(encoding) == 4, line
        words.append(struct.unpack("<I", bytes(encoding))[0])
    return struct.pack(f"<{len(words)}I", *words)


def code(rva: int, page_of: int, offset: int, last: str = "ret") -> bytes:
    """The function at ``rva``: an entry part that sets x21 to a page and returns or
    branches to its second part (16 bytes on), which completes the page."""
    return assemble(
        [
            adrp(21, rva, page_of),
            f"cbnz w0, #{rva + 16:#x}",
            "mov x0, #0",
            "ret",
            f"add x0, x21, #{offset:#x}",
            last,
        ],
        rva,
    )


@dataclass
class _Space:
    memory: dict[int, bytes]

    def read(self, va: int, size: int) -> bytes:
        for start, data in self.memory.items():
            if start <= va and va + size <= start + len(data):
                return data[va - start : va - start + size]
        return bytes(size)


@dataclass
class _Process:
    space: _Space


@dataclass
class _Image:
    function: Function
    memory: dict[int, bytes]
    arch: Arch = field(default_factory=lambda: arch_for(Machine.ARM64))

    def function_at(self, rva: int) -> Function | None:
        return self.function if self.function.contains(rva) else None

    def read(self, rva: int, size: int) -> bytes:
        return _Space(self.memory).read(BASE + rva, size)


@dataclass
class _Diff:
    new: _Image


@dataclass
class _Session:
    """The few things of a session translation validation asks for."""

    diff: _Diff
    new: _Process
    patched: _Process
    old_base: int = BASE
    new_base: int = BASE

    def copy_of(self, new_rva: int) -> int | None:
        if FUNCTION_RVA <= new_rva < FUNCTION_RVA + 24:
            return BASE + COPY_RVA + new_rva - FUNCTION_RVA
        return None


@dataclass
class _Counterparts:
    """Corresponding addresses: the function's copy, the data object and ``more``."""

    more: dict[int, int] = field(default_factory=dict)
    new_relocated: list[int] = field(default_factory=list)

    def check(self, patched_va: int, new_va: int) -> str | None:
        known = {BASE + NEW_DATA: BASE + OLD_DATA, **self.more}
        if known.get(new_va) == patched_va:
            return None
        return f"0x{patched_va:x} is not 0x{new_va:x}"

    def through_veneer(self, patched_va: int) -> int:
        return patched_va


def validate(
    patched: bytes, new: bytes, counterparts: _Counterparts | None = None
) -> tuple[Outcome, tuple[str, ...]]:
    # Two parts that touch: [0x6000, 0x6010) and the fragment [0x6010, 0x6018).
    function = Function(
        FUNCTION_RVA, 16, None, (Evidence.PDATA,), fragments=(Fragment(FUNCTION_RVA + 16, 8),)
    )
    new_memory = {BASE + FUNCTION_RVA: new}
    session = _Session(
        _Diff(_Image(function, new_memory)),
        _Process(_Space(new_memory)),
        _Process(_Space({BASE + COPY_RVA: patched})),
    )
    validator = TranslationValidator(
        cast(Session, session), cast(Counterparts, counterparts or _Counterparts())
    )
    carried = PatchFunction(
        FunctionStatus.ADDED,
        NO_RVA,
        0,
        FUNCTION_RVA,
        "f",
        (Part(0, 16, FUNCTION_RVA), Part(16, 8, FUNCTION_RVA + 16)),
    )
    outcome, mismatches = validator.validate(carried)
    return outcome, tuple(m.reason for m in mismatches)


NEW = code(FUNCTION_RVA, NEW_DATA, NEW_DATA & 0xFFF)


def test_a_page_completed_in_another_part_is_proven_when_bound_right() -> None:
    # The object moved to another page and another offset in it: the ADRP in the entry
    # part and the ADD in the fragment are both rebound, and only the address they
    # make together names the old object.
    patched = code(COPY_RVA, OLD_DATA, OLD_DATA & 0xFFF)
    assert validate(patched, NEW) == (Outcome.PASSED, ())


@pytest.mark.parametrize(
    "page_of, offset",
    [
        (OLD_DATA, NEW_DATA & 0xFFF),  # the completion keeps the new build's offset
        (OLD_DATA + 0x1000, OLD_DATA & 0xFFF),  # the ADRP names the next page
    ],
)
def test_a_page_completed_in_another_part_fails_when_bound_wrong(page_of: int, offset: int) -> None:
    outcome, reasons = validate(code(COPY_RVA, page_of, offset), NEW)
    assert outcome == Outcome.FAILED
    assert any(f"0x{BASE + NEW_DATA:x}" in reason for reason in reasons)


def test_code_that_runs_on_past_its_last_part_must_run_on_where_the_new_build_does() -> None:
    # The fragment ends without a return: the new build runs on into 0x6018, the
    # copy into whatever follows it in the region.
    new = code(FUNCTION_RVA, NEW_DATA, NEW_DATA & 0xFFF, last="mov x1, #0")
    patched = code(COPY_RVA, OLD_DATA, OLD_DATA & 0xFFF, last="mov x1, #0")
    outcome, reasons = validate(patched, new)
    assert outcome == Outcome.FAILED
    assert any("runs on past the end" in reason for reason in reasons)
    # Where what follows the copy is the counterpart of what follows the new code
    # (a jump there placed right after the copy), it passes.
    follows = _Counterparts({BASE + FUNCTION_RVA + 24: BASE + COPY_RVA + 24})
    assert validate(patched, new, follows) == (Outcome.PASSED, ())
