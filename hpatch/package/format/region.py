"""The region stream: blob bytes, a mark per predicted fixup site, the fixups no site
predicts, each fixup's target delta; coding it against the baseline and resolving it."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from hpatch.arch import Machine
from hpatch.errors import PackageFormatError
from hpatch.package import lzma2
from hpatch.package.baseline_imports import named_imports
from hpatch.package.format.dictionary import (
    choose_dictionary,
    compress,
    dictionary_data,
    dictionary_spec,
    replaced_extents,
    searched_positions,
)
from hpatch.package.format.sites import (
    AS_PREDICTED,
    NOT_A_FIXUP,
    fixup_code,
    fixup_from_code,
    normalize_fields,
    predicted_sites,
    predicted_targets,
    walk_predictions,
)
from hpatch.package.format.validate import validate_package
from hpatch.package.format.wire import Reader, Writer, arch_of, read_scaled, write_scaled
from hpatch.package.model import (
    BodyCoding,
    FixupCounts,
    FixupEntry,
    FixupSite,
    Package,
)


def _write_gap(out: Writer, machine: Machine, gap: int) -> None:
    # where instructions are aligned, so are fields: gaps are multiples of the alignment
    # (4 on ARM64), stored scaled
    bits = arch_of(machine).instruction_alignment.bit_length() - 1
    if bits:
        write_scaled(out, gap, bits)
    else:
        out.uv(gap)


def _read_gap(data: Reader, machine: Machine) -> int:
    bits = arch_of(machine).instruction_alignment.bit_length() - 1
    return read_scaled(data, bits, 1 << 32) if bits else data.uv(1 << 32)


def region_plain(package: Package) -> bytes:
    """The region stream before compression: blob bytes by offset, a mark per predicted
    fixup site, the fixups no site predicts, then every fixup's target delta."""
    out = Writer()
    for blob in package.blobs:
        out.raw(blob.data)
    actual = {f.offset: f for f in package.fixups}
    predicted = predicted_sites(package)
    for site in predicted:
        fixup = actual.get(site.offset)
        if fixup is None:
            out.u8(NOT_A_FIXUP)
        elif (fixup.kind, fixup.target_kind) == (site.kind, site.target_kind):
            out.u8(AS_PREDICTED)
        else:
            out.u8(fixup_code(fixup))
    write_fixups(out, package, {site.offset for site in predicted})
    return bytes(out.out)


def write_fixups(out: Writer, package: Package, sites: set[int]) -> None:
    """The region stream after the site marks: the fixups at none of the predicted
    ``sites`` (their count, offset gaps and codes), then every fixup's target delta."""
    unpredicted = [f for f in package.fixups if f.offset not in sites]
    out.uv(len(unpredicted))
    previous = 0
    for fixup in unpredicted:
        _write_gap(out, package.machine, fixup.offset - previous)
        previous = fixup.offset
    for fixup in unpredicted:
        out.u8(fixup_code(fixup))
    for fixup, predicted_target in zip(package.fixups, predicted_targets(package), strict=True):
        out.sv(fixup.target - predicted_target)


def with_region(package: Package, plain: bytes) -> Package:
    """``package`` with the blobs and fixup targets ``plain`` holds."""
    data = Reader(plain, "region stream")
    blobs = tuple(replace(b, data=data.take(b.size), unresolved_size=0) for b in package.blobs)
    if any(not b.data for b in blobs):
        raise PackageFormatError("an empty blob")
    # An unresolved package holds no fixups: the stream states their sites, then targets.
    assert not package.fixups, "the region stream is read into an unresolved package"
    resolved = replace(package, blobs=blobs, stated_fixup_counts=None)
    machine = package.machine
    found: list[FixupSite] = []
    predicted = predicted_sites(resolved)
    for site in predicted:
        mark = data.u8()
        if mark == AS_PREDICTED:
            found.append(site)
        elif mark != NOT_A_FIXUP:
            found.append(fixup_from_code(machine, site.offset, mark))
    sites = {site.offset for site in predicted}  # a site's fixup is its mark, never listed
    offsets: list[int] = []
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
        found.append(fixup_from_code(machine, offset, data.u8()))
    found.sort(key=lambda f: f.offset)
    stated = package.stated_fixup_counts
    if stated is not None and FixupCounts.of(package.functions, found) != stated:
        raise PackageFormatError(
            "region stream: the fixups differ from the counts the metadata states"
        )
    validate_package(resolved, sites=found)
    deltas = [data.sv() for _ in found]
    data.finish()
    predictions = walk_predictions(
        resolved, found, lambda index, predicted: predicted + deltas[index]
    )
    fixups = tuple(
        FixupEntry(f.offset, f.kind, f.target_kind, predicted + delta)
        for f, predicted, delta in zip(found, predictions, deltas, strict=True)
    )
    for fixup in fixups:
        if not 0 <= fixup.target <= 0xFFFFFFFF:
            raise PackageFormatError(f"fixup at 0x{fixup.offset:x} has a target out of range")
    return replace(resolved, fixups=fixups, stated_fixup_counts=None)


