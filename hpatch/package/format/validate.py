"""The consistency of a package's cross-references, checked in both directions."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

from hpatch.arch.kinds import MACHINE_TAGS
from hpatch.errors import PackageFormatError
from hpatch.package import new_imports
from hpatch.package.format.dictionary import replaced_extents
from hpatch.package.format.wire import (
    DIGEST_SIZE,
    KEY_ID_SIZE,
    MAX_ALIGNMENT,
    MAX_DICTIONARY,
    MAX_REGION_SIZE,
    SIGNATURE_SIZE,
    arch_of,
)
from hpatch.package.model import (
    FORMAT_VERSION,
    NO_RVA,
    TARGET_DIGEST_SIZE,
    Blob,
    BlobKind,
    FixupEntry,
    FixupSite,
    FunctionStatus,
    Package,
    PatchFunction,
    Sited,
    TargetKind,
)


def _fail(message: str) -> None:
    raise PackageFormatError(message)


def validate_package(package: Package, *, sites: Sequence[FixupSite] | None = None) -> None:
    """Every cross-reference inside the package is consistent (shared by both directions);
    unresolved blobs are checked for what is known of them. ``sites``, while the region
    stream is read: the fixups' places and kinds, their targets not read yet (the
    package holds no fixups then).

    PackageFormatError names the first inconsistency.
    """
    machine = package.machine
    if machine not in MACHINE_TAGS:
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
    placed: Sequence[Sited] = package.fixups if sites is None else sites
    if sites is not None and package.fixups:
        _fail("fixup sites given for a package that has its fixups")
    for fixup in placed:
        if fixup.kind.machine != machine:
            _fail(f"fixup {fixup.kind.name} in a {machine.name} package")
    offsets = [f.offset for f in placed]
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        _fail("fixups are not in offset order or repeat")
    for fixup in placed:
        blob_for(fixup.offset, fixup.kind.field_size, tuple(BlobKind), "fixup")
        if not isinstance(fixup, FixupEntry):
            continue  # a site: its target is not read yet
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
        leads_to = entries.get(redirect.target_offset)
        if (
            leads_to is None
            or leads_to.status != FunctionStatus.MODIFIED
            or leads_to.old_rva != redirect.old_rva
        ):
            _fail(f"redirect at old RVA 0x{redirect.old_rva:x} does not lead to its function")
    modified = sum(1 for f in package.functions if f.status == FunctionStatus.MODIFIED)
    if modified != len(package.redirects):
        _fail(f"{modified} modified functions but {len(package.redirects)} redirects")
    entry = arch_of(machine).pdata_entry_size
    for record in package.unwind:
        if not 0 <= record.begin_offset < record.end_offset <= size:
            _fail(f"unwind record at 0x{record.table_offset:x} has an empty or outside range")
        blob_for(record.table_offset, entry, (BlobKind.FUNCTION_TABLE,), "unwind record")
    coding = package.coding
    if coding is not None:
        ranges = list(coding.dictionary) + (replaced_extents(package) if coding.extents else [])
        for rva, length in ranges:
            if not (rva >= 0 and length > 0 and rva + length <= package.baseline.size_of_image):
                _fail(f"dictionary range 0x{rva:x}+0x{length:x} lies outside the baseline image")
        if sum(length for _, length in ranges) > MAX_DICTIONARY:
            _fail(f"the dictionary exceeds {MAX_DICTIONARY} bytes")
    new_imports.validate(package)
