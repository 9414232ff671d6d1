"""The rewriting vocabulary shared by packages, the native core and the applier.

Fixup kinds are the PE/COFF relocation types (``IMAGE_REL_AMD64_*`` and
``IMAGE_REL_ARM64_*``) a package may carry; the value is ``machine_tag << 8 | coff_type``
so one number names both the machine and the COFF type. Redirect strategies are the
entry rewrites an applier can make; each overwrites a fixed span relative to the entry.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from hpatch._backend import core
from hpatch.arch.kinds import X64_REL32_BY_TRAILER, Fixup, Redirect
from hpatch.errors import ApplyError, FixupError

__all__ = [
    "X64_REL32_BY_TRAILER",
    "Fixup",
    "FixupRecord",
    "Redirect",
    "apply_fixups",
    "encode_redirect",
    "pack_fixups",
]


class FixupRecord(NamedTuple):
    """One fixup as the native core applies it: write the field at ``offset`` of the
    buffer so that it reaches ``target_va``. A tuple: batches hold a million of them."""

    offset: int
    kind: Fixup
    target_va: int


_RECORD = struct.Struct("<IHHQ")


def pack_fixups(records: Sequence[FixupRecord]) -> bytes:
    """The records as the native core reads them: 16-byte ``<IHHQ`` records
    (offset, kind, reserved 0, target_va).

    FixupError names the first record whose offset or target does not fit its field.
    """
    pack = _RECORD.pack
    try:
        return b"".join([pack(offset, kind, 0, target) for offset, kind, target in records])
    except struct.error:
        for index, (offset, kind, target) in enumerate(records):
            if not (0 <= offset <= 0xFFFFFFFF and 0 <= kind <= 0xFFFF and 0 <= target < 1 << 64):
                raise FixupError(
                    f"fixup {index}: offset, kind or target_va out of range",
                    index=index,
                    reason="offset, kind or target_va out of range",
                ) from None
        raise


def apply_fixups(
    buffer: bytearray | memoryview,
    buffer_va: int,
    image_base: int,
    records: Sequence[FixupRecord] | bytes | bytearray | memoryview,
) -> None:
    """Write every fixup into ``buffer`` (mapped at ``buffer_va``), in place.

    All or nothing: FixupError (with the failing record's ``index``) leaves the buffer
    untouched. ``records`` is a sequence of FixupRecord or their packed form
    (pack_fixups). Bad arguments (a read-only buffer, an address outside 64 bits) are
    the caller's bug and stay ValueError/TypeError.
    """
    if not isinstance(records, bytes | bytearray | memoryview):
        records = pack_fixups(records)
    # The core raises FixupError itself, naming the record: nothing to translate.
    core.apply_fixups(buffer, buffer_va, image_base, records)


def encode_redirect(strategy: Redirect, entry_va: int, target_va: int) -> bytes:
    """The bytes ``strategy`` writes over its span (from ``entry_va + strategy.span[0]``)
    to send ``entry_va`` to ``target_va``; ApplyError when out of reach or misaligned."""
    try:
        return core.encode_redirect(strategy, entry_va, target_va)
    except ValueError as error:
        raise ApplyError(str(error)) from None
