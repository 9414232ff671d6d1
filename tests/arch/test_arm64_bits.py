"""The ARM64 immediate fields, written once in hpatch.arch.arm64_bits, read as an
assembler writes them (keystone and capstone as oracles); and the machine facts the package format
asks each arch for."""

from __future__ import annotations

import random

import capstone
import keystone
import pytest

from hpatch.arch import SUPPORTED_MACHINES, Machine, arch_for
from hpatch.arch.arm64_bits import adr_immediate, ldst_scale, sign_extend, with_adr_immediate
from hpatch.arch.kinds import MACHINE_TAGS, Fixup, Redirect

ASSEMBLER = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
DISASSEMBLER = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


def word(text: str, address: int = 0) -> int:
    encoding, _ = ASSEMBLER.asm(text, address)
    return int.from_bytes(bytes(encoding), "little")


def test_sign_extend() -> None:
    assert sign_extend(0x1FFFFF, 21) == -1
    assert sign_extend(0x0FFFFF, 21) == 0x0FFFFF
    assert sign_extend(0x80000000, 32) == -(1 << 31)


@pytest.mark.parametrize("offset", [0, 4, 0x1234, -8, (1 << 20) - 4, -(1 << 20)])
def test_adr_immediate_reads_what_the_disassembler_reads(offset: int) -> None:
    """keystone misplaces ADR, so capstone is the oracle for it."""
    address = 1 << 21
    adr = with_adr_immediate(0x10000003, offset)  # adr x3, #offset
    (insn,) = DISASSEMBLER.disasm(adr.to_bytes(4, "little"), address)
    assert insn.mnemonic == "adr" and int(insn.op_str.split("#")[1], 0) == address + offset
    assert adr_immediate(adr) == offset


@pytest.mark.parametrize("pages", [0, 1, 0x7FF, -1, -0x800])
def test_adrp_pages_read_what_the_assembler_wrote(pages: int) -> None:
    address = 1 << 32
    assert adr_immediate(word(f"adrp x9, #{address + pages * 4096}", address)) == pages


def test_with_adr_immediate_sets_only_the_immediate() -> None:
    rng = random.Random(19)
    for _ in range(500):
        original = 0x90000000 | rng.getrandbits(5) | rng.getrandbits(21) << 5  # ADRP
        value = rng.randrange(-(1 << 20), 1 << 20)
        written = with_adr_immediate(original, value)
        assert adr_immediate(written) == value
        assert written & 0x9F00001F == original & 0x9F00001F


@pytest.mark.parametrize(
    ("text", "scale"),
    [
        ("ldrb w0, [x1, #1]", 0),
        ("ldrh w0, [x1, #2]", 1),
        ("ldr w0, [x1, #4]", 2),
        ("str x0, [x1, #8]", 3),
        ("ldr q0, [x1, #16]", 4),
        ("ldr d0, [x1, #8]", 3),
    ],
)
def test_ldst_scale_is_the_access_size(text: str, scale: int) -> None:
    assert ldst_scale(word(text)) == scale


@pytest.mark.parametrize("machine", SUPPORTED_MACHINES, ids=lambda m: m.name)
def test_every_machine_states_the_facts_the_package_format_asks_for(machine: Machine) -> None:
    arch = arch_for(machine)
    assert arch.rva_fixup.machine == machine and arch.rva_fixup.field_size == 4
    assert arch.pointer_fixup.machine == machine and arch.pointer_fixup.field_size == 8
    assert arch.data_by_page == (arch.instruction_alignment == 4)  # ADRP pages on ARM64
    assert MACHINE_TAGS[machine] == arch.rva_fixup & 0xFF00
    fields = [0, arch.pdata_unwind_field] + (
        [arch.pdata_end_field] if arch.pdata_end_field is not None else []
    )
    assert len(set(fields)) == len(fields)
    assert all(0 <= at <= arch.pdata_entry_size - 4 for at in fields)
    # the nearest redirect's reach, less a margin: a region within it is reached directly
    near = min(
        (r.reach for r in Redirect if r.machine == machine and r.reach is not None), default=0
    )
    assert 0 < arch.region_reach < near


def test_only_arm64_packs_unwind_data_into_the_table() -> None:
    assert arch_for(Machine.AMD64).pdata_unwind_is_rva(b"\x01\x00\x00\x00")
    arm64 = arch_for(Machine.ARM64)
    assert arm64.pdata_unwind_is_rva(b"\x00\x10\x00\x00")
    assert not arm64.pdata_unwind_is_rva(b"\x01\x00\x00\x00")
    assert arm64.rva_fixup == Fixup.ARM64_ADDR32NB
