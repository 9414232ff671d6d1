"""What a hotpatch package holds, as immutable records (the byte layout is in format/).

A package decoded without its baseline image is *unresolved*: the file codes the
region's bytes against the baseline, and the fixups' sites with them (most follow from
the code), so until ``hpatch.package.format.resolve_blobs`` is given the baseline,
blobs know only their size (``Blob.resolved`` is false), ``fixups`` is empty
(``fixup_counts`` says how many each function has), redirect digests are empty and
imports know their IAT slot only (new imports, which the package names itself, are
complete). Everything else (identity, servicing, prerequisites,
layout, functions, redirect strategies, unwind records, the signature) is known
without it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from hpatch.arch import Machine
from hpatch.arch.rewrite import Fixup, Redirect

FORMAT_VERSION = 5
#: A package names the build it installs by this many leading bytes of that image's
#: mapped SHA-256 (``hpatch verify`` checks it): an identifier, not a guard.
TARGET_DIGEST_SIZE = 8
NO_RVA = 0xFFFFFFFF


class Flag(IntEnum):
    """Header flag bits."""

    SIGNED = 0x1


class Prerequisite(IntEnum):
    """Conditions the applier checks, one by one, before touching the target."""

    MACHINE = 1  # value: IMAGE_FILE_MACHINE of the target
    BASELINE = 2  # value: 0; the baseline record must match the target exactly
    MIN_FORMAT_VERSION = 3  # value: the oldest format version able to apply the package
    NOT_HYBRID = 4  # value: 0; the target must not be a CHPE/ARM64EC/ARM64X image
    REGION_REACH = 5  # value: max bytes between any byte of the image and of the region
    REGION_ABOVE_IMAGE = 6  # value: 0; the region must lie above the image base (RVA fixups)


class TargetKind(IntEnum):
    """What the ``target`` of a fixup counts in."""

    OLD_RVA = 1  # an RVA of the baseline image
    REGION = 2  # an offset in the patch region
    IMPORT = 3  # an index into the package's import list; binds to the baseline's IAT slot


class BlobKind(IntEnum):
    """What a piece of the patch region holds."""

    CODE = 1  # a function's code (its parts, laid out in order)
    RODATA = 2  # read-only data new code references
    UNWIND = 3  # unwind records (x64 UNWIND_INFO, ARM64 .xdata)
    FUNCTION_TABLE = 4  # RUNTIME_FUNCTION entries for the patch code
    IMPORT_SLOTS = 5  # 8-byte slots of new imports, which the applier binds
    DATA = 6  # globals only the new build has, with its initial bytes (writable pages)


class FunctionStatus(IntEnum):
    MODIFIED = 1  # replaces a function of the baseline, which is redirected
    ADDED = 2  # new code reached only from other patch code


@dataclass(frozen=True, slots=True)
class Baseline:
    """The one image a package applies to."""

    file_name: str
    machine: Machine
    time_date_stamp: int
    size_of_image: int
    checksum: int
    image_base: int
    mapped_sha256: bytes


@dataclass(frozen=True, slots=True)
class Servicing:
    """Where the package sits in the baseline's servicing line."""

    sequence: int
    supersedes: tuple[int, int] | None  # inclusive range of sequence numbers replaced
    description: str
    advisory: str
    tool_version: str
    #: The build the package turns the baseline into: the first TARGET_DIGEST_SIZE
    #: bytes of its mapped image's SHA-256.
    target_sha256: bytes


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes placed at ``offset`` of the patch region."""

    kind: BlobKind
    offset: int
    data: bytes
    #: The blob's size while its bytes are unknown (an unresolved package; ``data`` is
    #: empty); 0 once they are known.
    unresolved_size: int = 0

    @property
    def size(self) -> int:
        return self.unresolved_size or len(self.data)

    @property
    def resolved(self) -> bool:
        return not self.unresolved_size


@dataclass(frozen=True, slots=True)
class Part:
    """A contiguous piece of a function: ``size`` bytes at region ``offset``, from ``new_rva``."""

    offset: int
    size: int
    new_rva: int


@dataclass(frozen=True, slots=True)
class PatchFunction:
    """A function the package carries."""

    status: FunctionStatus
    old_rva: int  # NO_RVA for an added function
    old_size: int
    new_rva: int
    name: str
    parts: tuple[Part, ...]  # the first is the entry

    @property
    def entry_offset(self) -> int:
        return self.parts[0].offset

    @property
    def new_size(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True, slots=True)
class ImportRef:
    """An import the patch code calls through: by name, or by ordinal when name is empty.

    The file stores the slot only; the baseline says what it holds, so the DLL, name and
    ordinal are empty (``""``, ``""``, 0) in an unresolved package."""

    dll: str
    name: str
    ordinal: int
    old_iat_rva: int  # the slot in the baseline the import binds to


@dataclass(frozen=True, slots=True)
class NewImport:
    """An import the baseline does not have, by name, or by ordinal when name is empty.

    The package carries its 8-byte slot at region ``slot_offset`` (a REGION fixup of the
    carried code names it, as the new build's code names its IAT slot); the applier
    binds the slot as the loader binds an image's imports, before any redirect."""

    dll: str
    name: str
    ordinal: int
    slot_offset: int

    @property
    def label(self) -> str:
        """DLL!name, or DLL!#ordinal."""
        return f"{self.dll}!{self.name or f'#{self.ordinal}'}"


@dataclass(frozen=True, slots=True)
class FixupEntry:
    """Bind the field at region ``offset`` to ``target`` (counted in ``target_kind``);
    An unresolved package has none: its fixups are coded against the baseline."""

    offset: int
    kind: Fixup
    target_kind: TargetKind
    target: int


@dataclass(frozen=True, slots=True)
class FixupSite:
    """Where a fixup is and what it writes, before its target is read: the region stream
    states every fixup's site first, then the targets."""

    offset: int
    kind: Fixup
    target_kind: TargetKind


#: What a fixup's place and kind are read from: a site, or a whole fixup.
Sited = FixupSite | FixupEntry


@dataclass(frozen=True, slots=True)
class RedirectEntry:
    """Send the baseline function at ``old_rva`` to region ``target_offset``.

    ``original_sha256`` is the digest of the bytes the redirect overwrites in the
    baseline (its span); the applier compares before writing. It is empty in an
    unresolved package (the file does not repeat the baseline's bytes).
    """

    old_rva: int
    strategy: Redirect
    target_offset: int
    original_sha256: bytes


@dataclass(frozen=True, slots=True)
class UnwindRecord:
    """A RUNTIME_FUNCTION for patch code; offsets are into the region.

    ``table_offset`` is where the 12-byte (x64) or 8-byte (ARM64) entry sits in the
    FUNCTION_TABLE blob; its RVA fields are bound by ADDR32NB fixups.
    """

    table_offset: int
    begin_offset: int
    end_offset: int


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """The Ed25519 signature over header and body, and which key made it."""

    key_id: bytes  # 8 bytes: the start of SHA-256 over the raw public key
    signature: bytes  # 64 bytes


@dataclass(frozen=True, slots=True)
class BodyCoding:
    """How a package's body is compressed (see format/dictionary.py), kept with a built or decoded
    package so that it encodes to the same bytes again without the baseline at hand.

    The region stream is coded against a dictionary: the baseline ranges (RVA, size) in
    ``dictionary``, then, if ``extents``, the old code of every replaced function.
    ``spec`` is a digest of what the dictionary is made of and ``dictionary_data`` its
    bytes when known; ``metadata``/``metadata_stream`` and ``region_sha256``/
    ``region_stream`` pair the plain and the compressed form of the two body parts.
    """

    dictionary: tuple[tuple[int, int], ...]
    extents: bool
    spec: bytes
    dictionary_data: bytes | None
    metadata: bytes | None
    metadata_stream: bytes | None
    region_sha256: bytes | None
    region_size: int
    region_stream: bytes


@dataclass(frozen=True, slots=True)
class FixupCounts:
    """How many fixups lie in each function's parts (in function order), and how many
    elsewhere (data, unwind records, function tables): what the file says of its fixups
    without the baseline."""

    functions: tuple[int, ...]
    other: int

    @property
    def total(self) -> int:
        return sum(self.functions) + self.other

    @classmethod
    def of(cls, functions: tuple[PatchFunction, ...], fixups: Sequence[Sited]) -> FixupCounts:
        spans = sorted(
            (part.offset, part.offset + part.size, index)
            for index, function in enumerate(functions)
            for part in function.parts
        )
        starts = [start for start, _, _ in spans]
        counts = [0] * len(functions)
        other = 0
        for fixup in fixups:
            at = bisect.bisect_right(starts, fixup.offset) - 1
            if at >= 0 and fixup.offset < spans[at][1]:
                counts[spans[at][2]] += 1
            else:
                other += 1
        return cls(tuple(counts), other)


@dataclass(frozen=True, slots=True)
class Package:
    """A whole hotpatch package."""

    machine: Machine
    baseline: Baseline
    servicing: Servicing
    prerequisites: tuple[tuple[Prerequisite, int], ...]
    region_size: int
    region_alignment: int
    blobs: tuple[Blob, ...]
    functions: tuple[PatchFunction, ...]
    imports: tuple[ImportRef, ...]
    fixups: tuple[FixupEntry, ...]
    redirects: tuple[RedirectEntry, ...]
    unwind: tuple[UnwindRecord, ...]
    #: Imports the baseline lacks, by slot offset: their slots are in IMPORT_SLOTS blobs.
    new_imports: tuple[NewImport, ...] = ()
    version: int = FORMAT_VERSION
    signature: SignatureInfo | None = None
    #: The compressed form of the body (a representation, not content: not compared).
    coding: BodyCoding | None = field(default=None, compare=False, repr=False)
    #: What the metadata says of the fixups: an unresolved package knows no more of them.
    stated_fixup_counts: FixupCounts | None = field(default=None, compare=False, repr=False)

    @property
    def fixup_counts(self) -> FixupCounts:
        """Fixups per function and elsewhere: as stated (a resolved region agrees with the
        statement, see resolved_region), else counted."""
        if self.stated_fixup_counts is not None:
            return self.stated_fixup_counts
        return FixupCounts.of(self.functions, self.fixups)

    @property
    def flags(self) -> int:
        return Flag.SIGNED if self.signature is not None else 0

    @property
    def resolved_region(self) -> bool:
        """Whether blob bytes and fixup targets are known (what binding the region needs)."""
        return all(b.resolved for b in self.blobs) and (
            self.stated_fixup_counts is None
            or FixupCounts.of(self.functions, self.fixups) == self.stated_fixup_counts
        )

    @property
    def resolved(self) -> bool:
        """Whether blob bytes, fixup targets and redirect digests are all known."""
        return self.resolved_region and all(r.original_sha256 for r in self.redirects)


@dataclass(frozen=True, slots=True)
class EncodedPackage:
    """A package with its bytes: read from a file (the bytes as the file holds them) or
    encoded once (``hpatch.package.format.encode``). What an applier checks the
    signature over and records by digest, so the package is never encoded again to
    learn either; encoding is canonical, so both give the same bytes for a package."""

    package: Package
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.data).digest()
