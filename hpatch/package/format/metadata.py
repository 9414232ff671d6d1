"""The metadata section of a package body: identity, servicing, prerequisites, the
region's layout (blobs, functions and their parts, implied blobs and tables), import
slots, redirect strategies and unwind records; its writer and its canonical reader."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hpatch.arch import Machine
from hpatch.arch.kinds import MACHINE_TAGS
from hpatch.arch.rewrite import Redirect
from hpatch.errors import PackageFormatError
from hpatch.package import new_imports
from hpatch.package.format.wire import (
    DIGEST_SIZE,
    KEY_ID_SIZE,
    MAX_DICTIONARY,
    MAX_REGION_SIZE,
    SIGNATURE_SIZE,
    Reader,
    Writer,
    arch_of,
    enum_value,
    read_scaled,
    write_scaled,
)
from hpatch.package.model import (
    FORMAT_VERSION,
    NO_RVA,
    TARGET_DIGEST_SIZE,
    Baseline,
    Blob,
    BlobKind,
    FixupCounts,
    Flag,
    FunctionStatus,
    ImportRef,
    Package,
    Part,
    PatchFunction,
    Prerequisite,
    RedirectEntry,
    Servicing,
    SignatureInfo,
    UnwindRecord,
)

# the fewest metadata bytes one function record takes: head, RVA gap, empty name, the
# one part's offset and size, its fixup count
_MIN_FUNCTION = 6

# region flags
_CODE_BLOBS_IMPLIED = 0x1  # one CODE blob per function, spanning its parts
_TABLES_IMPLIED = 0x2  # one FUNCTION_TABLE blob per run of adjacent unwind table entries
_EXTENTS_IN_DICTIONARY = 0x4  # the dictionary ends with the replaced functions' old code
_WHOLE_IMAGE_DICTIONARY = 0x8  # the dictionary starts with the whole baseline image
_UNWIND_PER_PART = 0x10  # an unwind record per part but those listed, table entries in a row
_REGION_FLAGS = (
    _CODE_BLOBS_IMPLIED
    | _TABLES_IMPLIED
    | _EXTENTS_IN_DICTIONARY
    | _WHOLE_IMAGE_DICTIONARY
    | _UNWIND_PER_PART
)
# function record head byte
_HEAD_STATUS = 0x03
_HEAD_STRATEGY = 0x1C
_ENTRY_AT_NEW_RVA = 0x20  # the entry part starts at the function's new RVA
_ONE_PART = 0x40
_SUPERSEDES = 0x1

#: Prerequisite values stored as one bit: what a builder writes for the machine.
_DEFAULT_VALUES: dict[Prerequisite, Callable[[Machine], int]] = {
    Prerequisite.MACHINE: lambda machine: int(machine),
    Prerequisite.MIN_FORMAT_VERSION: lambda _machine: FORMAT_VERSION,
    Prerequisite.REGION_REACH: lambda machine: arch_of(machine).region_reach,
}


def _default_value(machine: Machine, kind: Prerequisite) -> int:
    value = _DEFAULT_VALUES.get(kind)
    return value(machine) if value is not None else 0


def implied_code_blobs(
    functions: tuple[PatchFunction, ...] | list[PatchFunction],
) -> list[tuple[int, int]]:
    """(offset, size) of one CODE blob per function, spanning its parts, by offset."""
    spans = []
    for function in functions:
        if not function.parts:
            raise PackageFormatError(f"function at new RVA 0x{function.new_rva:x} has no parts")
        start = min(p.offset for p in function.parts)
        spans.append((start, max(p.offset + p.size for p in function.parts) - start))
    return sorted(spans)


def implied_tables(
    machine: Machine, unwind: tuple[UnwindRecord, ...] | list[UnwindRecord]
) -> list[tuple[int, int]]:
    """(offset, size) of one FUNCTION_TABLE blob per run of adjacent table entries."""
    entry = arch_of(machine).pdata_entry_size
    runs: list[list[int]] = []
    for record in unwind:
        if runs and record.table_offset == runs[-1][1]:
            runs[-1][1] += entry
        else:
            runs.append([record.table_offset, record.table_offset + entry])
    return sorted((start, end - start) for start, end in runs)


def records_per_part(
    machine: Machine,
    functions: tuple[PatchFunction, ...] | list[PatchFunction],
    table: int,
    skipped: set[int],
) -> list[UnwindRecord]:
    """One unwind record for each part (by region offset) but the ``skipped`` ones (by
    index), whose table entries follow each other from ``table``: how nearly every
    package's unwind records are laid out (x64 leaf functions have none)."""
    parts = sorted((p.offset, p.offset + p.size) for f in functions for p in f.parts)
    entry = arch_of(machine).pdata_entry_size
    covered = [span for index, span in enumerate(parts) if index not in skipped]
    return [UnwindRecord(table + entry * i, begin, end) for i, (begin, end) in enumerate(covered)]


