"""Where the emulator's machine facts come from, so that no emu module branches on the
machine.

What the rest of hpatch shares (the RUNTIME_FUNCTION layout, whether an entry may be
indirect, a return and a trap instruction, the unwind format) is asked of the Arch,
made once per machine here. What only the emulator needs is chosen once per machine
in one table each: Unicorn's engine mode and register numbers with the Windows calling
convention in ``cpu.py`` (``Convention``, picked when the Cpu is made), and the stack
unwinder by the Arch's unwind format in ``unwind.py``.
"""

from __future__ import annotations

import functools

from hpatch.arch import Arch, Machine, arch_for


@functools.cache
def arch_of(machine: Machine) -> Arch:
    """The Arch of ``machine``, made once (making one opens capstone handles)."""
    return arch_for(machine)
