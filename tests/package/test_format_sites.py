"""Format 3's coding of fixups and unwind records: sites the code predicts are marked,
the rest listed; unwind data fields and unwind records predicted; every departure
from a prediction still round-trips, and a region stream that contradicts its
metadata or its baseline is refused."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from hpatch.arch import Machine
from hpatch.arch.rewrite import Fixup
from hpatch.errors import PackageFormatError
from hpatch.package import decode_package, encode_package, lzma2
from hpatch.package.format import DIGEST_SIZE, HEADER
from hpatch.package.format.dictionary import compress
from hpatch.package.format.metadata import parts_without_records
from hpatch.package.format.region import region_plain, write_fixups
from hpatch.package.format.sites import predicted_sites
from hpatch.package.format.wire import Writer
from hpatch.package.model import BlobKind, FixupEntry, Package, TargetKind

from ..diff.samples import sample_diff
from .packages import sample_package

CASES = [("x64-clang", "v1", "v3"), ("arm64-clang", "v1", "v3")]


def resolved(case: tuple[str, str, str]) -> Package:
    return decode_package(sample_package(*case), sample_diff(*case).old.mapped)


def round_trip(case: tuple[str, str, str], package: Package) -> Package:
    return decode_package(encode_package(package), sample_diff(*case).old.mapped)


def reseal(data: bytes) -> bytes:
    body_end = len(data) - DIGEST_SIZE
    return data[:body_end] + hashlib.sha256(data[:body_end]).digest()


def with_region_stream(data: bytes, region: bytes) -> bytes:
    """``data`` (unsigned) with its region stream replaced, resealed."""
    metadata, _ = lzma2.split(data[HEADER.size : -DIGEST_SIZE])
    return reseal(data[: HEADER.size] + metadata + region + bytes(DIGEST_SIZE))


def with_fixup(
    fixups: tuple[FixupEntry, ...], index: int, fixup: FixupEntry
) -> tuple[FixupEntry, ...]:
    """``fixups`` with the one at ``index`` replaced by ``fixup``."""
    return (*fixups[:index], fixup, *fixups[index + 1 :])


def code_fixups(package: Package) -> list[FixupEntry]:
    parts = [(p.offset, p.offset + p.size) for f in package.functions for p in f.parts]
    return [f for f in package.fixups if any(lo <= f.offset < hi for lo, hi in parts)]


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_most_fixups_sit_where_the_code_predicts(case: tuple[str, str, str]) -> None:
    package = resolved(case)
    predicted = {(s.offset, s.kind, s.target_kind) for s in predicted_sites(package)}
    hits = [f for f in package.fixups if (f.offset, f.kind, f.target_kind) in predicted]
    assert len(hits) >= 0.9 * len(package.fixups)
    assert len(code_fixups(package)) > 10


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_a_predicted_site_without_its_fixup_round_trips(case: tuple[str, str, str]) -> None:
    package = resolved(case)
    dropped = code_fixups(package)[3]
    assert dropped.offset in {s.offset for s in predicted_sites(package)}
    changed = replace(package, fixups=tuple(f for f in package.fixups if f != dropped))
    again = round_trip(case, changed)
    assert again == changed and dropped not in again.fixups


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_a_fixup_of_another_target_kind_at_a_predicted_site_round_trips(
    case: tuple[str, str, str],
) -> None:
    package = resolved(case)
    index = package.fixups.index(code_fixups(package)[2])
    fixup = package.fixups[index]
    other = TargetKind.REGION if fixup.target_kind != TargetKind.REGION else TargetKind.OLD_RVA
    moved = replace(fixup, target_kind=other, target=16)
    changed = replace(package, fixups=with_fixup(package.fixups, index, moved))
    assert round_trip(case, changed) == changed


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_a_fixup_no_rule_predicts_round_trips(case: tuple[str, str, str]) -> None:
    package = resolved(case)
    data = next(b for b in package.blobs if b.kind == BlobKind.RODATA)
    sites = {s.offset for s in predicted_sites(package)} | {f.offset for f in package.fixups}
    addr64 = Fixup.X64_ADDR64 if package.machine == Machine.AMD64 else Fixup.ARM64_ADDR64
    offset = next(o for o in range(data.offset, data.offset + data.size - 7, 8) if o not in sites)
    extra = FixupEntry(offset, addr64, TargetKind.OLD_RVA, 0x1000)
    changed = replace(
        package, fixups=tuple(sorted((*package.fixups, extra), key=lambda f: f.offset))
    )
    again = round_trip(case, changed)
    assert again == changed and extra in again.fixups


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_unwind_data_off_the_predicted_chain_round_trips(case: tuple[str, str, str]) -> None:
    """Two table entries naming the same unwind data: the second's target is coded as a
    difference from where the first's ends."""
    package = resolved(case)
    field = 8 if package.machine.name == "AMD64" else 4
    unwind_fields = [
        i
        for i, f in enumerate(package.fixups)
        if any(f.offset == r.table_offset + field for r in package.unwind)
    ]
    assert len(unwind_fields) >= 2
    first, second = (package.fixups[i] for i in unwind_fields[:2])
    shared = replace(second, target=first.target)
    index = unwind_fields[1]
    changed = replace(package, fixups=with_fixup(package.fixups, index, shared))
    assert round_trip(case, changed) == changed


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_unwind_records_not_one_per_part_are_listed(case: tuple[str, str, str]) -> None:
    package = resolved(case)
    assert parts_without_records(package) is not None  # how builds lay them out
    record = package.unwind[0]
    shorter = replace(record, end_offset=record.end_offset - 4)
    changed = replace(package, unwind=(shorter, *package.unwind[1:]))
    assert parts_without_records(changed) is None
    again = round_trip(case, changed)
    assert again == changed and again.unwind[0].end_offset == record.end_offset - 4