def parts_without_records(package: Package) -> set[int] | None:
    """Indices of the parts (by region offset) without an unwind record, when the
    records are one per part otherwise, in a row (see records_per_part); else None."""
    if not package.unwind:
        return None
    parts = sorted(p.offset for f in package.functions for p in f.parts)
    begins = {r.begin_offset for r in package.unwind}
    skipped = {index for index, offset in enumerate(parts) if offset not in begins}
    laid_out = records_per_part(
        package.machine, package.functions, package.unwind[0].table_offset, skipped
    )
    return skipped if list(package.unwind) == laid_out else None


def _write_identity(out: Writer, record: Baseline) -> None:
    out.string(record.file_name)
    out.u32(record.time_date_stamp)
    write_scaled(out, record.size_of_image, 12)
    out.uv(record.checksum)
    write_scaled(out, record.image_base, 16)
    out.raw(record.mapped_sha256)


def _read_identity(data: Reader, machine: Machine) -> Baseline:
    name = data.string("file name")
    stamp = data.u32()
    size = read_scaled(data, 12, 1 << 32)
    checksum = data.uv(1 << 32)
    base = read_scaled(data, 16, 1 << 64)
    return Baseline(name, machine, stamp, size, checksum, base, data.take(DIGEST_SIZE))


def write_metadata(
    package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool
) -> bytes:
    """The metadata section: everything but the region stream, canonical."""
    out = Writer()
    out.u8(MACHINE_TAGS[package.machine] >> 8)
    _write_identity(out, package.baseline)
    servicing = package.servicing
    out.raw(servicing.target_sha256)
    out.uv(servicing.sequence)
    out.uv(_SUPERSEDES if servicing.supersedes is not None else 0)
    if servicing.supersedes is not None:
        out.uv(servicing.supersedes[0])
        out.uv(servicing.supersedes[1])
    out.string(servicing.description)
    out.string(servicing.advisory)
    out.string(servicing.tool_version)
    present = unusual = 0
    for kind, value in package.prerequisites:
        present |= 1 << (kind - 1)
        if value != _default_value(package.machine, kind):
            unusual |= 1 << (kind - 1)
    out.uv(present)
    out.uv(unusual)
    for kind, value in package.prerequisites:
        if unusual >> (kind - 1) & 1:
            out.uv(value)

    # the region's layout, and what its stream is coded against
    def spans(kind: BlobKind) -> list[tuple[int, int]]:
        return [(b.offset, b.size) for b in package.blobs if b.kind == kind]

    implied = {
        BlobKind.CODE: spans(BlobKind.CODE) == implied_code_blobs(package.functions),
        BlobKind.FUNCTION_TABLE: spans(BlobKind.FUNCTION_TABLE)
        == implied_tables(package.machine, package.unwind),
        BlobKind.IMPORT_SLOTS: True,  # the new imports' slots, never listed
    }
    whole = dictionary == ((0, package.baseline.size_of_image),)
    counts = package.fixup_counts
    skipped_parts = parts_without_records(package)
    per_part = skipped_parts is not None
    write_scaled(out, package.region_size, 12)
    out.u8(package.region_alignment.bit_length() - 1)
    out.u8(
        (_CODE_BLOBS_IMPLIED if implied[BlobKind.CODE] else 0)
        | (_TABLES_IMPLIED if implied[BlobKind.FUNCTION_TABLE] else 0)
        | (_EXTENTS_IN_DICTIONARY if extents else 0)
        | (_WHOLE_IMAGE_DICTIONARY if whole else 0)
        | (_UNWIND_PER_PART if per_part else 0)
    )
    if not whole:
        out.uv(len(dictionary))
        end = 0
        for rva, size in dictionary:
            out.sv(rva - end)
            out.uv(size)
            end = rva + size
    listed = [b for b in package.blobs if not implied.get(b.kind)]
    out.uv(len(listed))
    end = 0
    for blob in listed:
        out.u8(blob.kind)
        out.uv(blob.offset - end)
        out.uv(blob.size)
        end = blob.offset + blob.size
    strategies = {r.old_rva: r.strategy for r in package.redirects}
    out.uv(len(package.functions))
    previous_rva = end = 0
    for function, fixups in zip(package.functions, counts.functions, strict=True):
        modified = function.status == FunctionStatus.MODIFIED
        parts = function.parts
        at_entry = bool(parts) and parts[0].new_rva == function.new_rva
        out.u8(
            function.status
            | (strategies[function.old_rva] << 2 if modified else 0)
            | (_ENTRY_AT_NEW_RVA if at_entry else 0)
            | (_ONE_PART if len(parts) == 1 else 0)
        )
        out.uv(function.new_rva - previous_rva)
        previous_rva = function.new_rva
        out.string(function.name)
        if len(parts) != 1:
            out.uv(len(parts))
        for index, part in enumerate(parts):
            out.sv(part.offset - end)
            out.uv(part.size)
            if index or not at_entry:
                out.sv(part.new_rva - function.new_rva)
            end = part.offset + part.size
        if modified:
            out.sv(function.old_rva - function.new_rva)
            out.sv(function.old_size - function.new_size)
        out.uv(fixups)
    out.uv(len(package.imports))
    previous = 0
    for item in package.imports:  # slots are 8 bytes apart: gaps are mostly one byte
        write_scaled(out, item.old_iat_rva - previous, 3)
        previous = item.old_iat_rva
    new_imports.write(out, package.new_imports)
    out.uv(counts.other)
    if skipped_parts is not None:
        out.uv(package.unwind[0].table_offset)
        out.uv(len(skipped_parts))
        previous = 0
        for index in sorted(skipped_parts):
            out.uv(index - previous)
            previous = index + 1
        return bytes(out.out)
    out.uv(len(package.unwind))
    expected = end = 0
    entry = arch_of(package.machine).pdata_entry_size
    for record in package.unwind:
        out.sv(record.table_offset - expected)
        out.sv(record.begin_offset - end)
        out.uv(record.end_offset - record.begin_offset)
        expected = record.table_offset + entry
        end = record.end_offset
    return bytes(out.out)


