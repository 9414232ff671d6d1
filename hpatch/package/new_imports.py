"""The new-imports record of the ``.hpk`` metadata: imports the baseline does not have.

A package lists the imports its code calls through that the baseline has an IAT slot
for by slot alone (format/); an import the baseline lacks it must name itself, DLL
and name (or ordinal), and carry a slot for it: 8 bytes of the patch region, in an
IMPORT_SLOTS blob, that the applier binds as the loader binds an image's IAT. The
record (docs/FORMAT.md, "New imports"):

    varint n DLLs, n str (in order of first use);
    if n: varint m imports, m records by slot offset, each
        varint DLL index, varint (slot offset - end of the previous slot) / 8,
        varint ordinal (0: by name, a str follows)

Slots are 8-byte aligned and the IMPORT_SLOTS blobs are implied: one per run of
adjacent slots, never listed. The reader bounds every count by the bytes left and
refuses anything malformed with PackageFormatError; ``validate`` checks a
package's new imports against its region (both directions call it).
"""

from __future__ import annotations

import bisect
from typing import Protocol

from hpatch.errors import PackageFormatError
from hpatch.package.model import BlobKind, NewImport, Package

SLOT_SIZE = 8
MAX_ORDINAL = 0xFFFF
#: The smallest encodings: a DLL (length, one byte), an import (index, gap, ordinal).
_MIN_DLL, _MIN_IMPORT = 2, 3


class FieldWriter(Protocol):
    def uv(self, value: int) -> None: ...
    def string(self, text: str) -> None: ...


class FieldReader(Protocol):
    def uv(self, limit: int = ...) -> int: ...
    def string(self, field: str) -> str: ...
    def count(self, minimum_record: int, what: str) -> int: ...


def write(out: FieldWriter, imports: tuple[NewImport, ...]) -> None:
    """The record for ``imports`` (in slot order, as a valid package holds them)."""
    dlls = list(dict.fromkeys(item.dll for item in imports))
    out.uv(len(dlls))
    for dll in dlls:
        out.string(dll)
    if not dlls:
        return
    out.uv(len(imports))
    end = 0
    for item in imports:
        out.uv(dlls.index(item.dll))
        out.uv((item.slot_offset - end) // SLOT_SIZE)
        out.uv(item.ordinal)
        if not item.ordinal:
            out.string(item.name)
        end = item.slot_offset + SLOT_SIZE


def read(data: FieldReader, region_limit: int) -> tuple[NewImport, ...]:
    """The record's imports; slot offsets below ``region_limit`` (their order, DLL names
    and slots are checked by ``validate``, canonical form by re-encoding)."""
    dlls = [data.string("new import DLL") for _ in range(data.count(_MIN_DLL, "new import DLLs"))]
    if not dlls:
        return ()
    imports = []
    end = 0
    for _ in range(data.count(_MIN_IMPORT, "new imports")):
        dll = dlls[data.uv(len(dlls))]
        offset = end + SLOT_SIZE * data.uv(region_limit // SLOT_SIZE + 1)
        ordinal = data.uv(MAX_ORDINAL + 1)
        name = "" if ordinal else data.string("new import name")
        imports.append(NewImport(dll, name, ordinal, offset))
        end = offset + SLOT_SIZE
    return tuple(imports)


def slot_blobs(imports: tuple[NewImport, ...]) -> list[tuple[int, int]]:
    """(offset, size) of the IMPORT_SLOTS blobs ``imports`` imply: one per run of
    adjacent slots, by offset."""
    runs: list[list[int]] = []
    for item in sorted(imports, key=lambda i: i.slot_offset):
        if runs and runs[-1][1] == item.slot_offset:
            runs[-1][1] += SLOT_SIZE
        else:
            runs.append([item.slot_offset, item.slot_offset + SLOT_SIZE])
    return [(start, end - start) for start, end in runs]


def validate(package: Package) -> None:
    """Each new import names a DLL and a name or an ordinal, no two the same import; the
    slots are 8-byte aligned, ascending, inside the region and exactly the IMPORT_SLOTS
    blobs (zeros where known: the applier writes them); no fixup lies in a slot.
    PackageFormatError names the first defect."""
    seen: set[tuple[str, str | int]] = set()
    end = 0
    for item in package.new_imports:
        where = f"new import {item.label} at region offset 0x{item.slot_offset:x}"
        if not item.dll or bool(item.name) == bool(item.ordinal):
            raise PackageFormatError(f"{where} needs a DLL and a name or an ordinal")
        if not 0 <= item.ordinal <= MAX_ORDINAL:
            raise PackageFormatError(f"{where} has an ordinal out of range")
        if item.slot_offset % SLOT_SIZE or item.slot_offset < end:
            raise PackageFormatError(f"{where}: slots are 8-byte aligned, ascending, apart")
        end = item.slot_offset + SLOT_SIZE
        if end > package.region_size:
            raise PackageFormatError(f"{where} lies past the region")
        key = (item.dll.lower(), item.name or item.ordinal)
        if key in seen:
            raise PackageFormatError(f"{where} repeats an import")
        seen.add(key)
    blobs = [b for b in package.blobs if b.kind == BlobKind.IMPORT_SLOTS]
    if [(b.offset, b.size) for b in blobs] != slot_blobs(package.new_imports):
        raise PackageFormatError("the IMPORT_SLOTS blobs are not the new imports' slots")
    if any(b.resolved and any(b.data) for b in blobs):
        raise PackageFormatError("a new import's slot holds bytes: the applier writes it")
    offsets = [f.offset for f in package.fixups]
    for offset, size in slot_blobs(package.new_imports):
        # a field reaching into a slot from before it, or starting in it
        at = bisect.bisect_left(offsets, offset - SLOT_SIZE)
        for fixup in package.fixups[at:]:
            if fixup.offset >= offset + size:
                break
            if fixup.offset + fixup.kind.field_size > offset:
                raise PackageFormatError(f"fixup at 0x{fixup.offset:x} lies in a new import's slot")
