"""The ``.hpk`` byte format: ``encode_package`` and the defensive ``decode_package``.

The layout is specified in docs/FORMAT.md. Encoding is canonical (records in a fixed
order, no padding, no free-form slack), so ``encode(decode(data)) == data`` for every
package the decoder accepts. The decoder checks every length and offset before use,
caps every size, and reports any defect as PackageFormatError.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
from collections.abc import Callable, Iterable
from typing import TypeVar

from hpatch.arch import Machine
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.errors import PackageFormatError
from hpatch.package.model import (
    FORMAT_VERSION,
    NO_RVA,
    Baseline,
    Blob,
    BlobKind,
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

MAGIC = b"\x89HPK\r\n\x1a\n"
HEADER = struct.Struct("<8sHHIIHH")  # magic, version, machine, flags, body size, sections, 0
SECTION = struct.Struct("<HHI")  # tag, reserved, length
DIGEST_SIZE = 32
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64
MAX_PACKAGE_SIZE = 64 << 20
MAX_REGION_SIZE = 64 << 20
MAX_STRING = 4096
MAX_ALIGNMENT = 1 << 16

T = TypeVar("T")

# Section tags, in the order they appear; each exactly once.
TAG_BASELINE = 1
TAG_SERVICING = 2
TAG_PREREQUISITES = 3
TAG_REGION = 4
TAG_FUNCTIONS = 5
TAG_IMPORTS = 6
TAG_FIXUPS = 7
TAG_REDIRECTS = 8
TAG_UNWIND = 9
TAGS = (
    TAG_BASELINE,
    TAG_SERVICING,
    TAG_PREREQUISITES,
    TAG_REGION,
    TAG_FUNCTIONS,
    TAG_IMPORTS,
    TAG_FIXUPS,
    TAG_REDIRECTS,
    TAG_UNWIND,
)
TAG_NAMES = {
    TAG_BASELINE: "baseline",
    TAG_SERVICING: "servicing",
    TAG_PREREQUISITES: "prerequisites",
    TAG_REGION: "region",
    TAG_FUNCTIONS: "functions",
    TAG_IMPORTS: "imports",
    TAG_FIXUPS: "fixups",
    TAG_REDIRECTS: "redirects",
    TAG_UNWIND: "unwind",
}

_BASELINE_FIXED = struct.Struct("<HHIIIQ32s")
_SERVICING_FIXED = struct.Struct("<IIII")
_PREREQUISITE = struct.Struct("<HHQ")
_REGION_FIXED = struct.Struct("<III")
_BLOB = struct.Struct("<B3sII")
_FUNCTION_FIXED = struct.Struct("<BBHIII")
_PART = struct.Struct("<III")
_IMPORT_FIXED = struct.Struct("<HHI")
_FIXUP = struct.Struct("<IHBBI")
_REDIRECT = struct.Struct("<IB3sI32s")
_UNWIND = struct.Struct("<III")
_SUPERSEDES = 0x1


# encoding ---------------------------------------------------------------------------


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_STRING:
        raise PackageFormatError(f"string of {len(raw)} bytes exceeds {MAX_STRING}")
    return struct.pack("<H", len(raw)) + raw


def _baseline(baseline: Baseline) -> bytes:
    return _string(baseline.file_name) + _BASELINE_FIXED.pack(
        baseline.machine,
        0,
        baseline.time_date_stamp,
        baseline.size_of_image,
        baseline.checksum,
        baseline.image_base,
        baseline.mapped_sha256,
    )


def _counted(items: Iterable[bytes]) -> bytes:
    encoded = list(items)
    return struct.pack("<I", len(encoded)) + b"".join(encoded)


def _sections(package: Package) -> list[tuple[int, bytes]]:
    servicing = package.servicing
    first, last = servicing.supersedes or (0, 0)
    flags = _SUPERSEDES if servicing.supersedes is not None else 0
    region = _REGION_FIXED.pack(
        package.region_size, package.region_alignment, len(package.blobs)
    ) + b"".join(
        _BLOB.pack(b.kind, bytes(3), b.offset, len(b.data)) + b.data for b in package.blobs
    )
    functions = _counted(
        _FUNCTION_FIXED.pack(f.status, 0, len(f.parts), f.old_rva, f.old_size, f.new_rva)
        + _string(f.name)
        + b"".join(_PART.pack(p.offset, p.size, p.new_rva) for p in f.parts)
        for f in package.functions
    )
    return [
        (TAG_BASELINE, _baseline(package.baseline)),
        (
            TAG_SERVICING,
            _SERVICING_FIXED.pack(servicing.sequence, flags, first, last)
            + _string(servicing.description)
            + _string(servicing.advisory)
            + _string(servicing.tool_version)
            + _baseline(servicing.target),
        ),
        (
            TAG_PREREQUISITES,
            struct.pack("<H", len(package.prerequisites))
            + b"".join(_PREREQUISITE.pack(k, 0, v) for k, v in package.prerequisites),
        ),
        (TAG_REGION, region),
        (TAG_FUNCTIONS, functions),
        (
            TAG_IMPORTS,
            _counted(
                _string(i.dll) + _string(i.name) + _IMPORT_FIXED.pack(i.ordinal, 0, i.old_iat_rva)
                for i in package.imports
            ),
        ),
        (
            TAG_FIXUPS,
            _counted(
                _FIXUP.pack(f.offset, f.kind, f.target_kind, 0, f.target) for f in package.fixups
            ),
        ),
        (
            TAG_REDIRECTS,
            _counted(
                _REDIRECT.pack(r.old_rva, r.strategy, bytes(3), r.target_offset, r.original_sha256)
                for r in package.redirects
            ),
        ),
        (
            TAG_UNWIND,
            _counted(
                _UNWIND.pack(u.table_offset, u.begin_offset, u.end_offset) for u in package.unwind
            ),
        ),
    ]


def signed_message(package: Package) -> bytes:
    """Header and body: the bytes the digest and the signature cover."""
    validate_package(package)
    body = b"".join(
        SECTION.pack(tag, 0, len(payload)) + payload for tag, payload in _sections(package)
    )
    header = HEADER.pack(
        MAGIC, package.version, package.machine, package.flags, len(body), len(TAGS), 0
    )
    return header + body


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


class _Cursor:
    """Reads little-endian fields from ``data[start:end]``, never past ``end``."""

    def __init__(self, data: bytes, start: int, end: int, what: str) -> None:
        self.data, self.position, self.end, self.what = data, start, end, what

    def take(self, size: int) -> bytes:
        if size < 0 or self.position + size > self.end:
            raise PackageFormatError(
                f"{self.what}: truncated at byte {self.position} (needs {size} more bytes)"
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size))

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def string(self, field: str) -> str:
        size = self.u16()
        if size > MAX_STRING:
            raise PackageFormatError(f"{self.what}: {field} is {size} bytes (limit {MAX_STRING})")
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PackageFormatError(f"{self.what}: {field} is not UTF-8") from exc

    def count(self, minimum_record: int) -> int:
        """A record count, refused unless that many minimal records fit in what is left."""
        count = self.u32()
        self.ensure_fits(
            count,
            minimum_record,
            f"{self.what}: {count} records cannot fit in {self.end - self.position} bytes",
        )
        return count

    def ensure_fits(self, count: int, record_size: int, message: str) -> None:
        """Refuse ``count`` records of ``record_size`` bytes that the rest cannot hold."""
        if count * record_size > self.end - self.position:
            raise PackageFormatError(message)

    def records(self, minimum_record: int, read: Callable[[], T]) -> tuple[T, ...]:
        return tuple(read() for _ in range(self.count(minimum_record)))

    def finish(self) -> None:
        if self.position != self.end:
            raise PackageFormatError(
                f"{self.what}: {self.end - self.position} unexpected bytes at its end"
            )


def _zero(cursor: _Cursor, reserved: int | bytes) -> None:
    if any(reserved) if isinstance(reserved, bytes) else reserved:
        raise PackageFormatError(f"{cursor.what}: reserved field is not zero")


def _enum(kind: Callable[[int], T], value: int, what: str) -> T:
    try:
        return kind(value)
    except ValueError:
        raise PackageFormatError(f"unknown {what} {value}") from None


def _read_baseline(cursor: _Cursor) -> Baseline:
    name = cursor.string("file name")
    machine, reserved, stamp, size, checksum, base, digest = cursor.unpack(_BASELINE_FIXED)
    _zero(cursor, reserved)
    return Baseline(
        name, _enum(Machine, machine, "machine"), stamp, size, checksum, base, bytes(digest)
    )


def _read_servicing(cursor: _Cursor) -> Servicing:
    sequence, flags, first, last = cursor.unpack(_SERVICING_FIXED)
    if flags & ~_SUPERSEDES or (not flags and (first or last)):
        raise PackageFormatError("servicing: unknown flags or a stray supersedes range")
    supersedes = (first, last) if flags else None
    description = cursor.string("description")
    advisory = cursor.string("advisory")
    tool_version = cursor.string("tool version")
    target = _read_baseline(cursor)
    return Servicing(sequence, supersedes, description, advisory, tool_version, target)


def _read_prerequisites(cursor: _Cursor) -> tuple[tuple[Prerequisite, int], ...]:
    count = cursor.u16()
    items = []
    for _ in range(count):
        kind, reserved, value = cursor.unpack(_PREREQUISITE)
        _zero(cursor, reserved)
        items.append((_enum(Prerequisite, kind, "prerequisite"), value))
    return tuple(items)


def _read_region(cursor: _Cursor) -> tuple[int, int, tuple[Blob, ...]]:
    size, alignment, count = cursor.unpack(_REGION_FIXED)
    cursor.ensure_fits(count, _BLOB.size, f"region: {count} blobs cannot fit")
    blobs = []
    for _ in range(count):
        kind, reserved, offset, length = cursor.unpack(_BLOB)
        _zero(cursor, reserved)
        blobs.append(Blob(_enum(BlobKind, kind, "blob kind"), offset, cursor.take(length)))
    return size, alignment, tuple(blobs)


def _read_function(cursor: _Cursor) -> PatchFunction:
    status, reserved, part_count, old_rva, old_size, new_rva = cursor.unpack(_FUNCTION_FIXED)
    _zero(cursor, reserved)
    name = cursor.string("function name")
    cursor.ensure_fits(part_count, _PART.size, f"functions: {part_count} parts cannot fit")
    parts = tuple(Part(*cursor.unpack(_PART)) for _ in range(part_count))
    return PatchFunction(
        _enum(FunctionStatus, status, "function status"), old_rva, old_size, new_rva, name, parts
    )


def _read_import(cursor: _Cursor) -> ImportRef:
    dll = cursor.string("import dll")
    name = cursor.string("import name")
    ordinal, reserved, slot = cursor.unpack(_IMPORT_FIXED)
    _zero(cursor, reserved)
    return ImportRef(dll, name, ordinal, slot)


def _read_fixup(cursor: _Cursor) -> FixupEntry:
    offset, kind, target_kind, reserved, target = cursor.unpack(_FIXUP)
    _zero(cursor, reserved)
    return FixupEntry(
        offset,
        _enum(Fixup, kind, "fixup kind"),
        _enum(TargetKind, target_kind, "fixup target kind"),
        target,
    )


def _read_redirect(cursor: _Cursor) -> RedirectEntry:
    old_rva, strategy, reserved, target_offset, digest = cursor.unpack(_REDIRECT)
    _zero(cursor, reserved)
    return RedirectEntry(
        old_rva, _enum(Redirect, strategy, "redirect strategy"), target_offset, bytes(digest)
    )


def _read_unwind(cursor: _Cursor) -> UnwindRecord:
    return UnwindRecord(*cursor.unpack(_UNWIND))


def decode_package(data: bytes) -> Package:
    """Parse and check a package; PackageFormatError for anything malformed or corrupt.

    The SHA-256 over header and body is checked here; whether the signature is
    trusted is a separate question (hpatch.package.signing).
    """
    data = bytes(data)
    if len(data) > MAX_PACKAGE_SIZE:
        raise PackageFormatError(f"{len(data)} bytes exceeds the {MAX_PACKAGE_SIZE}-byte limit")
    if len(data) < HEADER.size or data[: len(MAGIC)] != MAGIC:
        raise PackageFormatError("not an hpatch package (bad magic)")
    _magic, version, machine, flags, body_size, section_count, reserved = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise PackageFormatError(
            f"format version {version} is not supported (this hpatch reads {FORMAT_VERSION})"
        )
    if flags & ~Flag.SIGNED or reserved:
        raise PackageFormatError(f"unknown header flags 0x{flags:x}")
    trailer = DIGEST_SIZE + (KEY_ID_SIZE + SIGNATURE_SIZE if flags & Flag.SIGNED else 0)
    message_end = HEADER.size + body_size
    if message_end + trailer != len(data):
        raise PackageFormatError(
            f"size mismatch: header and body take {message_end} bytes and the trailer "
            f"{trailer}, but the package has {len(data)}"
        )
    expected = hashlib.sha256(data[:message_end]).digest()
    if data[message_end : message_end + DIGEST_SIZE] != expected:
        raise PackageFormatError("integrity check failed: the SHA-256 does not match the content")
    if section_count != len(TAGS):
        raise PackageFormatError(f"{section_count} sections, expected {len(TAGS)}")
    payloads: dict[int, _Cursor] = {}
    position = HEADER.size
    for expected_tag in TAGS:
        tag, reserved, length = _Cursor(data, position, message_end, "section header").unpack(
            SECTION
        )
        if tag != expected_tag or reserved:
            raise PackageFormatError(
                f"section {tag} where the {TAG_NAMES[expected_tag]} section belongs"
            )
        start = position + SECTION.size
        if start + length > message_end:
            raise PackageFormatError(f"{TAG_NAMES[tag]} section runs past the body")
        payloads[tag] = _Cursor(data, start, start + length, TAG_NAMES[tag])
        position = start + length
    if position != message_end:
        raise PackageFormatError(f"{message_end - position} unexpected bytes after the sections")

    def parse(tag: int, read: Callable[[_Cursor], T]) -> T:
        cursor = payloads[tag]
        value = read(cursor)
        cursor.finish()
        return value

    region_size, alignment, blobs = parse(TAG_REGION, _read_region)
    signature = None
    if flags & Flag.SIGNED:
        start = message_end + DIGEST_SIZE
        signature = SignatureInfo(
            data[start : start + KEY_ID_SIZE], data[start + KEY_ID_SIZE : len(data)]
        )
    package = Package(
        machine=_enum(Machine, machine, "machine"),
        baseline=parse(TAG_BASELINE, _read_baseline),
        servicing=parse(TAG_SERVICING, _read_servicing),
        prerequisites=parse(TAG_PREREQUISITES, _read_prerequisites),
        region_size=region_size,
        region_alignment=alignment,
        blobs=blobs,
        functions=parse(
            TAG_FUNCTIONS, lambda c: c.records(_FUNCTION_FIXED.size, lambda: _read_function(c))
        ),
        imports=parse(TAG_IMPORTS, lambda c: c.records(8, lambda: _read_import(c))),
        fixups=parse(TAG_FIXUPS, lambda c: c.records(_FIXUP.size, lambda: _read_fixup(c))),
        redirects=parse(
            TAG_REDIRECTS, lambda c: c.records(_REDIRECT.size, lambda: _read_redirect(c))
        ),
        unwind=parse(TAG_UNWIND, lambda c: c.records(_UNWIND.size, lambda: _read_unwind(c))),
        version=version,
        signature=signature,
    )
    validate_package(package)
    return package


# consistency ------------------------------------------------------------------------


def _fail(message: str) -> None:
    raise PackageFormatError(message)


def validate_package(package: Package) -> None:
    """Every cross-reference inside the package is consistent (shared by both directions).

    PackageFormatError names the first inconsistency.
    """
    machine = package.machine
    if package.baseline.machine != machine or package.servicing.target.machine != machine:
        _fail("the baseline's machine differs from the package's")
    for layout in (package.baseline, package.servicing.target):
        if len(layout.mapped_sha256) != 32:
            _fail("an image digest is not 32 bytes")
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
        if blob.offset < end or not blob.data or blob.offset + len(blob.data) > size:
            _fail(f"blob at region offset 0x{blob.offset:x} overlaps, is empty or lies outside")
        end = blob.offset + len(blob.data)
    blob_starts = [b.offset for b in package.blobs]

    def blob_for(offset: int, length: int, kinds: tuple[BlobKind, ...], what: str) -> Blob:
        index = bisect.bisect_right(blob_starts, offset) - 1
        if index >= 0:
            blob = package.blobs[index]
            if offset + length <= blob.offset + len(blob.data) and blob.kind in kinds:
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
        for part in function.parts:
            if part.size == 0:
                _fail("empty function part")
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
        if fixup.target_kind == TargetKind.IMPORT and fixup.target >= len(package.imports):
            _fail(
                f"fixup at 0x{fixup.offset:x} names import {fixup.target} of {len(package.imports)}"
            )
        if fixup.target_kind == TargetKind.REGION and fixup.target >= size:
            _fail(f"fixup at 0x{fixup.offset:x} targets past the region")
        if (
            fixup.target_kind == TargetKind.OLD_RVA
            and fixup.target >= package.baseline.size_of_image
        ):
            _fail(f"fixup at 0x{fixup.offset:x} targets past the baseline image")
    for item in package.imports:
        if not item.dll:
            _fail("import without a DLL name")
        if item.old_iat_rva >= package.baseline.size_of_image:
            _fail(f"import {item.dll}!{item.name or item.ordinal} has its slot past the image")
    previous_end = -1
    for redirect in package.redirects:
        if redirect.strategy.machine != machine:
            _fail(f"redirect {redirect.strategy.name} in a {machine.name} package")
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
        if not record.begin_offset < record.end_offset <= size:
            _fail(f"unwind record at 0x{record.table_offset:x} has an empty or outside range")
        blob_for(record.table_offset, 8, (BlobKind.FUNCTION_TABLE,), "unwind record")