def read_metadata(data: bytes, flags: int) -> tuple[Package, tuple[tuple[int, int], ...], bool]:
    """The package the metadata describes (unresolved), the dictionary's baseline ranges,
    and whether the dictionary ends with the replaced functions' old code."""
    meta = Reader(data, "metadata")
    code = meta.u8()
    machine = next((m for m, tag in MACHINE_TAGS.items() if tag >> 8 == code), None)
    if machine is None:
        raise PackageFormatError(f"unknown machine code {code}")
    baseline = _read_identity(meta, machine)
    target = meta.take(TARGET_DIGEST_SIZE)
    sequence = meta.uv(1 << 32)
    service_flags = meta.uv()
    if service_flags & ~_SUPERSEDES:
        raise PackageFormatError("metadata: unknown servicing flags")
    supersedes = (meta.uv(1 << 32), meta.uv(1 << 32)) if service_flags else None
    servicing = Servicing(
        sequence,
        supersedes,
        meta.string("description"),
        meta.string("advisory"),
        meta.string("tool version"),
        target,
    )
    present, unusual = meta.uv(), meta.uv()
    if unusual & ~present:
        raise PackageFormatError("metadata: a value for a prerequisite that is not there")
    prerequisites = []
    for bit in range(present.bit_length()):
        if present >> bit & 1:
            kind = enum_value(Prerequisite, bit + 1, "prerequisite")
            value = meta.uv() if unusual >> bit & 1 else _default_value(machine, kind)
            prerequisites.append((kind, value))
    region_size = read_scaled(meta, 12, MAX_REGION_SIZE + 1)
    alignment_bits = meta.u8()
    if alignment_bits > 16:
        raise PackageFormatError(f"region alignment 2**{alignment_bits} is too large")
    region_flags = meta.u8()
    if region_flags & ~_REGION_FLAGS:
        raise PackageFormatError("metadata: unknown region flags")
    dictionary: list[tuple[int, int]] = []
    if region_flags & _WHOLE_IMAGE_DICTIONARY:
        dictionary.append((0, baseline.size_of_image))
    else:
        end = 0
        for _ in range(meta.count(2, "dictionary ranges")):
            rva = end + meta.sv()
            size = meta.uv(MAX_DICTIONARY + 1)
            dictionary.append((rva, size))
            end = rva + size
    blobs = []
    end = 0
    for _ in range(meta.count(3, "blobs")):
        blob_kind = enum_value(BlobKind, meta.u8(), "blob kind")
        offset = end + meta.uv(MAX_REGION_SIZE + 1)
        size = meta.uv(MAX_REGION_SIZE + 1)
        blobs.append(Blob(blob_kind, offset, b"", unresolved_size=size))
        end = offset + size
    functions = []
    function_fixups = []
    strategies: list[tuple[int, Redirect]] = []
    rva = end = 0
    for _ in range(meta.count(_MIN_FUNCTION, "functions")):
        head = meta.u8()
        if head & ~(_HEAD_STATUS | _HEAD_STRATEGY | _ENTRY_AT_NEW_RVA | _ONE_PART):
            raise PackageFormatError("metadata: unknown function flags")
        status = enum_value(FunctionStatus, head & _HEAD_STATUS, "function status")
        rva += meta.uv(1 << 32)
        name = meta.string("function name")
        count = 1 if head & _ONE_PART else meta.count(2, "parts")
        if count == 1 and not head & _ONE_PART:
            raise PackageFormatError("metadata: a one-part function not marked so")
        parts = []
        for index in range(count):
            offset = end + meta.sv()
            size = meta.uv(1 << 32)
            new_rva = rva if index == 0 and head & _ENTRY_AT_NEW_RVA else rva + meta.sv()
            if index == 0 and new_rva == rva and not head & _ENTRY_AT_NEW_RVA:
                raise PackageFormatError("metadata: an entry at the new RVA not marked so")
            parts.append(Part(offset, size, new_rva))
            end = offset + size
        if not parts and head & _ENTRY_AT_NEW_RVA:
            raise PackageFormatError("metadata: a function without parts marked at its entry")
        strategy = (head & _HEAD_STRATEGY) >> 2
        old_rva, old_size = NO_RVA, 0
        if status == FunctionStatus.MODIFIED:
            old_rva = rva + meta.sv()
            old_size = sum(p.size for p in parts) + meta.sv()
            strategies.append((old_rva, enum_value(Redirect, strategy, "redirect strategy")))
        elif strategy:
            raise PackageFormatError("metadata: an added function with a redirect strategy")
        functions.append(PatchFunction(status, old_rva, old_size, rva, name, tuple(parts)))
        function_fixups.append(meta.uv(MAX_REGION_SIZE))
    imports = tuple(
        ImportRef("", "", 0, slot)
        for slot in itertools.accumulate(
            read_scaled(meta, 3, 1 << 32) for _ in range(meta.count(1, "imports"))
        )
    )
    added = new_imports.read(meta, MAX_REGION_SIZE)
    fixup_counts = FixupCounts(tuple(function_fixups), meta.uv(MAX_REGION_SIZE))
    unwind = []
    if region_flags & _UNWIND_PER_PART:
        table = meta.uv(MAX_REGION_SIZE)
        skipped: set[int] = set()
        following = 0
        for _ in range(meta.count(1, "parts without unwind records")):
            index = following + meta.uv(1 << 32)
            skipped.add(index)
            following = index + 1
        unwind = records_per_part(machine, functions, table, skipped)
    else:
        expected = end = 0
        entry = arch_of(machine).pdata_entry_size
        for _ in range(meta.count(3, "unwind records")):
            table = expected + meta.sv()
            begin = end + meta.sv()
            end = begin + meta.uv(1 << 32)
            unwind.append(UnwindRecord(table, begin, end))
            expected = table + entry
    meta.finish()
    implied: list[tuple[BlobKind, tuple[int, int]]] = []
    if region_flags & _CODE_BLOBS_IMPLIED:
        implied += [(BlobKind.CODE, span) for span in implied_code_blobs(functions)]
    if region_flags & _TABLES_IMPLIED:
        implied += [(BlobKind.FUNCTION_TABLE, span) for span in implied_tables(machine, unwind)]
    implied += [(BlobKind.IMPORT_SLOTS, span) for span in new_imports.slot_blobs(added)]
    if implied:
        by_offset = {b.offset: b for b in blobs}
        for blob_kind, (offset, size) in implied:
            if offset in by_offset:
                raise PackageFormatError(f"two blobs at region offset 0x{offset:x}")
            by_offset[offset] = Blob(blob_kind, offset, b"", unresolved_size=size)
        blobs = [by_offset[offset] for offset in sorted(by_offset)]
    entries: dict[int, int] = {}
    for function in functions:
        if function.parts:
            entries.setdefault(function.old_rva, function.entry_offset)
    redirects = tuple(
        RedirectEntry(old_rva, strategy, entries.get(old_rva, -1), b"")
        for old_rva, strategy in sorted(strategies, key=lambda item: item[0])
    )
    signature_placeholder = (
        SignatureInfo(bytes(KEY_ID_SIZE), bytes(SIGNATURE_SIZE)) if flags & Flag.SIGNED else None
    )
    package = Package(
        machine=machine,
        baseline=baseline,
        servicing=servicing,
        prerequisites=tuple(prerequisites),
        region_size=region_size,
        region_alignment=1 << alignment_bits,
        blobs=tuple(blobs),
        functions=tuple(functions),
        imports=imports,
        fixups=(),
        redirects=redirects,
        unwind=tuple(unwind),
        new_imports=added,
        version=FORMAT_VERSION,
        signature=signature_placeholder,
        stated_fixup_counts=fixup_counts,
    )
    return package, tuple(dictionary), bool(region_flags & _EXTENTS_IN_DICTIONARY)
