"""The .hpk format: canonical round trips, determinism, integrity and a defensive reader."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpatch.diff import Status, diff_images
from hpatch.errors import PackageFormatError
from hpatch.image import load_image
from hpatch.package import build_package, decode_package, encode_package
from hpatch.package.format import DIGEST_SIZE, HEADER

from ..conftest import BUILDS, SAMPLES
from ..diff.samples import sample_diff
from .packages import HOTPATCHABLE_PAIRS, OPTIONS, sample_package

CASES = [(build, old, new) for build in BUILDS for old, new in HOTPATCHABLE_PAIRS]


def case_id(case: tuple[str, str, str]) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_round_trip_is_the_identity(case: tuple[str, str, str]) -> None:
    for signed in (False, True):
        data = sample_package(*case, signed=signed)
        assert encode_package(decode_package(data)) == data


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
    package = decode_package(sample_package(*case))
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
    assert package.servicing.target.mapped_sha256.hex() == diff.new.identity.mapped_sha256
    assert (package.servicing.sequence, package.servicing.supersedes) == (2, (1, 1))
    # the package is small next to the image it patches
    assert len(sample_package(*case)) < diff.new.identity.file_size / 2


def _reseal(data: bytearray) -> bytes:
    """Fix the header's body size and the digest, so mutations reach the section parser."""
    body_end = len(data) - DIGEST_SIZE
    struct.pack_into("<I", data, 16, body_end - HEADER.size)
    return bytes(data[:body_end]) + hashlib.sha256(data[:body_end]).digest()


def _unsigned() -> bytes:
    return sample_package("x64-clang", "v1", "v3")


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
)
def test_mutated_packages_give_only_package_errors(
    position: int, replacement: bytes, removed: int, reseal: bool
) -> None:
    original = _unsigned()
    body_end = len(original) - DIGEST_SIZE
    position = HEADER.size + position % (body_end - HEADER.size)
    mutated = bytearray(original)
    mutated[position : position + removed] = replacement
    data = _reseal(mutated) if reseal else bytes(mutated)
    try:
        package = decode_package(data)
    except PackageFormatError:
        return
    # whatever the reader accepts is a well-formed package in canonical form
    assert encode_package(package) == data


def test_truncations_are_refused() -> None:
    data = _unsigned()
    for size in range(0, len(data), 7):
        with pytest.raises(PackageFormatError):
            decode_package(data[:size])
    with pytest.raises(PackageFormatError):
        decode_package(data + b"\0")


def test_huge_counts_are_refused_before_allocating() -> None:
    data = bytearray(_unsigned())
    package = decode_package(bytes(data))
    # the fixup count sits after the fixups section header; point it at 2**32 - 1 records
    fixups_at = bytes(data).find(struct.pack("<HHI", 7, 0, 4 + 12 * len(package.fixups)))
    assert fixups_at > 0
    struct.pack_into("<I", data, fixups_at + 8, 0xFFFFFFFF)
    with pytest.raises(PackageFormatError, match="cannot fit"):
        decode_package(_reseal(data))


def test_unknown_versions_and_flags_are_refused() -> None:
    data = bytearray(_unsigned())
    struct.pack_into("<H", data, 8, 2)
    with pytest.raises(PackageFormatError, match="format version 2"):
        decode_package(_reseal(data))
    data = bytearray(_unsigned())
    struct.pack_into("<I", data, 12, 0x80)
    with pytest.raises(PackageFormatError, match="flags"):
        decode_package(_reseal(data))
