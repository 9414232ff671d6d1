"""The .hpk format: canonical round trips, determinism, integrity, resolving against the
baseline, and a defensive reader."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpatch.arch.rewrite import Redirect
from hpatch.diff import Status, diff_images
from hpatch.errors import PackageFormatError
from hpatch.image import load_image
from hpatch.package import build_package, decode_package, encode_package, lzma2, resolve_blobs
from hpatch.package.format import DIGEST_SIZE, HEADER, MAGIC, MAX_METADATA
from hpatch.package.format.metadata import parts_without_records
from hpatch.package.format.sites import predicted_targets
from hpatch.package.format.wire import Reader, Writer
from hpatch.package.model import FORMAT_VERSION, TARGET_DIGEST_SIZE, Blob

from ..conftest import BUILDS, SAMPLES
from ..diff.samples import sample_diff
from .packages import HOTPATCHABLE_PAIRS, IMPORT_PAIR, OPTIONS, sample_package

CASES = [(build, old, new) for build in BUILDS for old, new in (*HOTPATCHABLE_PAIRS, IMPORT_PAIR)]


def case_id(case: tuple[str, str, str]) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


def baseline(case: tuple[str, str, str]) -> bytes:
    return sample_diff(*case).old.mapped


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_is_the_identity(case: tuple[str, str, str]) -> None:
    for signed in (False, True):
        data = sample_package(*case, signed=signed)
        assert encode_package(decode_package(data)) == data
        assert encode_package(decode_package(data, baseline(case))) == data


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_same_inputs_give_byte_identical_packages(case: tuple[str, str, str]) -> None:
    build, old, new = case
    name = "sample.stripped.dll"
    fresh = diff_images(
        load_image((SAMPLES / build / old / name).read_bytes(), name),
        load_image((SAMPLES / build / new / name).read_bytes(), name),
    )
    assert encode_package(build_package(fresh, OPTIONS)) == sample_package(*case)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_package_carries_exactly_the_changed_functions(case: tuple[str, str, str]) -> None:
    diff = sample_diff(*case)
    package = decode_package(sample_package(*case), diff.old.mapped)
    assert package == build_package(diff, OPTIONS)
    carried = {
        c.new.rva for c in diff.changes if c.new and c.status in (Status.MODIFIED, Status.ADDED)
    }
    modified = {c.old.rva for c in diff.changes if c.old and c.status == Status.MODIFIED}
    assert {f.new_rva for f in package.functions} == carried
    assert {r.old_rva for r in package.redirects} == modified
    for redirect in package.redirects:
        start, length = redirect.strategy.span
        original = diff.old.read(redirect.old_rva + start, length)
        assert redirect.original_sha256 == hashlib.sha256(original).digest()
    assert package.baseline.mapped_sha256.hex() == diff.old.identity.mapped_sha256
    new_digest = bytes.fromhex(diff.new.identity.mapped_sha256)
    assert package.servicing.target_sha256 == new_digest[:TARGET_DIGEST_SIZE]
    assert (package.servicing.sequence, package.servicing.supersedes) == (2, (1, 1))
    # the package is small next to the image it patches, and every target is predicted
    assert len(sample_package(*case)) < diff.new.identity.file_size / 10
    assert [f.target for f in package.fixups] == predicted_targets(package)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_without_the_baseline_a_package_is_unresolved(case: tuple[str, str, str]) -> None:
    data = sample_package(*case)
    whole = decode_package(data, baseline(case))
    package = decode_package(data)
    assert not package.resolved and not package.resolved_region and whole.resolved
    # everything hpatch inspect shows is there
    for field in ("machine", "baseline", "servicing", "prerequisites", "region_size"):
        assert getattr(package, field) == getattr(whole, field)
    assert package.functions == whole.functions
    # imports are slots until the baseline names them
    assert [i.old_iat_rva for i in package.imports] == [i.old_iat_rva for i in whole.imports]
    assert {(i.dll, i.name, i.ordinal) for i in package.imports} <= {("", "", 0)}
    assert all(i.dll for i in whole.imports)
    assert package.unwind == whole.unwind
    assert package.new_imports == whole.new_imports  # the package names them itself
    assert [(b.kind, b.offset, b.size) for b in package.blobs] == [
        (b.kind, b.offset, b.size) for b in whole.blobs
    ]
    assert all(not b.resolved and not b.data for b in package.blobs)
    # fixup sites are coded with the code: without it, only how many each function has
    assert package.fixups == () and whole.fixups
    assert package.fixup_counts == whole.fixup_counts
    assert package.fixup_counts.total == len(whole.fixups)
    assert [(r.old_rva, r.strategy, r.target_offset) for r in package.redirects] == [
        (r.old_rva, r.strategy, r.target_offset) for r in whole.redirects
    ]
    assert {r.original_sha256 for r in package.redirects} == {b""}
    assert resolve_blobs(package, baseline(case)) == whole
    assert resolve_blobs(whole, baseline(case)) == whole


def test_another_image_does_not_resolve_a_package() -> None:
    data = sample_package("x64-clang", "v1", "v3")
    package = decode_package(data)
    for wrong in (
        baseline(("x64-clang", "v2", "v3")),
        baseline(("x64-clang", "v1", "v3"))[:-1],
        bytes(len(baseline(("x64-clang", "v1", "v3")))),
    ):
        with pytest.raises(PackageFormatError, match="not the package's baseline"):
            resolve_blobs(package, wrong)
        with pytest.raises(PackageFormatError, match="not the package's baseline"):
            decode_package(data, wrong)


def test_changed_metadata_is_coded_again_and_the_region_kept() -> None:
    case = ("arm64-clang", "v1", "v3")
    package = decode_package(sample_package(*case), baseline(case))
    redirect = package.redirects[0]
    changed = replace(
        package,
        servicing=replace(package.servicing, description="a longer description"),
        redirects=(replace(redirect, strategy=Redirect.ARM64_LDR_BR), *package.redirects[1:]),
    )
    data = encode_package(changed)
    assert data.endswith(package.coding.region_stream + data[-DIGEST_SIZE:])  # type: ignore[union-attr]
    again = decode_package(data, baseline(case))
    assert again.servicing.description == "a longer description"
    assert again.redirects[0].strategy == Redirect.ARM64_LDR_BR
    # the same change to an unresolved package
    unresolved = decode_package(sample_package(*case))
    assert (
        encode_package(
            replace(
                unresolved,
                servicing=changed.servicing,
                redirects=(
                    replace(unresolved.redirects[0], strategy=Redirect.ARM64_LDR_BR),
                    *unresolved.redirects[1:],
                ),
            )
        )
        == data
    )


def test_a_changed_region_is_coded_again() -> None:
    case = ("x64-clang", "v1", "v2")
    package = decode_package(sample_package(*case), baseline(case))
    blob = package.blobs[-1]
    changed = replace(
        package,
        blobs=(*package.blobs[:-1], replace(blob, data=blob.data[:-1] + b"\x7f")),
    )
    again = decode_package(encode_package(changed), baseline(case))
    assert again.blobs == changed.blobs
    assert again.fixups == changed.fixups
    # an unresolved package cannot take resolved blobs back without its baseline's bytes
    unresolved = decode_package(sample_package(*case))
    with pytest.raises(PackageFormatError):
        encode_package(replace(unresolved, blobs=changed.blobs))


def test_a_package_without_a_coded_region_needs_no_baseline() -> None:
    case = ("x64-gcc", "v1", "v2")
    built = decode_package(sample_package(*case), baseline(case))
    plain = replace(built, coding=None)
    data = encode_package(plain)
    assert len(data) > len(sample_package(*case))  # nothing to code against
    package = decode_package(data)
    assert package.resolved_region and not package.resolved
    assert package.blobs == built.blobs and package.fixups == built.fixups
    assert resolve_blobs(package, baseline(case)) == built
    assert encode_package(package) == data


def _reseal(data: bytearray | bytes) -> bytes:
    """Fix the digest, so mutations reach the body's parser."""
    body_end = len(data) - DIGEST_SIZE
    return bytes(data[:body_end]) + hashlib.sha256(data[:body_end]).digest()