def test_fixups_that_disagree_with_the_stated_counts_are_refused() -> None:
    case = CASES[0]
    package = resolved(case)
    dropped = code_fixups(package)[3]
    fewer = replace(package, fixups=tuple(f for f in package.fixups if f != dropped))
    _, region = lzma2.split(encode_package(fewer)[HEADER.size : -DIGEST_SIZE])
    spliced = with_region_stream(sample_package(*case), region)
    decode_package(spliced)  # the metadata alone is fine
    with pytest.raises(PackageFormatError, match="counts the metadata states"):
        decode_package(spliced, sample_diff(*case).old.mapped)


@pytest.mark.parametrize("mark", [0x02, 0x1F, 0xE4])
def test_a_mark_that_names_no_fixup_kind_is_refused(mark: int) -> None:
    case = CASES[0]
    package = resolved(case)
    assert package.coding is not None and package.coding.dictionary_data
    plain = bytearray(region_plain(package))
    first_mark = sum(b.size for b in package.blobs)
    assert plain[first_mark] == 0  # the first site holds the fixup predicted
    plain[first_mark] = mark
    region = compress(bytes(plain), package.coding.dictionary_data)
    data = with_region_stream(sample_package(*case), region)
    with pytest.raises(PackageFormatError, match=r"fixup (target )?kind"):
        decode_package(data, sample_diff(*case).old.mapped)


def test_a_fixup_listed_at_a_predicted_site_is_refused() -> None:
    """The site's mark says what it holds: marked empty and listed as well is not the
    one coding of the package, even though it names the same fixups."""
    case = CASES[0]
    package = resolved(case)
    assert package.coding is not None and package.coding.dictionary_data
    predicted = predicted_sites(package)
    fixups = {f.offset: f for f in package.fixups}
    moved = next(site for site in predicted if site.offset in fixups)
    blob_bytes = sum(b.size for b in package.blobs)
    plain = region_plain(package)
    marks = bytearray(plain[blob_bytes : blob_bytes + len(predicted)])
    marks[predicted.index(moved)] = 1  # "no fixup here"
    sites = {site.offset for site in predicted} - {moved.offset}
    out = Writer()
    write_fixups(out, package, sites)  # the moved fixup listed as well
    coded = plain[:blob_bytes] + bytes(marks) + bytes(out.out)
    region = compress(coded, package.coding.dictionary_data)
    data = with_region_stream(sample_package(*case), region)
    with pytest.raises(PackageFormatError, match="listed at a predicted site"):
        decode_package(data, sample_diff(*case).old.mapped)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_an_import_slot_the_baseline_does_not_import_through_is_refused(
    case: tuple[str, str, str],
) -> None:
    package = resolved(case)
    assert len(package.imports) == 1 and package.imports[0].dll
    slot = package.imports[0].old_iat_rva
    elsewhere = replace(package.imports[0], dll="", name="", ordinal=0, old_iat_rva=slot - 0x100)
    changed = replace(package, imports=(elsewhere,))
    data = encode_package(changed)
    assert decode_package(data).imports[0].old_iat_rva == slot - 0x100
    with pytest.raises(PackageFormatError, match="not an import slot of the baseline"):
        decode_package(data, sample_diff(*case).old.mapped)
