"""Architecture objects: ``arch_for(machine)`` is the only place that looks at the machine."""

from __future__ import annotations

from hpatch.arch.base import (
    Arch,
    Machine,
    NormalisedCode,
    Reference,
    RefKind,
    SiteColumns,
    SiteKind,
    UnwindEntry,
    machine_name,
)
from hpatch.errors import UnsupportedError


def arch_for(machine: int) -> Arch:
    """The Arch object for an IMAGE_FILE_MACHINE_* value; UnsupportedError otherwise."""
    if machine == Machine.AMD64:
        from hpatch.arch.x64 import X64

        return X64()
    if machine == Machine.ARM64:
        from hpatch.arch.arm64 import Arm64

        return Arm64()
    raise UnsupportedError(
        f"unsupported machine {machine_name(machine)}: hpatch handles AMD64 and ARM64"
    )


SUPPORTED_MACHINES = (Machine.AMD64, Machine.ARM64)

__all__ = [
    "SUPPORTED_MACHINES",
    "Arch",
    "Machine",
    "NormalisedCode",
    "RefKind",
    "Reference",
    "SiteColumns",
    "SiteKind",
    "UnwindEntry",
    "arch_for",
    "machine_name",
]
