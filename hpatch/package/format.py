"""The ``.hpk`` byte format, version 4: ``encode_package``, the defensive
``decode_package``, and ``resolve_blobs``.

The layout is specified in docs/FORMAT.md. The body is two LZMA2 streams: the
*metadata* (identity, servicing, prerequisites, layout, functions and their fixup
counts, import slots, redirect strategies, unwind records) and the *region stream*
(the bytes of every blob, a mark for each fixup site the code predicts, the fixups no
rule predicts, then one number per fixup from which its target follows), which is
coded against a *dictionary* of baseline bytes: the old code of the functions the
package replaces, and baseline ranges the metadata lists. The metadata pins the
baseline's mapped image by its SHA-256, so an applier always holds the dictionary.

Without the baseline a package decodes *unresolved* (see model.py): everything
``hpatch inspect`` shows is there, but blobs know only their size, the fixups only
their counts, imports only their slots, and redirect digests are empty.
``decode_package(data, baseline)`` or ``resolve_blobs(package, baseline)``
(``baseline``: the baseline's mapped image, ``PEImage.mapped``) completes it, after
checking the baseline is the package's.

Encoding is canonical: the decoder checks that the metadata is the one encoding of
what it says, and a package keeps its compressed streams (``Package.coding``), so
``encode(decode(data)) == data`` for every package the decoder accepts. The decoder
checks every length and offset before use, bounds every decompression by the sizes the
metadata declares, and reports any defect as PackageFormatError.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from hpatch.arch import Arch, Machine, arch_for
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.errors import PackageFormatError
from hpatch.package import lzma2, new_imports
from hpatch.package.baseline_imports import named_imports
from hpatch.package.model import (
    FORMAT_VERSION,
    NO_RVA,
    TARGET_DIGEST_SIZE,
    UNRESOLVED,
    Baseline,
    Blob,
    BlobKind,
    BodyCoding,
    FixupCounts,
    FixupEntry,
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
    TargetKind,
    UnwindRecord,
)
from hpatch.package.site_prediction import predict_arm64, predict_x64

MAGIC = b"\x89HPK"
HEADER = struct.Struct("<4sBB")  # magic, version, flags
DIGEST_SIZE = 32
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64
MAX_PACKAGE_SIZE = 64 << 20
MAX_REGION_SIZE = 64 << 20
MAX_METADATA = 4 << 20  # hpatch's largest packages hold a few KiB
MAX_DICTIONARY = 64 << 20
MAX_STRING = 4096
MAX_ALIGNMENT = 1 << 16
_MAX_VARINT = 10  # bytes: every value below 2**70
# A stream decoded before the signature is trusted may expand at most this much over
# its coded size (plus the floor): hpatch's metadata codes at under 2x, while LZMA lets
# a few hundred bytes claim megabytes of repeated records (a package bomb).
MAX_EXPANSION = 16
EXPANSION_FLOOR = 4 << 10
# the fewest metadata bytes one function record takes: head, RVA gap, empty name, the
# one part's offset and size, its fixup count
_MIN_FUNCTION = 6

T = TypeVar("T")

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
_MACHINE_TAGS = {Machine.AMD64: 0x100, Machine.ARM64: 0x200}
_TABLE_ENTRY = {Machine.AMD64: 12, Machine.ARM64: 8}
# LZMA literal/position settings the encoder tries, smallest output kept
_SETTINGS = ((0, 0, 0), (3, 0, 0), (0, 0, 1))
_TRY_ALL_SETTINGS = 64 << 10  # above this many bytes, code once with the first setting
# dictionary search: 8-byte pieces of blobs found in the baseline, within a scan budget
_GRAM = 8
_SCAN_BUDGET = 256 << 20
_WHOLE_IMAGE = 4 << 20  # a baseline up to this size is the dictionary whole
_RANGE_MARGIN = 64


# varints ----------------------------------------------------------------------------


class _Writer:
    """Little-endian fields and LEB128 varints (zigzag for signed values)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def u8(self, value: int) -> None:
        self.out.append(value)

    def u32(self, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise PackageFormatError(f"{value} does not fit 32 bits")
        self.out += struct.pack("<I", value)

    def uv(self, value: int) -> None:
        if not 0 <= value < 1 << 70:
            raise PackageFormatError(f"{value} cannot be stored as a varint")
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def sv(self, value: int) -> None:
        self.uv(value << 1 if value >= 0 else ((-value) << 1) - 1)

    def raw(self, data: bytes) -> None:
        self.out += data

    def string(self, text: str) -> None:
        raw = text.encode("utf-8")
        if len(raw) > MAX_STRING:
            raise PackageFormatError(f"string of {len(raw)} bytes exceeds {MAX_STRING}")
        self.uv(len(raw))
        self.out += raw


class _Reader:
    """Reads fields from ``data``, never past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.position, self.what = data, 0, what

    def left(self) -> int:
        return len(self.data) - self.position

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.left():
            raise PackageFormatError(
                f"{self.what}: truncated at byte {self.position} (needs {size} more bytes)"
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def u8(self) -> int:
        # indexed, not through take(): records are mostly one-byte fields
        position = self.position
        if position >= len(self.data):
            raise PackageFormatError(
                f"{self.what}: truncated at byte {position} (needs 1 more bytes)"
            )
        self.position = position + 1
        return self.data[position]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def uv(self, limit: int = 1 << 64) -> int:
        data, position = self.data, self.position
        if position < len(data) and data[position] < 0x80:  # the common one-byte varint
            value = data[position]
            if value >= limit:
                raise PackageFormatError(f"{self.what}: value {value} out of range")
            self.position = position + 1
            return value
        value = shift = 0
        for _ in range(_MAX_VARINT):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if not byte and shift:
                    raise PackageFormatError(f"{self.what}: a varint is not in its shortest form")
                if value >= limit:
                    raise PackageFormatError(f"{self.what}: value {value} out of range")
                return value
            shift += 7
        raise PackageFormatError(f"{self.what}: a varint runs past {_MAX_VARINT} bytes")

    def sv(self) -> int:
        value = self.uv(1 << 70)
        return value >> 1 if not value & 1 else -((value + 1) >> 1)

    def string(self, field: str) -> str:
        size = self.uv()
        if size > MAX_STRING:
            raise PackageFormatError(f"{self.what}: {field} is {size} bytes (limit {MAX_STRING})")
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PackageFormatError(f"{self.what}: {field} is not UTF-8") from exc

    def count(self, minimum_record: int, what: str) -> int:
        """A record count, refused unless that many minimal records fit in what is left."""
        count = self.uv()
        if count * minimum_record > self.left():
            raise PackageFormatError(
                f"{self.what}: {count} {what} cannot fit in {self.left()} bytes"
            )
        return count

    def finish(self) -> None:
        if self.position != len(self.data):
            raise PackageFormatError(
                f"{self.what}: {len(self.data) - self.position} unexpected bytes at its end"
            )


def _enum(kind: Callable[[int], T], value: int, what: str) -> T:
    try:
        return kind(value)
    except ValueError:
        raise PackageFormatError(f"unknown {what} {value}") from None


# metadata ---------------------------------------------------------------------------

#: Prerequisite values stored as one bit: what a builder writes for the machine.
_DEFAULT_VALUES = {
    Prerequisite.MACHINE: {Machine.AMD64: int(Machine.AMD64), Machine.ARM64: int(Machine.ARM64)},
    Prerequisite.MIN_FORMAT_VERSION: {Machine.AMD64: FORMAT_VERSION, Machine.ARM64: FORMAT_VERSION},
    Prerequisite.REGION_REACH: {Machine.AMD64: (1 << 31) - 64, Machine.ARM64: (1 << 27) - 64},
}


def _default_value(machine: Machine, kind: Prerequisite) -> int:
    return _DEFAULT_VALUES.get(kind, {}).get(machine, 0)


def _implied_code_blobs(
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


def _implied_tables(
    machine: Machine, unwind: tuple[UnwindRecord, ...] | list[UnwindRecord]
) -> list[tuple[int, int]]:
    """(offset, size) of one FUNCTION_TABLE blob per run of adjacent table entries."""
    entry = _TABLE_ENTRY[machine]
    runs: list[list[int]] = []
    for record in unwind:
        if runs and record.table_offset == runs[-1][1]:
            runs[-1][1] += entry
        else:
            runs.append([record.table_offset, record.table_offset + entry])
    return sorted((start, end - start) for start, end in runs)


def _records_per_part(
    machine: Machine,
    functions: tuple[PatchFunction, ...] | list[PatchFunction],
    table: int,
    skipped: set[int],
) -> list[UnwindRecord]:
    """One unwind record for each part (by region offset) but the ``skipped`` ones (by
    index), whose table entries follow each other from ``table``: how nearly every
    package's unwind records are laid out (x64 leaf functions have none)."""
    parts = sorted((p.offset, p.offset + p.size) for f in functions for p in f.parts)
    entry = _TABLE_ENTRY[machine]
    covered = [span for index, span in enumerate(parts) if index not in skipped]
    return [UnwindRecord(table + entry * i, begin, end) for i, (begin, end) in enumerate(covered)]


def _parts_without_records(package: Package) -> set[int] | None:
    """Indices of the parts (by region offset) without an unwind record, when the
    records are one per part otherwise, in a row (see _records_per_part); else None."""
    if not package.unwind:
        return None
    parts = sorted(p.offset for f in package.functions for p in f.parts)
    begins = {r.begin_offset for r in package.unwind}
    skipped = {index for index, offset in enumerate(parts) if offset not in begins}
    laid_out = _records_per_part(
        package.machine, package.functions, package.unwind[0].table_offset, skipped
    )
    return skipped if list(package.unwind) == laid_out else None


def _extents(package: Package) -> list[tuple[int, int]]:
    """The old code (RVA, size) of every replaced function, in function order."""
    return [
        (f.old_rva, f.old_size)
        for f in package.functions
        if f.status == FunctionStatus.MODIFIED and f.old_size
    ]


def _write_scaled(out: _Writer, value: int, bits: int) -> None:
    """``value``, shorter when a multiple of ``2**bits`` (page sizes, 64 KiB bases)."""
    if value & ((1 << bits) - 1):
        out.uv(value << 1 | 1)
    else:
        out.uv(value >> bits << 1)


def _read_scaled(data: _Reader, bits: int, limit: int) -> int:
    value = data.uv(limit << (bits + 1))
    value = value >> 1 if value & 1 else value >> 1 << bits
    if value >= limit:
        raise PackageFormatError(f"{data.what}: value {value} out of range")
    return value


def _write_identity(out: _Writer, record: Baseline) -> None:
    out.string(record.file_name)
    out.u32(record.time_date_stamp)
    _write_scaled(out, record.size_of_image, 12)
    out.uv(record.checksum)
    _write_scaled(out, record.image_base, 16)
    out.raw(record.mapped_sha256)


def _read_identity(data: _Reader, machine: Machine) -> Baseline:
    name = data.string("file name")
    stamp = data.u32()
    size = _read_scaled(data, 12, 1 << 32)
    checksum = data.uv(1 << 32)
    base = _read_scaled(data, 16, 1 << 64)
    return Baseline(name, machine, stamp, size, checksum, base, data.take(DIGEST_SIZE))


def _metadata(package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool) -> bytes:
    """The metadata section: everything but the region stream, canonical."""
    out = _Writer()
    out.u8(_MACHINE_TAGS[package.machine] >> 8)
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
        BlobKind.CODE: spans(BlobKind.CODE) == _implied_code_blobs(package.functions),
        BlobKind.FUNCTION_TABLE: spans(BlobKind.FUNCTION_TABLE)
        == _implied_tables(package.machine, package.unwind),
        BlobKind.IMPORT_SLOTS: True,  # the new imports' slots, never listed
    }
    whole = dictionary == ((0, package.baseline.size_of_image),)
    counts = package.fixup_counts
    skipped_parts = _parts_without_records(package)
    per_part = skipped_parts is not None
    _write_scaled(out, package.region_size, 12)
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
        _write_scaled(out, item.old_iat_rva - previous, 3)
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
    for record in package.unwind:
        out.sv(record.table_offset - expected)
        out.sv(record.begin_offset - end)
        out.uv(record.end_offset - record.begin_offset)
        expected = record.table_offset + _TABLE_ENTRY[package.machine]
        end = record.end_offset
    return bytes(out.out)


