"""Every supported machine implements every architecture operation."""

from __future__ import annotations

import inspect

import keystone
import pytest

from hpatch.arch import SUPPORTED_MACHINES, Arch, Machine, arch_for
from hpatch.errors import UnsupportedError

from .memory import FakeImage

OPERATIONS = sorted(
    name
    for name, member in inspect.getmembers(Arch)
    if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
)


@pytest.mark.parametrize("machine", SUPPORTED_MACHINES, ids=lambda m: m.name)
def test_machine_implements_every_operation(machine: Machine) -> None:
    arch = arch_for(machine)
    assert isinstance(arch, Arch)
    assert arch.machine == machine
    assert not getattr(type(arch), "__abstractmethods__", None)
    abstract = Arch.__abstractmethods__
    for name in OPERATIONS:
        implementation = getattr(type(arch), name)
        if name in abstract:
            assert implementation is not getattr(Arch, name), f"{machine.name} lacks {name}"
    for attribute in ("name", "instruction_alignment", "pdata_entry_size"):
        assert getattr(arch, attribute)


def test_other_machines_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match="unsupported machine I386: "):
        arch_for(0x14C)
    with pytest.raises(UnsupportedError, match=r"unsupported machine 0x1234 \(unknown\): "):
        arch_for(0x1234)


def test_dispatch_targets_read_clangs_compressed_arm64_tables() -> None:
    assembler = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    # cmp x8, #2 bounds three halfword entries at 0x8000, counting words from 0x1020.
    before, _ = assembler.asm("cmp x8, #2; b.hi #0x1040; adrp x9, #0x8000; add x9, x9, #0", 0x1000)
    after, _ = assembler.asm(
        "ldrh w11, [x9, x8, lsl #1]; add x10, x10, x11, lsl #2; br x10", 0x1014
    )
    adr = 0x10000000 | (0x10 >> 2) << 5 | 10  # adr x10, #0x1020 (keystone misplaces it)
    image = FakeImage()
    image.put(0x1000, bytes(before) + adr.to_bytes(4, "little") + bytes(after))
    image.put(0x8000, bytes([0, 0, 2, 0, 5, 0, 9, 0]))  # a fourth entry the bound excludes
    arm64 = arch_for(Machine.ARM64)
    assert arm64.dispatch_targets(image.read, 0x1000, 0x1020, 0x1100) == [0x1020, 0x1028, 0x1034]
    # Without the bounds check the table's length is unknown: nothing is claimed.
    image.put(0x1000, b"\x1f\x20\x03\xd5")  # nop in place of the cmp
    assert arm64.dispatch_targets(image.read, 0x1000, 0x1020, 0x1100) == []
    assert arch_for(Machine.AMD64).dispatch_targets(image.read, 0x1000, 0x1020, 0x1100) == []
