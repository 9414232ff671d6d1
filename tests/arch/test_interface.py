"""Every supported machine implements every architecture operation."""

from __future__ import annotations

import inspect

import pytest

from hpatch.arch import SUPPORTED_MACHINES, Arch, Machine, arch_for
from hpatch.errors import UnsupportedError

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
    with pytest.raises(UnsupportedError, match="0x014c"):
        arch_for(0x14C)