def _read_metadata(data: bytes, flags: int) -> tuple[Package, tuple[tuple[int, int], ...], bool]:
    """The package the metadata describes (unresolved), the dictionary's baseline ranges,
    and whether the dictionary ends with the replaced functions' old code."""
    meta = _Reader(data, "metadata")
    code = meta.u8()
    machine = next((m for m, tag in _MACHINE_TAGS.items() if tag >> 8 == code), None)
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
            kind = _enum(Prerequisite, bit + 1, "prerequisite")
            value = meta.uv() if unusual >> bit & 1 else _default_value(machine, kind)
            prerequisites.append((kind, value))
    region_size = _read_scaled(meta, 12, MAX_REGION_SIZE + 1)
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
        kind = _enum(BlobKind, meta.u8(), "blob kind")
        offset = end + meta.uv(MAX_REGION_SIZE + 1)
        size = meta.uv(MAX_REGION_SIZE + 1)
        blobs.append(Blob(kind, offset, b"", unresolved_size=size))
        end = offset + size
    functions = []
    function_fixups = []
    strategies: list[tuple[int, Redirect]] = []
    rva = end = 0
    for _ in range(meta.count(_MIN_FUNCTION, "functions")):
        head = meta.u8()
        if head & ~(_HEAD_STATUS | _HEAD_STRATEGY | _ENTRY_AT_NEW_RVA | _ONE_PART):
            raise PackageFormatError("metadata: unknown function flags")
        status = _enum(FunctionStatus, head & _HEAD_STATUS, "function status")
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
            strategies.append((old_rva, _enum(Redirect, strategy, "redirect strategy")))
        elif strategy:
            raise PackageFormatError("metadata: an added function with a redirect strategy")
        functions.append(PatchFunction(status, old_rva, old_size, rva, name, tuple(parts)))
        function_fixups.append(meta.uv(MAX_REGION_SIZE))
    imports = tuple(
        ImportRef("", "", 0, slot)
        for slot in itertools.accumulate(
            _read_scaled(meta, 3, 1 << 32) for _ in range(meta.count(1, "imports"))
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
        unwind = _records_per_part(machine, functions, table, skipped)
    else:
        expected = end = 0
        for _ in range(meta.count(3, "unwind records")):
            table = expected + meta.sv()
            begin = end + meta.sv()
            end = begin + meta.uv(1 << 32)
            unwind.append(UnwindRecord(table, begin, end))
            expected = table + _TABLE_ENTRY[machine]
    meta.finish()
    implied: list[tuple[BlobKind, tuple[int, int]]] = []
    if region_flags & _CODE_BLOBS_IMPLIED:
        implied += [(BlobKind.CODE, span) for span in _implied_code_blobs(functions)]
    if region_flags & _TABLES_IMPLIED:
        implied += [(BlobKind.FUNCTION_TABLE, span) for span in _implied_tables(machine, unwind)]
    implied += [(BlobKind.IMPORT_SLOTS, span) for span in new_imports.slot_blobs(added)]
    if implied:
        by_offset = {b.offset: b for b in blobs}
        for kind, (offset, size) in implied:
            if offset in by_offset:
                raise PackageFormatError(f"two blobs at region offset 0x{offset:x}")
            by_offset[offset] = Blob(kind, offset, b"", unresolved_size=size)
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


# fixup targets ----------------------------------------------------------------------
#
# The region stream gives each fixup's target as a difference from the target the
# field's own bytes name under a *virtual placement*: each replaced function at its old
# RVA (so its fields read as the old code's do), everything else in the region from
# ``virtual_base`` on, the image at 0. ``code_region`` writes every field so that the
# difference is 0; binding overwrites fields anyway.


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if (value >> (bits - 1)) & 1 else value


def _adr_immediate(word: int) -> int:
    return _sext(((word >> 29) & 3) | (((word >> 5) & 0x7FFFF) << 2), 21)


def _with_adr_immediate(word: int, value: int) -> int:
    value &= 0x1FFFFF
    return (word & 0x9F00001F) | ((value & 3) << 29) | ((value >> 2) << 5)


def _ldst_scale(word: int) -> int:
    """log2 of the access size of an LDR/STR (unsigned offset) instruction."""
    scale = word >> 30
    if (word >> 26) & 1 and (word >> 23) & 1 and scale == 0:
        scale = 4  # 128-bit SIMD&FP register
    return scale


def _fits(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < 1 << (bits - 1)


def _read_field(kind: Fixup, field: bytes, site: int) -> int:
    """The address ``field`` names when it sits at ``site`` (ADRP: its page; ADD/LDR/STR:
    the page offset)."""
    value = int.from_bytes(field, "little")
    if kind in _REL32:
        return site + 4 + (kind - Fixup.X64_REL32) + _sext(value, 32)
    if kind in _ABSOLUTE:
        return value
    if kind in _BRANCHES:
        mask, shift, bits = _BRANCHES[kind]
        return site + 4 * _sext((value >> shift) & mask, bits)
    if kind == Fixup.ARM64_REL21:
        return site + _adr_immediate(value)
    if kind == Fixup.ARM64_PAGEBASE_REL21:
        return (site & ~0xFFF) + 4096 * _adr_immediate(value)
    if kind == Fixup.ARM64_PAGEOFFSET_12A:
        return (value >> 10) & 0xFFF
    return (((value >> 10) & 0xFFF) << _ldst_scale(value)) & 0xFFF


def _write_field(kind: Fixup, field: bytes, site: int, target: int) -> bytes | None:
    """``field`` rewritten to name ``target`` from ``site``; None if it cannot."""
    size = len(field)
    value = int.from_bytes(field, "little")
    if kind in _REL32:
        delta = target - (site + 4 + (kind - Fixup.X64_REL32))
        return delta.to_bytes(4, "little", signed=True) if _fits(delta, 32) else None
    if kind in _ABSOLUTE:
        return target.to_bytes(size, "little") if 0 <= target < 1 << (8 * size) else None
    if kind in _BRANCHES:
        mask, shift, bits = _BRANCHES[kind]
        delta = target - site
        if delta % 4 or not _fits(delta // 4, bits):
            return None
        value = (value & ~(mask << shift)) | (((delta // 4) & mask) << shift)
    elif kind == Fixup.ARM64_REL21:
        if not _fits(target - site, 21):
            return None
        value = _with_adr_immediate(value, target - site)
    elif kind == Fixup.ARM64_PAGEBASE_REL21:
        pages = (target >> 12) - (site >> 12)
        if not _fits(pages, 21):
            return None
        value = _with_adr_immediate(value, pages)
    elif kind == Fixup.ARM64_PAGEOFFSET_12A:
        value = (value & ~(0xFFF << 10)) | ((target & 0xFFF) << 10)
    else:
        scale = _ldst_scale(value)
        if (target & 0xFFF) & ((1 << scale) - 1):
            return None
        value = (value & ~(0xFFF << 10)) | (((target & 0xFFF) >> scale) << 10)
    return value.to_bytes(4, "little")


_REL32 = frozenset(kind for kind in Fixup if kind.name.startswith("X64_REL32"))
_ABSOLUTE = frozenset(
    (Fixup.X64_ADDR64, Fixup.ARM64_ADDR64, Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB)
)
_BRANCHES = {  # mask, shift, bits of the word offset
    Fixup.ARM64_BRANCH26: (0x3FFFFFF, 0, 26),
    Fixup.ARM64_BRANCH19: (0x7FFFF, 5, 19),
    Fixup.ARM64_BRANCH14: (0x3FFF, 5, 14),
}
_PAGE_OFFSETS = (Fixup.ARM64_PAGEOFFSET_12A, Fixup.ARM64_PAGEOFFSET_12L)


def virtual_base(package: Package) -> int:
    """Where the virtual placement puts the region: the baseline's end, 64 KiB aligned."""
    return (package.baseline.size_of_image + 0xFFFF) & ~0xFFFF


class _Placement:
    """The virtual placement of a package's region (see above)."""

    def __init__(self, package: Package) -> None:
        self.base = virtual_base(package)
        moved = [
            (p.offset, p.size, f.old_rva + p.new_rva - f.new_rva)
            for f in package.functions
            if f.status == FunctionStatus.MODIFIED
            for p in f.parts
        ]
        self.by_offset = sorted(moved)
        self.offsets = [m[0] for m in self.by_offset]
        self.by_address = sorted((address, size, offset) for offset, size, address in moved)
        self.addresses = [m[0] for m in self.by_address]
        self.slots: dict[int, int] = {}
        for index, item in enumerate(package.imports):
            self.slots.setdefault(item.old_iat_rva, index)
        self.imports = package.imports

    def address(self, offset: int) -> int:
        """The virtual address of region ``offset``."""
        index = bisect.bisect_right(self.offsets, offset) - 1
        if index >= 0:
            start, size, address = self.by_offset[index]
            if offset < start + size:
                return address + offset - start
        return self.base + offset

    def target_address(self, kind: TargetKind, target: int) -> int:
        if kind == TargetKind.OLD_RVA:
            return target
        if kind == TargetKind.IMPORT:
            return self.imports[target].old_iat_rva
        return self.address(target)

    def moved(self, address: int) -> bool:
        """Whether a virtual address lies in a part of a replaced function."""
        index = bisect.bisect_right(self.addresses, address) - 1
        return index >= 0 and address < self.by_address[index][0] + self.by_address[index][1]

    def target_of(self, kind: TargetKind, address: int) -> int:
        """The target (counted in ``kind``) a virtual address names; the inverse of
        ``target_address`` where there is one."""
        if kind == TargetKind.OLD_RVA:
            return address
        if kind == TargetKind.IMPORT:
            return self.slots.get(address, 0)
        index = bisect.bisect_right(self.addresses, address) - 1
        if index >= 0:
            start, size, offset = self.by_address[index]
            if address < start + size:
                return offset + address - start
        return address - self.base


def _field_reader(package: Package) -> Callable[[int, int], bytes]:
    blob_starts = [b.offset for b in package.blobs]

    def field(offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` within the blob holding it; none if none."""
        index = bisect.bisect_right(blob_starts, offset) - 1
        if index < 0 or offset >= blob_starts[index] + package.blobs[index].size:
            return b""
        blob = package.blobs[index]
        return blob.data[offset - blob.offset : offset - blob.offset + size]

    return field


def _table_targets(package: Package) -> dict[int, int]:
    """Function table fields whose target the unwind records give: begin, and on x64 end."""
    given = {}
    for record in package.unwind:
        given[record.table_offset] = record.begin_offset
        if package.machine == Machine.AMD64:
            given[record.table_offset + 4] = record.end_offset
    return given


def _addresses(
    package: Package, placement: _Placement, fixups: tuple[FixupEntry, ...]
) -> list[int]:
    """For every fixup, the address its field's bytes name under the virtual placement,
    an ADRP's and its page offset's completed by their pair (needs resolved blobs)."""
    field = _field_reader(package)
    words = [
        int.from_bytes(field(f.offset, 4), "little") if f.kind.machine == Machine.ARM64 else 0
        for f in fixups
    ]
    raw = [
        _read_field(f.kind, field(f.offset, f.kind.field_size), placement.address(f.offset))
        for f in fixups
    ]
    addresses = []
    for index, fixup in enumerate(fixups):
        value = raw[index]
        if fixup.kind == Fixup.ARM64_PAGEBASE_REL21:
            pair = _pair(fixups, words, index, 1)
            if pair is not None:
                value += raw[pair]
        elif fixup.kind in _PAGE_OFFSETS:
            pair = _pair(fixups, words, index, -1)
            if pair is not None:
                value += raw[pair] & ~0xFFF
        addresses.append(value)
    return addresses


def _unwind_data_fields(package: Package) -> set[int]:
    """Function table fields that name unwind data: x64 UnwindData; on ARM64 the second
    word (when it is an .xdata RVA rather than packed unwind data, it has a fixup)."""
    at = 8 if package.machine == Machine.AMD64 else 4
    return {record.table_offset + at for record in package.unwind}


def _unwind_data_size(arch: Arch, header: bytes) -> int:
    """Bytes of the unwind data whose first 8 bytes are ``header``, up to and with its
    handler's RVA (language-specific data has no size there), as the machine's unwind
    format sizes it; 0 when there are not 8."""
    if len(header) < 8:
        return 0
    size, has_handler, _chained = arch.unwind_record_size(
        lambda offset, count: header[offset : offset + count], 0
    )
    return size + (4 if has_handler else 0)


def _walk_predictions(package: Package, actual: Callable[[int, int], int]) -> list[int]:
    """Every fixup's predicted target, in order: what the unwind records give for a
    function table's begin and end, the end of the unwind data the previous table entry
    names for its unwind data field, else what the field's bytes name under the virtual
    placement (needs resolved blobs). ``actual(index, predicted)`` is the fixup's target,
    on which the next unwind data field's prediction builds."""
    placement = _Placement(package)
    field = _field_reader(package)
    given = _table_targets(package)
    chained = _unwind_data_fields(package)
    arch = arch_for(package.machine)
    unwind_blobs = [b.offset for b in package.blobs if b.kind == BlobKind.UNWIND]
    following = unwind_blobs[0] if unwind_blobs else 0
    predictions = []
    addresses = _addresses(package, placement, package.fixups)
    for index, (fixup, address) in enumerate(zip(package.fixups, addresses, strict=True)):
        region = fixup.target_kind == TargetKind.REGION
        if region and fixup.offset in given:
            predicted = given[fixup.offset]
        elif region and fixup.offset in chained:
            predicted = following
        else:
            predicted = placement.target_of(fixup.target_kind, address)
        predictions.append(predicted)
        target = actual(index, predicted)
        if region and fixup.offset in chained:
            following = (target + _unwind_data_size(arch, field(target, 8)) + 3) & ~3
    return predictions


def _predictions(package: Package) -> list[int]:
    """For every fixup of a resolved package, its predicted target."""
    return _walk_predictions(package, lambda index, _predicted: package.fixups[index].target)


# fixup sites --------------------------------------------------------------------------
#
# The region stream lists a fixup only where the code does not predict it: each part of
# each function is read by hpatch.package.site_prediction, each function table entry's
# RVA fields are predicted (begin; on AMD64 end and unwind data; on ARM64 the second
# word unless it is packed unwind data), and each predicted site's target kind follows
# from the address its field names.

_ADDR32NB = {Machine.AMD64: Fixup.X64_ADDR32NB, Machine.ARM64: Fixup.ARM64_ADDR32NB}
_PREDICTORS = {Machine.AMD64: predict_x64, Machine.ARM64: predict_arm64}
_AS_PREDICTED, _NOT_A_FIXUP = 0, 1  # site marks; any other mark is a fixup's code byte


def _predicted_sites(package: Package) -> list[FixupEntry]:
    """The fixups the region's bytes predict (target UNRESOLVED), by offset; needs
    resolved blobs."""
    field = _field_reader(package)
    predictor = _PREDICTORS[package.machine]
    sites: dict[int, Fixup] = {}
    for function in package.functions:
        for part in function.parts:
            for at, kind in predictor(field(part.offset, part.size)):
                sites.setdefault(part.offset + at, kind)
    table: set[int] = set()
    for record in package.unwind:
        fields = [0, 4, 8] if package.machine == Machine.AMD64 else [0]
        second = record.table_offset + 4
        if package.machine == Machine.ARM64 and not field(second, 4)[0] & 3:
            fields.append(4)
        table.update(record.table_offset + at for at in fields)
    for offset in table:
        sites.setdefault(offset, _ADDR32NB[package.machine])
    placement = _Placement(package)
    found = tuple(
        FixupEntry(offset, sites[offset], TargetKind.OLD_RVA, UNRESOLVED)
        for offset in sorted(sites)
    )
    predicted = []
    for fixup, address in zip(found, _addresses(package, placement, found), strict=True):
        if fixup.offset in table:
            kind = TargetKind.REGION
        elif address in placement.slots:
            kind = TargetKind.IMPORT
        elif address >= placement.base or placement.moved(address):
            kind = TargetKind.REGION
        else:
            kind = TargetKind.OLD_RVA
        predicted.append(replace(fixup, target_kind=kind))
    return predicted


def _fixup_code(fixup: FixupEntry) -> int:
    return fixup.kind.coff_type | fixup.target_kind << 5


def _fixup_from_code(machine: Machine, offset: int, code: int) -> FixupEntry:
    return FixupEntry(
        offset,
        _enum(Fixup, _MACHINE_TAGS[machine] | (code & 0x1F), "fixup kind"),
        _enum(TargetKind, code >> 5, "fixup target kind"),
        UNRESOLVED,
    )


_PAIR_WINDOW = 8  # fixups an ADRP and the ADD/LDR/STR completing it may lie apart


def _pair(fixups: tuple[FixupEntry, ...], words: list[int], index: int, step: int) -> int | None:
    """The ADRP fixup (``step`` -1) or the ADD/LDR/STR fixup (``step`` 1) nearest to
    ``index`` that uses the same register: the page and the page offset of one address."""
    register = words[index] & 31 if step > 0 else (words[index] >> 5) & 31
    wanted = _PAGE_OFFSETS if step > 0 else (Fixup.ARM64_PAGEBASE_REL21,)
    other = index + step
    while 0 <= other < len(fixups) and abs(other - index) <= _PAIR_WINDOW:
        if fixups[other].kind in wanted:
            word = words[other]
            if (word & 31 if step < 0 else (word >> 5) & 31) == register:
                return other
        other += step
    return None


def _normalize_fields(package: Package) -> Package:
    """``package`` with every fixup field naming its target under the virtual placement
    where it can (so the region stream holds no target differences), and the function
    table fields predicted otherwise (begin, end, unwind data) zeroed."""
    placement = _Placement(package)
    given = set(_table_targets(package)) | _unwind_data_fields(package)
    blobs = {b.offset: bytearray(b.data) for b in package.blobs}
    starts = sorted(blobs)
    for fixup in package.fixups:
        start = starts[bisect.bisect_right(starts, fixup.offset) - 1]
        data = blobs[start]
        at = fixup.offset - start
        field = bytes(data[at : at + fixup.kind.field_size])
        if fixup.target_kind == TargetKind.REGION and fixup.offset in given:
            written: bytes | None = bytes(len(field))
            if fixup.kind.machine == Machine.ARM64 and fixup.kind not in _ABSOLUTE:
                written = None
        else:
            written = _write_field(
                fixup.kind,
                field,
                placement.address(fixup.offset),
                placement.target_address(fixup.target_kind, fixup.target),
            )
        if written is not None:
            data[at : at + len(written)] = written
    return replace(
        package, blobs=tuple(replace(b, data=bytes(blobs[b.offset])) for b in package.blobs)
    )


# the region stream ------------------------------------------------------------------


def _write_gap(out: _Writer, machine: Machine, gap: int) -> None:
    if machine == Machine.ARM64:  # fields are words: gaps are multiples of 4
        _write_scaled(out, gap, 2)
    else:
        out.uv(gap)


def _read_gap(data: _Reader, machine: Machine) -> int:
    return _read_scaled(data, 2, 1 << 32) if machine == Machine.ARM64 else data.uv(1 << 32)


def _region_plain(package: Package) -> bytes:
    """The region stream before compression: blob bytes by offset, a mark per predicted
    fixup site, the fixups no site predicts, then every fixup's target delta."""
    out = _Writer()
    for blob in package.blobs:
        out.raw(blob.data)
    actual = {f.offset: f for f in package.fixups}
    predicted = _predicted_sites(package)
    for site in predicted:
        fixup = actual.get(site.offset)
        if fixup is None:
            out.u8(_NOT_A_FIXUP)
        elif (fixup.kind, fixup.target_kind) == (site.kind, site.target_kind):
            out.u8(_AS_PREDICTED)
        else:
            out.u8(_fixup_code(fixup))
    sites = {site.offset for site in predicted}
    unpredicted = [f for f in package.fixups if f.offset not in sites]
    out.uv(len(unpredicted))
    previous = 0
    for fixup in unpredicted:
        _write_gap(out, package.machine, fixup.offset - previous)
        previous = fixup.offset
    for fixup in unpredicted:
        out.u8(_fixup_code(fixup))
    for fixup, predicted_target in zip(package.fixups, _predictions(package), strict=True):
        out.sv(fixup.target - predicted_target)
    return bytes(out.out)


def _with_region(package: Package, plain: bytes) -> Package:
    """``package`` with the blobs and fixup targets ``plain`` holds."""
    data = _Reader(plain, "region stream")
    blobs = tuple(replace(b, data=data.take(b.size), unresolved_size=0) for b in package.blobs)
    if any(not b.data for b in blobs):
        raise PackageFormatError("an empty blob")
    resolved = replace(package, blobs=blobs)
    machine = package.machine
    found = []
    predicted = _predicted_sites(resolved)
    for site in predicted:
        mark = data.u8()
        if mark == _AS_PREDICTED:
            found.append(site)
        elif mark != _NOT_A_FIXUP:
            found.append(_fixup_from_code(machine, site.offset, mark))
    sites = {site.offset for site in predicted}  # a site's fixup is its mark, never listed
    offsets = []
    previous = 0
    for _ in range(data.count(2, "unpredicted fixups")):
        gap = _read_gap(data, machine)
        if offsets and not gap:
            raise PackageFormatError("region stream: two unpredicted fixups at one offset")
        previous += gap
        offsets.append(previous)
    for offset in offsets:
        if offset in sites:
            raise PackageFormatError(
                f"region stream: fixup at 0x{offset:x} listed at a predicted site (its mark "
                "says what the site holds)"
            )
        found.append(_fixup_from_code(machine, offset, data.u8()))
    found.sort(key=lambda f: f.offset)
    listed = replace(resolved, fixups=tuple(found), stated_fixup_counts=None)
    stated = package.stated_fixup_counts
    if stated is not None and listed.fixup_counts != stated:
        raise PackageFormatError(
            "region stream: the fixups differ from the counts the metadata states"
        )
    validate_package(listed)
    deltas = [data.sv() for _ in found]
    data.finish()
    predictions = _walk_predictions(listed, lambda index, predicted: predicted + deltas[index])
    fixups = tuple(
        replace(f, target=predicted + delta)
        for f, predicted, delta in zip(found, predictions, deltas, strict=True)
    )
    for fixup in fixups:
        if not 0 <= fixup.target <= 0xFFFFFFFF:
            raise PackageFormatError(f"fixup at 0x{fixup.offset:x} has a target out of range")
    return replace(resolved, fixups=fixups, stated_fixup_counts=None)


def _dictionary_data(
    package: Package,
    dictionary: tuple[tuple[int, int], ...],
    extents: bool,
    baseline: bytes,
) -> bytes:
    ranges = list(dictionary) + (_extents(package) if extents else [])
    if sum(size for _, size in ranges) > MAX_DICTIONARY:
        raise PackageFormatError(f"the dictionary exceeds {MAX_DICTIONARY} bytes")
    for rva, size in ranges:
        if not (rva >= 0 and size > 0 and rva + size <= len(baseline)):
            raise PackageFormatError(f"dictionary range 0x{rva:x}+0x{size:x} is outside the image")
    return b"".join(baseline[rva : rva + size] for rva, size in ranges)


def _dictionary_spec(
    package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool
) -> bytes:
    """What the dictionary is made of, as a digest (a coded region stays valid while it
    is unchanged)."""
    spec = repr(
        (package.baseline.mapped_sha256, dictionary, extents, _extents(package) if extents else [])
    )
    return hashlib.sha256(spec.encode()).digest()


def _choose_dictionary(
    package: Package, baseline: bytes, hints: tuple[tuple[int, int], ...]
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The baseline ranges the dictionary starts with, and the ones worth searching for
    matches: ``hints`` (the builder's: the old code around the replaced functions) and
    where pieces of the blobs that are not replaced code (new data, unwind records, added
    functions) occur in the baseline. A small baseline is taken whole (one range)."""
    hints = tuple(
        (rva, min(size, len(baseline) - rva))
        for rva, size in hints
        if 0 <= rva < len(baseline) and size > 0
    )
    covered = sorted((rva, rva + size) for rva, size in [*_extents(package), *hints])
    replaced = {
        min(p.offset for p in f.parts)
        for f in package.functions
        if f.status == FunctionStatus.MODIFIED
    }
    pieces = [b.data for b in package.blobs if b.offset not in replaced or b.kind != BlobKind.CODE]
    searchable = sum(len(p) for p in pieces)
    hits = []
    if searchable and baseline:
        stride = max(4, -(-searchable * len(baseline) // _SCAN_BUDGET))
        for piece in pieces:
            for start in range(0, len(piece) - _GRAM + 1, stride):
                gram = piece[start : start + _GRAM]
                if len(set(gram)) < 3:
                    continue
                at = baseline.find(gram)
                if at < 0:
                    continue
                index = bisect.bisect_right(covered, (at, 1 << 62)) - 1
                if index >= 0 and at < covered[index][1]:
                    continue
                low, high = at - _RANGE_MARGIN, at + _GRAM + _RANGE_MARGIN
                hits.append((max(0, low), min(len(baseline), high)))
    ranges: list[list[int]] = []
    for low, high in sorted(hits):
        if ranges and low <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], high)
        else:
            ranges.append([low, high])
    searched = list(hints) + [(low, high - low) for low, high in ranges]
    if len(baseline) <= _WHOLE_IMAGE:
        return ((0, len(baseline)),), tuple(searched)
    total = 0
    chosen = []
    for rva, size in searched:
        if total + size > _WHOLE_IMAGE:
            break
        chosen.append((rva, size))
        total += size
    return tuple(chosen), tuple(chosen)


def _searched_positions(
    package: Package,
    dictionary: tuple[tuple[int, int], ...],
    extents: bool,
    searched: tuple[tuple[int, int], ...],
) -> list[tuple[int, int]]:
    """Where in the dictionary the ``searched`` baseline ranges lie, and the extents."""
    found = []
    at = 0
    for rva, size in dictionary:
        for low, length in searched:
            start, end = max(low, rva), min(low + length, rva + size)
            if start < end:
                found.append((at + start - rva, at + end - rva))
        at += size
    tail = sum(size for _, size in _extents(package)) if extents else 0
    found.append((at, at + tail))
    return found


def _compress(
    plain: bytes, dictionary: bytes, searched: list[tuple[int, int]] | None = None
) -> bytes:
    settings = _SETTINGS if len(plain) <= _TRY_ALL_SETTINGS else _SETTINGS[:1]
    streams = [
        lzma2.compress(plain, dictionary, lc=lc, lp=lp, pb=pb, searched=searched)
        for lc, lp, pb in settings
    ]
    return min(streams, key=len)


@functools.lru_cache(maxsize=64)
def _compress_metadata(metadata: bytes) -> bytes:
    return _compress(metadata, b"")


def code_region(
    package: Package, baseline_mapped: bytes, hints: tuple[tuple[int, int], ...] = ()
) -> Package:
    """``package`` with its region coded against the baseline's mapped image (un-rebased,
    ``PEImage.mapped``): what makes it small. ``build_package`` returns packages coded so;
    ``hints`` are baseline ranges (RVA, size) worth putting in the dictionary first.
    """
    baseline = bytes(baseline_mapped)
    _check_baseline(package, baseline)
    validate_package(package)
    if not package.resolved:
        raise PackageFormatError("an unresolved package cannot be coded again")
    package = _normalize_fields(package)
    plain = _region_plain(package)
    dictionary, searched = _choose_dictionary(package, baseline, hints)
    extents = bool(_extents(package))
    data = _dictionary_data(package, dictionary, extents, baseline)
    positions = _searched_positions(package, dictionary, extents, searched)
    coding = BodyCoding(
        dictionary=dictionary,
        dictionary_data=data,
        metadata=None,
        metadata_stream=None,
        region_sha256=hashlib.sha256(plain).digest(),
        region_size=len(plain),
        region_stream=_compress(plain, data, positions),
        spec=_dictionary_spec(package, dictionary, extents),
        extents=extents,
    )
    return replace(package, coding=coding)


# encoding ---------------------------------------------------------------------------


def _region_coding(package: Package) -> BodyCoding:
    """The coded region stream of ``package``: the one it came with while its region is
    unchanged, else coded afresh (against the same dictionary when its bytes are known,
    else against none)."""
    coding = package.coding
    if coding is not None:
        same_spec = coding.spec == _dictionary_spec(package, coding.dictionary, coding.extents)
        if not any(b.resolved for b in package.blobs) and all(
            f.target == UNRESOLVED for f in package.fixups
        ):
            if not same_spec:
                raise PackageFormatError(
                    "an unresolved package changed what its region is coded against"
                )
            return coding
        if not package.resolved_region:
            raise PackageFormatError("a package with some blobs or targets unresolved")
        plain = _region_plain(package)
        digest = hashlib.sha256(plain).digest()
        if same_spec and digest == coding.region_sha256:
            return coding
        if same_spec and coding.dictionary_data is not None:
            return replace(
                coding,
                region_sha256=digest,
                region_size=len(plain),
                region_stream=_compress(plain, coding.dictionary_data),
            )
    if not package.resolved_region:
        raise PackageFormatError("a package with unresolved blobs and no coded region")
    plain = _region_plain(package)
    return BodyCoding(
        dictionary=(),
        dictionary_data=b"",
        metadata=None,
        metadata_stream=None,
        region_sha256=hashlib.sha256(plain).digest(),
        region_size=len(plain),
        region_stream=_compress(plain, b""),
        spec=_dictionary_spec(package, (), False),
        extents=False,
    )


def _body(package: Package) -> bytes:
    validate_package(package)
    coding = _region_coding(package)
    metadata = _metadata(package, coding.dictionary, coding.extents)
    if package.coding is not None and package.coding.metadata == metadata:
        stream = package.coding.metadata_stream
        assert stream is not None
    else:
        stream = _compress_metadata(metadata)
    if len(metadata) > min(MAX_METADATA, _expansion_limit(stream)):  # what a reader refuses
        raise PackageFormatError(
            f"metadata of {len(metadata)} bytes (coded in {len(stream)}) exceeds what a reader "
            f"accepts: {MAX_METADATA} bytes, and {MAX_EXPANSION}x its coded size + "
            f"{EXPANSION_FLOOR}"
        )
    region_limit = _region_limit(package, coding.dictionary, coding.extents, coding.region_stream)
    if coding.region_size > region_limit:
        raise PackageFormatError(
            f"a region of {coding.region_size} bytes coded in {len(coding.region_stream)} "
            f"exceeds what a reader accepts ({region_limit})"
        )
    return stream + coding.region_stream


def signed_message(package: Package) -> bytes:
    """Header and body: the bytes the digest and the signature cover."""
    body = _body(package)  # validates the package, its version and flags included
    return HEADER.pack(MAGIC, package.version, package.flags) + body


def encode_package(package: Package) -> bytes:
    """The canonical bytes of ``package`` (its signature, if any, must already be made)."""
    message = signed_message(package)
    trailer = hashlib.sha256(message).digest()
    if package.signature is not None:
        trailer += package.signature.key_id + package.signature.signature
    data = message + trailer
    if len(data) > MAX_PACKAGE_SIZE:
        raise PackageFormatError(f"package of {len(data)} bytes exceeds {MAX_PACKAGE_SIZE}")
    return data


# decoding ---------------------------------------------------------------------------


def _check_baseline(package: Package, baseline: bytes) -> None:
    if (
        len(baseline) != package.baseline.size_of_image
        or hashlib.sha256(baseline).digest() != package.baseline.mapped_sha256
    ):
        raise PackageFormatError(
            "the image given is not the package's baseline (its mapped SHA-256 differs)"
        )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A package's fixed frame, read without decoding its body."""

    version: int
    flags: int
    message: bytes  # header and body: what the SHA-256 and the signature cover
    signature: SignatureInfo | None

    @property
    def body(self) -> bytes:
        return self.message[HEADER.size :]


def open_envelope(data: bytes) -> Envelope:
    """The header, the signed message and the signature of ``data``, with the size
    limit, magic, version, flags and SHA-256 checked; nothing of the body is decoded, so
    the cost is one hash over ``data``. PackageFormatError if any of it is wrong."""
    data = bytes(data)
    if len(data) > MAX_PACKAGE_SIZE:
        raise PackageFormatError(f"{len(data)} bytes exceeds the {MAX_PACKAGE_SIZE}-byte limit")
    if len(data) < HEADER.size or data[: len(MAGIC)] != MAGIC:
        raise PackageFormatError("not an hpatch package (bad magic)")
    _magic, version, flags = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise PackageFormatError(
            f"format version {version} is not supported (this hpatch reads {FORMAT_VERSION})"
        )
    if flags & ~Flag.SIGNED:
        raise PackageFormatError(f"unknown header flags 0x{flags:x}")
    trailer = DIGEST_SIZE + (KEY_ID_SIZE + SIGNATURE_SIZE if flags & Flag.SIGNED else 0)
    message_end = len(data) - trailer
    if message_end < HEADER.size:
        raise PackageFormatError(
            f"size mismatch: {len(data)} bytes cannot hold the header and a {trailer}-byte trailer"
        )
    message = data[:message_end]
    if data[message_end : message_end + DIGEST_SIZE] != hashlib.sha256(message).digest():
        raise PackageFormatError("integrity check failed: the SHA-256 does not match the content")
    signature = None
    if flags & Flag.SIGNED:
        start = message_end + DIGEST_SIZE
        signature = SignatureInfo(
            data[start : start + KEY_ID_SIZE], data[start + KEY_ID_SIZE : len(data)]
        )
    return Envelope(version, flags, message, signature)


def _expansion_limit(stream: bytes) -> int:
    """The most bytes ``stream`` may decode to before the package is trusted."""
    return EXPANSION_FLOOR + MAX_EXPANSION * len(stream)


def _region_limit(
    package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool, stream: bytes
) -> int:
    """The most bytes a region stream may decode to: what its dictionary holds (baseline
    bytes, which the reader has) plus the expansion limit of the stream itself."""
    held = sum(size for _, size in dictionary)
    if extents:
        held += sum(size for _, size in _extents(package))
    return held + _expansion_limit(stream)


def decode_package(data: bytes, baseline: bytes | None = None) -> Package:
    """Parse and check a package; PackageFormatError for anything malformed or corrupt.

    ``baseline`` is the baseline's mapped image (``PEImage.mapped``, un-rebased); with it
    the package comes back resolved (see ``resolve_blobs``), without it unresolved. The
    SHA-256 over header and body is checked here; whether the signature is trusted is a
    separate question, answered over the raw bytes before decoding by
    ``hpatch.package.envelope``. Without the baseline the cost is linear in
    ``len(data)``: the metadata may expand at most MAX_EXPANSION times (plus
    EXPANSION_FLOOR), and every count is bounded by the bytes left.
    """
    envelope = open_envelope(data)
    flags = envelope.flags
    try:
        metadata_stream, region_stream = lzma2.split(envelope.body)
        metadata_size = lzma2.unpacked_size(metadata_stream)
        if metadata_size > MAX_METADATA:
            raise ValueError(f"{metadata_size} bytes exceed the {MAX_METADATA}-byte limit")
        if metadata_size > _expansion_limit(metadata_stream):
            raise ValueError(
                f"{len(metadata_stream)} coded bytes claim {metadata_size}, past the "
                f"expansion limit ({MAX_EXPANSION}x + {EXPANSION_FLOOR})"
            )
        metadata = lzma2.decompress(metadata_stream, b"", metadata_size)
    except ValueError as exc:
        raise PackageFormatError(f"metadata: {exc}") from None
    package, dictionary, extents = _read_metadata(metadata, flags)
    if _metadata(package, dictionary, extents) != metadata:
        raise PackageFormatError("metadata: not in canonical form")
    try:
        region_size = lzma2.unpacked_size(region_stream)
    except ValueError as exc:
        raise PackageFormatError(f"region stream: {exc}") from None
    blob_bytes = sum(b.size for b in package.blobs)
    fixups = package.fixup_counts.total
    # blobs, a mark per predicted site (at most one a byte), the unpredicted fixups
    # (count, gap, code) and a target delta per fixup
    if not (blob_bytes + fixups <= region_size <= 2 * blob_bytes + _MAX_VARINT * (1 + 3 * fixups)):
        raise PackageFormatError(
            f"a region stream of {region_size} bytes cannot hold {blob_bytes} blob bytes and "
            f"{fixups} fixup targets"
        )
    # A region repeating a few bytes would make a reader decode and predict megabytes
    # the file does not hold: its size is bounded by the dictionary and its own bytes.
    limit = _region_limit(package, dictionary, extents, region_stream)
    if region_size > limit:
        raise PackageFormatError(
            f"region stream: {len(region_stream)} coded bytes claim {region_size}, past the "
            f"expansion limit ({limit}: the dictionary, and {MAX_EXPANSION}x the stream + "
            f"{EXPANSION_FLOOR})"
        )
    signature = envelope.signature
    coding = BodyCoding(
        dictionary=dictionary,
        dictionary_data=None,
        metadata=metadata,
        metadata_stream=metadata_stream,
        region_sha256=None,
        region_size=region_size,
        region_stream=region_stream,
        spec=_dictionary_spec(package, dictionary, extents),
        extents=extents,
    )
    package = replace(package, signature=signature, coding=coding)
    validate_package(package)
    if baseline is not None:
        return resolve_blobs(package, baseline)
    if not dictionary and not (extents and _extents(package)):
        return _resolve_region(package, b"")
    return package


def _resolve_region(package: Package, dictionary: bytes) -> Package:
    coding = package.coding
    assert coding is not None
    try:
        plain = lzma2.decompress(coding.region_stream, dictionary, coding.region_size)
    except ValueError as exc:
        raise PackageFormatError(f"region stream: {exc}") from None
    resolved = _with_region(package, plain)
    resolved = replace(
        resolved,
        coding=replace(
            coding, dictionary_data=dictionary, region_sha256=hashlib.sha256(plain).digest()
        ),
    )
    validate_package(resolved)
    return resolved


def resolve_blobs(package: Package, baseline_mapped: bytes) -> Package:
    """``package`` with its blob bytes, fixup targets and redirect digests, which the file
    codes against the baseline: ``baseline_mapped`` is the baseline's mapped image at its
    preferred base (``PEImage.mapped``). PackageFormatError if it is not the package's
    baseline, or the region stream does not decode against it.
    """
    baseline = bytes(baseline_mapped)
    _check_baseline(package, baseline)
    if not package.resolved_region:
        coding = package.coding
        if coding is None:
            raise PackageFormatError("an unresolved package without its coded region")
        package = _resolve_region(
            package, _dictionary_data(package, coding.dictionary, coding.extents, baseline)
        )
    redirects = []
    for redirect in package.redirects:
        start, length = redirect.strategy.span
        at = redirect.old_rva + start
        digest = hashlib.sha256(baseline[at : at + length]).digest()
        if redirect.original_sha256 and redirect.original_sha256 != digest:
            raise PackageFormatError(
                f"the redirect at old RVA 0x{redirect.old_rva:x} expects other bytes than the "
                "baseline has"
            )
        redirects.append(replace(redirect, original_sha256=digest))
    return replace(package, redirects=tuple(redirects), imports=named_imports(package, baseline))


# consistency ------------------------------------------------------------------------


def _fail(message: str) -> None:
    raise PackageFormatError(message)


def validate_package(package: Package) -> None:
    """Every cross-reference inside the package is consistent (shared by both directions);
    unresolved blobs and targets are checked for what is known of them.

    PackageFormatError names the first inconsistency.
    """
    machine = package.machine
    if machine not in _MACHINE_TAGS:
        _fail(f"machine {machine!r} is not supported")
    if package.version != FORMAT_VERSION:
        _fail(f"format version {package.version} is not {FORMAT_VERSION}")
    baseline = package.baseline
    if baseline.machine != machine:
        _fail("the baseline's machine differs from the package's")
    if len(baseline.mapped_sha256) != DIGEST_SIZE:
        _fail(f"the baseline's image digest is not {DIGEST_SIZE} bytes")
    if len(package.servicing.target_sha256) != TARGET_DIGEST_SIZE:
        _fail(f"the target's image digest is not {TARGET_DIGEST_SIZE} bytes")
    if not 0 <= baseline.time_date_stamp <= 0xFFFFFFFF or not (
        0 <= baseline.checksum <= 0xFFFFFFFF and 0 < baseline.size_of_image <= 0xFFFFFFFF
    ):
        _fail("an image identity field is out of range")
    if package.signature is not None and (
        len(package.signature.key_id) != KEY_ID_SIZE
        or len(package.signature.signature) != SIGNATURE_SIZE
    ):
        _fail("malformed signature block")
    kinds = [k for k, _ in package.prerequisites]
    if kinds != sorted(set(kinds)):
        _fail("prerequisites are not in order or repeat")
    if any(not 0 <= v < 1 << 64 for _, v in package.prerequisites):
        _fail("prerequisite value out of range")
    if not 1 <= package.servicing.sequence <= 0xFFFFFFFF:
        _fail(f"sequence {package.servicing.sequence} is not between 1 and 2^32-1")
    if package.servicing.supersedes is not None:
        first, last = package.servicing.supersedes
        if not first <= last < package.servicing.sequence:
            _fail("supersedes must be a range of earlier sequence numbers")
    size, alignment = package.region_size, package.region_alignment
    if not 0 < size <= MAX_REGION_SIZE:
        _fail(f"region size {size} out of range")
    if alignment <= 0 or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
        _fail(f"region alignment {alignment} is not a power of two up to {MAX_ALIGNMENT}")
    end = 0
    for blob in package.blobs:
        if (blob.unresolved_size > 0) == bool(blob.data) or blob.unresolved_size < 0:
            _fail(f"blob at region offset 0x{blob.offset:x} is neither resolved nor unresolved")
        if blob.offset < end or blob.offset + blob.size > size:
            _fail(f"blob at region offset 0x{blob.offset:x} overlaps, is empty or lies outside")
        end = blob.offset + blob.size
    blob_starts = [b.offset for b in package.blobs]

    def blob_for(offset: int, length: int, kinds: tuple[BlobKind, ...], what: str) -> Blob:
        index = bisect.bisect_right(blob_starts, offset) - 1
        if index >= 0:
            blob = package.blobs[index]
            if offset + length <= blob.offset + blob.size and blob.kind in kinds:
                return blob
        _fail(f"{what} at region offset 0x{offset:x} is not inside a {kinds[0].name} blob")
        raise AssertionError  # unreachable

    entries: dict[int, PatchFunction] = {}
    previous = -1
    for function in package.functions:
        if function.new_rva <= previous:
            _fail("functions are not in new-RVA order")
        previous = function.new_rva
        if not function.parts:
            _fail(f"function at new RVA 0x{function.new_rva:x} has no parts")
        if (function.status == FunctionStatus.ADDED) != (function.old_rva == NO_RVA):
            _fail(f"function at new RVA 0x{function.new_rva:x}: status and old RVA disagree")
        if function.status == FunctionStatus.ADDED and function.old_size:
            _fail(f"added function at new RVA 0x{function.new_rva:x} has an old size")
        if function.status == FunctionStatus.MODIFIED and not (
            function.old_rva >= 0
            and function.old_size >= 0
            and function.old_rva + function.old_size <= package.baseline.size_of_image
        ):
            _fail(f"function at old RVA 0x{function.old_rva:x} lies outside the baseline image")
        for part in function.parts:
            if part.size == 0:
                _fail("empty function part")
            if not 0 <= part.new_rva <= 0xFFFFFFFF:
                _fail(f"function part at new RVA 0x{part.new_rva:x} out of range")
            blob_for(part.offset, part.size, (BlobKind.CODE,), "function part")
        entries[function.entry_offset] = function
    for fixup in package.fixups:
        if fixup.kind.machine != machine:
            _fail(f"fixup {fixup.kind.name} in a {machine.name} package")
    offsets = [f.offset for f in package.fixups]
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        _fail("fixups are not in offset order or repeat")
    for fixup in package.fixups:
        blob_for(fixup.offset, fixup.kind.field_size, tuple(BlobKind), "fixup")
        if fixup.target == UNRESOLVED:
            continue
        if fixup.target_kind == TargetKind.IMPORT and not 0 <= fixup.target < len(package.imports):
            _fail(
                f"fixup at 0x{fixup.offset:x} names import {fixup.target} of {len(package.imports)}"
            )
        if fixup.target_kind == TargetKind.REGION and not 0 <= fixup.target < size:
            _fail(f"fixup at 0x{fixup.offset:x} targets past the region")
        if fixup.target_kind == TargetKind.OLD_RVA and not (
            0 <= fixup.target < package.baseline.size_of_image
        ):
            _fail(f"fixup at 0x{fixup.offset:x} targets past the baseline image")
    previous_slot = -1
    for item in package.imports:
        if item.old_iat_rva <= previous_slot:
            _fail("imports are not in ascending order of their slots, or repeat one")
        previous_slot = item.old_iat_rva
        if item.old_iat_rva >= package.baseline.size_of_image:
            _fail(f"the import slot at 0x{item.old_iat_rva:x} lies past the image")
        if not item.dll and (item.name or item.ordinal):
            _fail(f"the import slot at 0x{item.old_iat_rva:x} has a name but no DLL")
    previous_end = -1
    for redirect in package.redirects:
        if redirect.strategy.machine != machine:
            _fail(f"redirect {redirect.strategy.name} in a {machine.name} package")
        if len(redirect.original_sha256) not in (0, DIGEST_SIZE):
            _fail(f"redirect at old RVA 0x{redirect.old_rva:x} has a malformed digest")
        start, length = redirect.strategy.span
        if redirect.old_rva + start < max(previous_end, 0) or (
            redirect.old_rva + start + length > package.baseline.size_of_image
        ):
            _fail(f"redirect at old RVA 0x{redirect.old_rva:x} overlaps another or the image end")
        previous_end = redirect.old_rva + start + length
        function = entries.get(redirect.target_offset)
        if (
            function is None
            or function.status != FunctionStatus.MODIFIED
            or function.old_rva != redirect.old_rva
        ):
            _fail(f"redirect at old RVA 0x{redirect.old_rva:x} does not lead to its function")
    modified = sum(1 for f in package.functions if f.status == FunctionStatus.MODIFIED)
    if modified != len(package.redirects):
        _fail(f"{modified} modified functions but {len(package.redirects)} redirects")
    for record in package.unwind:
        if not 0 <= record.begin_offset < record.end_offset <= size:
            _fail(f"unwind record at 0x{record.table_offset:x} has an empty or outside range")
        blob_for(
            record.table_offset, _TABLE_ENTRY[machine], (BlobKind.FUNCTION_TABLE,), "unwind record"
        )
    coding = package.coding
    if coding is not None:
        ranges = list(coding.dictionary) + (_extents(package) if coding.extents else [])
        for rva, length in ranges:
            if not (rva >= 0 and length > 0 and rva + length <= package.baseline.size_of_image):
                _fail(f"dictionary range 0x{rva:x}+0x{length:x} lies outside the baseline image")
        if sum(length for _, length in ranges) > MAX_DICTIONARY:
            _fail(f"the dictionary exceeds {MAX_DICTIONARY} bytes")
    new_imports.validate(package)
