"""Short branches that leave the code, and the range-extension veneers that extend them:
x64 reports a rel8 branch it cannot rebind as a ShortBranch (or refuses the copy when
no one asks), ARM64 tells the branches a veneer can extend from the literal loads and
ADRs that share their fixup kinds, and each machine's veneer is the jump it reads back."""

from __future__ import annotations

import struct

import keystone
import pytest

from hpatch.arch import Machine, arch_for
from hpatch.arch.relocate import CodeFixup, RelocationError, ShortBranch
from hpatch.arch.rewrite import Fixup

from .memory import FakeImage

X64 = arch_for(Machine.AMD64)
ARM64 = arch_for(Machine.ARM64)
KS_X64 = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
KS_ARM64 = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
CODE_RVA = 0x6000


def x64_code(lines: list[str]) -> bytes:
    code = b""
    for line in lines:
        encoding, _ = KS_X64.asm(line, CODE_RVA + len(code))
        code += bytes(encoding)
    return code


def x64_fixups(code: bytes, short: list[ShortBranch] | None) -> list[CodeFixup]:
    end = CODE_RVA + len(code)
    return X64.code_fixups(code, CODE_RVA, [(CODE_RVA, end)], (CODE_RVA, end), [], 0, (), short)


def test_x64_rel8_branches_leaving_the_code_are_short_branches() -> None:
    # gcc's shape: a conditional tail call and a tail call to the function laid out
    # next, both rel8; the loop branch stays inside and needs nothing.
    code = bytes.fromhex("85c97410ffc975fa4883c428eb05")
    # test ecx,ecx; je +0x10; dec ecx; jne back; add rsp,0x28; jmp +5
    end = CODE_RVA + len(code)
    short: list[ShortBranch] = []
    assert x64_fixups(code, short) == []
    assert short == [
        ShortBranch(CODE_RVA + 3, 1, CODE_RVA + 4 + 0x10, CODE_RVA + 2),
        ShortBranch(end - 1, 1, end + 5, end - 2),
    ]
    with pytest.raises(RelocationError, match=r"8-bit branch at 0x6002 \(je 0x6014\) leaves"):
        x64_fixups(code, None)


def test_x64_rel32_branches_are_fixups_not_short_branches() -> None:
    code = x64_code(["jmp 0x7000", "jne 0x7010", "call 0x7020"])
    short: list[ShortBranch] = []
    found = x64_fixups(code, short)
    assert short == []
    assert [(f.kind, f.target_rva) for f in found] == [
        (Fixup.X64_REL32, 0x7000),
        (Fixup.X64_REL32, 0x7010),
        (Fixup.X64_REL32, 0x7020),
    ]


@pytest.mark.parametrize("machine", [Machine.AMD64, Machine.ARM64], ids=lambda m: m.name)
@pytest.mark.parametrize("distance", [0, 0x40, -0x40, 0x7FFFF0, -0x800000])
def test_a_veneer_reads_back_as_the_jump_its_fixup_binds(machine: Machine, distance: int) -> None:
    arch = arch_for(machine)
    code, at, kind = arch.veneer()
    va = 0x7FF6_0000_1000
    target = va + distance
    # What the fixup writes: the field reaching the target from the veneer.
    if kind == Fixup.X64_REL32:
        field = struct.pack("<i", target - (va + at + 4))
    else:
        assert kind == Fixup.ARM64_BRANCH26
        (word,) = struct.unpack("<I", code[at : at + 4])
        field = struct.pack("<I", word | ((target - va) // 4) & 0x3FFFFFF)
    bound = code[:at] + field + code[at + len(field) :]
    assert arch.veneer_target(bound, va) == target
    assert arch.disassemble(bound, va)[1].startswith(("jmp", "b "))


def test_other_jumps_are_no_veneers() -> None:
    assert X64.veneer_target(bytes.fromhex("e800000000"), 0x1000) is None  # call
    assert X64.veneer_target(bytes.fromhex("eb00"), 0x1000) is None  # jmp rel8
    assert X64.veneer_target(bytes.fromhex("e9000000"), 0x1000) is None  # cut short
    assert ARM64.veneer_target(struct.pack("<I", 0x94000000), 0x1000) is None  # BL
    assert ARM64.veneer_target(struct.pack("<I", 0x54000040), 0x1000) is None  # B.EQ


@pytest.mark.parametrize(
    ("source", "kind", "extends"),
    [
        ("b.ne #0x6800", Fixup.ARM64_BRANCH19, True),
        ("cbz x1, #0x6800", Fixup.ARM64_BRANCH19, True),
        ("cbnz w1, #0x6800", Fixup.ARM64_BRANCH19, True),
        ("tbz w1, #3, #0x6800", Fixup.ARM64_BRANCH14, True),
        ("tbnz x1, #40, #0x6800", Fixup.ARM64_BRANCH14, True),
        ("ldr x1, #0x6800", Fixup.ARM64_BRANCH19, False),  # a literal: data, not code
        ("adr x1, #0x6800", Fixup.ARM64_REL21, False),
        ("b #0x6800", Fixup.ARM64_BRANCH26, False),  # reaches the region already
    ],
)
def test_arm64_branches_a_veneer_extends(source: str, kind: Fixup, extends: bool) -> None:
    encoding, _ = KS_ARM64.asm(source, CODE_RVA)
    image = FakeImage()
    image.put(CODE_RVA, bytes(encoding))
    fixup = CodeFixup(CODE_RVA, kind, 0x6800, CODE_RVA)
    assert ARM64.extends_through_veneer(image.read, fixup) is extends
    assert X64.extends_through_veneer(image.read, fixup) is False