def _unsigned() -> bytes:
    return sample_package("x64-clang", "v1", "v3")


def _with_metadata(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """``data`` (unsigned) with its metadata replaced by ``edit(metadata)``, resealed."""
    body = data[HEADER.size : -DIGEST_SIZE]
    first, rest = lzma2.split(body)
    metadata = lzma2.decompress(first, b"", lzma2.unpacked_size(first))
    coded = lzma2.compress(edit(metadata), b"", lc=0, lp=0, pb=0)
    return _reseal(data[: HEADER.size] + coded + rest + bytes(DIGEST_SIZE))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes_give_only_package_errors(data: bytes) -> None:
    with pytest.raises(PackageFormatError):
        decode_package(data)


@settings(
    max_examples=int(os.environ.get("HPATCH_FUZZ_EXAMPLES", "600")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    position=st.integers(min_value=HEADER.size, max_value=10**6),
    replacement=st.binary(max_size=12),
    removed=st.integers(min_value=0, max_value=12),
    reseal=st.booleans(),
    resolve=st.booleans(),
)
def test_mutated_packages_give_only_package_errors(
    position: int, replacement: bytes, removed: int, reseal: bool, resolve: bool
) -> None:
    original = _unsigned()
    body_end = len(original) - DIGEST_SIZE
    position = HEADER.size + position % (body_end - HEADER.size)
    mutated = bytearray(original)
    mutated[position : position + removed] = replacement
    data = _reseal(mutated) if reseal else bytes(mutated)
    try:
        package = decode_package(data, baseline(("x64-clang", "v1", "v3")) if resolve else None)
    except PackageFormatError:
        return
    # whatever the reader accepts is a well-formed package in canonical form
    assert encode_package(package) == data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=10**6),
    replacement=st.binary(max_size=6),
    removed=st.integers(min_value=0, max_value=6),
)
def test_mutated_metadata_gives_only_package_errors(
    position: int, replacement: bytes, removed: int
) -> None:
    def edit(metadata: bytes) -> bytes:
        at = position % len(metadata)
        return metadata[:at] + replacement + metadata[at + removed :]

    data = _with_metadata(_unsigned(), edit)
    try:
        package = decode_package(data, baseline(("x64-clang", "v1", "v3")))
    except PackageFormatError:
        return
    assert encode_package(package) == data


