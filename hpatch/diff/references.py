"""A function's references, packed: what the diff keeps of each function's operands.

A large image has hundreds of thousands of references; as a ``Reference`` tuple each,
with their ints, they took 40 MiB of the 20 MB OpenBLAS DLL's diff. Packed as rows of
(site u32, kind u8, target i64) in one ``bytes`` per function they take 13 bytes each.
The diff's own passes read the rows as plain tuples (``reference_rows``); everything
else sees a sequence of ``Reference``, made on demand.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import overload

from hpatch.arch import Reference
from hpatch.arch.base import REF_KINDS

#: One reference: its site, its kind's value and its target.
_ROW = struct.Struct("<IBq")
#: A row as the diff's passes read it: (site_rva, kind value, target_rva).
ReferenceRow = tuple[int, int, int]
_make = Reference._make


class ReferenceColumns(Sequence[Reference]):
    """An immutable sequence of ``Reference``, held as packed rows."""

    __slots__ = ("_packed",)

    def __init__(self, packed: bytes) -> None:
        if len(packed) % _ROW.size:
            raise ValueError("packed references must be whole rows")
        self._packed = packed

    @classmethod
    def pack(cls, references: Sequence[ReferenceRow]) -> Sequence[Reference]:
        """``references`` packed; a tuple of them as they are if a target does not fit
        the row (a relocated value far outside the image, say)."""
        pack = _ROW.pack
        try:
            return cls(b"".join([pack(*row) for row in references]))
        except struct.error:
            kinds = REF_KINDS
            return tuple(_make((site, kinds[kind], target)) for site, kind, target in references)

    def rows(self) -> Iterator[ReferenceRow]:
        """The references as (site_rva, kind value, target_rva) tuples, in order."""
        return _ROW.iter_unpack(self._packed)

    def __len__(self) -> int:
        return len(self._packed) // _ROW.size

    def __iter__(self) -> Iterator[Reference]:
        kinds = REF_KINDS
        for site, kind, target in _ROW.iter_unpack(self._packed):
            yield _make((site, kinds[kind], target))

    @overload
    def __getitem__(self, index: int) -> Reference: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Reference]: ...

    def __getitem__(self, index: int | slice) -> Reference | Sequence[Reference]:
        if isinstance(index, slice):
            return tuple(self)[index]
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("reference index out of range")
        site, kind, target = _ROW.unpack_from(self._packed, index * _ROW.size)
        return _make((site, REF_KINDS[kind], target))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReferenceColumns):
            return self._packed == other._packed
        if isinstance(other, tuple):
            return tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._packed)

    def __repr__(self) -> str:
        return f"ReferenceColumns({list(self)!r})"


def reference_rows(references: Sequence[Reference]) -> Iterator[ReferenceRow]:
    """(site_rva, kind, target_rva) for each of ``references``: the packed rows as they
    are, without making a ``Reference`` each (a plain tuple of them is read as it is)."""
    if isinstance(references, ReferenceColumns):
        return references.rows()
    return iter(references)


def as_reference(row: ReferenceRow) -> Reference:
    """The ``Reference`` a row stands for."""
    site, kind, target = row
    return _make((site, REF_KINDS[kind], target))