def code_region(
    package: Package, baseline_mapped: bytes, hints: tuple[tuple[int, int], ...] = ()
) -> Package:
    """``package`` with its region coded against the baseline's mapped image (un-rebased,
    ``PEImage.mapped``): what makes it small. ``build_package`` returns packages coded so;
    ``hints`` are baseline ranges (RVA, size) worth putting in the dictionary first.
    """
    baseline = bytes(baseline_mapped)
    check_baseline(package, baseline)
    validate_package(package)
    if not package.resolved:
        raise PackageFormatError("an unresolved package cannot be coded again")
    package = normalize_fields(package)
    plain = region_plain(package)
    dictionary, searched = choose_dictionary(package, baseline, hints)
    extents = bool(replaced_extents(package))
    data = dictionary_data(package, dictionary, extents, baseline)
    positions = searched_positions(package, dictionary, extents, searched)
    coding = BodyCoding(
        dictionary=dictionary,
        dictionary_data=data,
        metadata=None,
        metadata_stream=None,
        region_sha256=hashlib.sha256(plain).digest(),
        region_size=len(plain),
        region_stream=compress(plain, data, positions),
        spec=dictionary_spec(package, dictionary, extents),
        extents=extents,
    )
    return replace(package, coding=coding)


def region_coding(package: Package) -> BodyCoding:
    """The coded region stream of ``package``: the one it came with while its region is
    unchanged, else coded afresh (against the same dictionary when its bytes are known,
    else against none)."""
    coding = package.coding
    if coding is not None:
        same_spec = coding.spec == dictionary_spec(package, coding.dictionary, coding.extents)
        if not any(b.resolved for b in package.blobs) and not package.fixups:
            if not same_spec:
                raise PackageFormatError(
                    "an unresolved package changed what its region is coded against"
                )
            return coding
        if not package.resolved_region:
            raise PackageFormatError("a package with some blobs or targets unresolved")
        plain = region_plain(package)
        digest = hashlib.sha256(plain).digest()
        if same_spec and digest == coding.region_sha256:
            return coding
        if same_spec and coding.dictionary_data is not None:
            return replace(
                coding,
                region_sha256=digest,
                region_size=len(plain),
                region_stream=compress(plain, coding.dictionary_data),
            )
    if not package.resolved_region:
        raise PackageFormatError("a package with unresolved blobs and no coded region")
    plain = region_plain(package)
    return BodyCoding(
        dictionary=(),
        dictionary_data=b"",
        metadata=None,
        metadata_stream=None,
        region_sha256=hashlib.sha256(plain).digest(),
        region_size=len(plain),
        region_stream=compress(plain, b""),
        spec=dictionary_spec(package, (), False),
        extents=False,
    )


def check_baseline(package: Package, baseline: bytes) -> None:
    if (
        len(baseline) != package.baseline.size_of_image
        or hashlib.sha256(baseline).digest() != package.baseline.mapped_sha256
    ):
        raise PackageFormatError(
            "the image given is not the package's baseline (its mapped SHA-256 differs)"
        )


def resolve_region(package: Package, dictionary: bytes) -> Package:
    coding = package.coding
    assert coding is not None
    try:
        plain = lzma2.decompress(coding.region_stream, dictionary, coding.region_size)
    except ValueError as exc:
        raise PackageFormatError(f"region stream: {exc}") from None
    resolved = with_region(package, plain)
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
    check_baseline(package, baseline)
    if not package.resolved_region:
        coding = package.coding
        if coding is None:
            raise PackageFormatError("an unresolved package without its coded region")
        package = resolve_region(
            package, dictionary_data(package, coding.dictionary, coding.extents, baseline)
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