def test_truncations_are_refused() -> None:
    data = _unsigned()
    for size in range(0, len(data), 7):
        with pytest.raises(PackageFormatError):
            decode_package(data[:size])
    with pytest.raises(PackageFormatError):
        decode_package(data + b"\0")


def _skipped_parts_count_at(metadata: bytes) -> int:
    """Where the count of parts without an unwind record sits in the sample's metadata:
    just before their index gaps, which end it."""
    package = decode_package(_unsigned())
    skipped = sorted(parts_without_records(package) or ())
    gaps = Writer()
    following = 0
    for index in skipped:
        gaps.uv(index - following)
        following = index + 1
    assert 0 < len(skipped) < 128
    at = len(metadata) - len(gaps.out) - 1
    assert metadata[at] == len(skipped) and metadata[at + 1 :] == bytes(gaps.out)
    return at


def test_huge_counts_are_refused_before_allocating() -> None:
    def huge_count(metadata: bytes) -> bytes:
        at = _skipped_parts_count_at(metadata)
        out = Writer()
        out.uv(0xFFFFFFFF)
        return metadata[:at] + bytes(out.out) + metadata[at + 1 :]

    with pytest.raises(PackageFormatError, match="cannot fit"):
        decode_package(_with_metadata(_unsigned(), huge_count))


def test_huge_sizes_are_refused_before_decompressing() -> None:
    # a metadata stream whose chunk headers claim more than the limit: 2 MiB each
    chunks = b"\xff\xff\xff\x00\x00\x5d\x00" + b"\x9f\xff\xff\x00\x00\x00" * 8
    assert lzma2.unpacked_size(chunks) > MAX_METADATA
    data = _reseal(_unsigned()[: HEADER.size] + chunks + bytes(DIGEST_SIZE))
    with pytest.raises(PackageFormatError, match="limit"):
        decode_package(data)
    # a region stream larger than its blobs and targets can need
    body = _unsigned()[HEADER.size : -DIGEST_SIZE]
    first, _rest = lzma2.split(body)
    region = lzma2.compress(bytes(1 << 20), b"", lc=0, lp=0, pb=0)
    with pytest.raises(PackageFormatError, match="cannot hold"):
        decode_package(_reseal(_unsigned()[: HEADER.size] + first + region + bytes(DIGEST_SIZE)))


def test_non_canonical_metadata_is_refused() -> None:
    def padded_varint(metadata: bytes) -> bytes:
        at = _skipped_parts_count_at(metadata)
        return metadata[:at] + bytes([metadata[at] | 0x80, 0]) + metadata[at + 1 :]

    with pytest.raises(PackageFormatError, match="shortest form"):
        decode_package(_with_metadata(_unsigned(), padded_varint))
    with pytest.raises(PackageFormatError, match="unexpected bytes"):
        decode_package(_with_metadata(_unsigned(), lambda m: m + b"\0"))


def test_varints_round_trip() -> None:
    for value in (0, 1, 127, 128, 300, 1 << 32, (1 << 64) - 1):
        out = Writer()
        out.uv(value)
        out.sv(value)
        out.sv(-value)
        data = Reader(bytes(out.out), "test")
        assert (data.uv(), data.sv(), data.sv()) == (value, value, -value)
        data.finish()
    with pytest.raises(PackageFormatError, match="past"):
        Reader(b"\xff" * 11, "test").uv()


def test_unknown_versions_and_flags_are_refused() -> None:
    for version in (FORMAT_VERSION - 1, FORMAT_VERSION + 1):  # an older one is coded otherwise
        data = bytearray(_unsigned())
        data[len(MAGIC)] = version
        with pytest.raises(PackageFormatError, match=f"format version {version}"):
            decode_package(_reseal(data))
    data = bytearray(_unsigned())
    data[len(MAGIC) + 1] = 0x80
    with pytest.raises(PackageFormatError, match="flags"):
        decode_package(_reseal(data))


def test_blobs_are_resolved_or_not_never_both() -> None:
    package = decode_package(_unsigned(), baseline(("x64-clang", "v1", "v3")))
    blob = package.blobs[0]
    for broken in (
        replace(blob, unresolved_size=len(blob.data)),
        Blob(blob.kind, blob.offset, b""),
    ):
        with pytest.raises(PackageFormatError):
            encode_package(replace(package, blobs=(broken, *package.blobs[1:])))


def test_the_writer_refuses_a_version_out_of_range() -> None:
    """A version too large for the header's field is the package error, not a struct error."""
    package = decode_package(_unsigned())
    with pytest.raises(PackageFormatError, match="format version 70000"):
        encode_package(dataclasses.replace(package, version=70000))
