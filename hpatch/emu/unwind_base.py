"""What the stack walk and the machines' unwinders share: a function table entry, reads
of emulated memory that stop the walk instead of raising, and the stop itself.

``unwind`` drives the walk; ``unwind_x64`` and ``unwind_arm64`` decode each machine's
unwind data. Both sides import these from here, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpatch.errors import HPatchError

_PAGE = 0x1000
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class FunctionEntry:
    """One RUNTIME_FUNCTION, in absolute addresses.

    ``image_base`` is the VA the RVAs in the unwind data count from (a module's base,
    or a patch region's anchor). ``unwind_word`` is, on x64, the UnwindInfoAddress RVA
    (bit 0 set: it points at another RUNTIME_FUNCTION); on ARM64 the raw second word
    (packed unwind data when its low two bits are non-zero, else the ``.xdata`` RVA).
    """

    image_base: int
    begin_va: int
    end_va: int
    unwind_word: int


ReadMemory = Callable[[int, int], bytes]
Lookup = Callable[[int], "FunctionEntry | None"]


class UnwindStop(Exception):
    """The unwind data or the stack cannot be followed any further; carries the reason.

    Internal to the walk: ``walk_stack`` turns it into a conservative scan.
    """


class Memory:
    """Reads of emulated memory for the unwinders: a short or failed read stops the walk."""

    def __init__(self, read: ReadMemory) -> None:
        self._read = read

    def read(self, va: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``va``; UnwindStop if they cannot be read."""
        if va < 0 or va + size > _MASK64 + 1:
            raise UnwindStop(f"read of {size} bytes at 0x{va:x} is outside the address space")
        try:
            data = self._read(va, size)
        except HPatchError as exc:
            raise UnwindStop(f"cannot read {size} bytes at 0x{va:x}: {exc}") from exc
        if len(data) != size:
            raise UnwindStop(f"short read of {size} bytes at 0x{va:x}")
        return bytes(data)

    def u64(self, va: int) -> int:
        """The little-endian 64-bit word at ``va``."""
        return int.from_bytes(self.read(va, 8), "little")

    def u32(self, va: int) -> int:
        """The little-endian 32-bit word at ``va``."""
        return int.from_bytes(self.read(va, 4), "little")

    def code(self, va: int, size: int) -> bytes:
        """Up to ``size`` bytes of code at ``va``, fewer where the mapping ends."""
        try:
            return self.read(va, size)
        except UnwindStop:
            pass
        # The code may end at a page boundary; what lies before it still decodes.
        available = min(size, _PAGE - (va % _PAGE))
        try:
            return self.read(va, available)
        except UnwindStop:
            return b""
