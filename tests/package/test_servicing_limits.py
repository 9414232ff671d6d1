"""What the format holds of servicing and placement, both directions: a sequence runs
from 1 to 2^32-1 (0 and 2^32 are refused by the writer and the reader alike), and a
region alignment up to 64 KiB is honoured by the applier, not only accepted."""

from __future__ import annotations

import dataclasses

import pytest

from hpatch.apply import ApplyOptions, apply_package
from hpatch.errors import PackageFormatError
from hpatch.package import decode_package, encode_package
from hpatch.package import format as package_format

from ..apply.support import package, process


@pytest.mark.parametrize("sequence", [0, 1 << 32])
def test_a_sequence_outside_1_to_2_32_is_refused_both_ways(
    sequence: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = package("x64-clang", "v1", "v2", 1)
    servicing = dataclasses.replace(built.servicing, sequence=sequence, supersedes=None)
    odd = dataclasses.replace(built, servicing=servicing)
    with pytest.raises(PackageFormatError, match="sequence"):
        encode_package(odd)
    if sequence >= 1 << 32:
        return  # the wire field cannot hold it: nothing to read back
    with monkeypatch.context() as unchecked:
        unchecked.setattr(package_format, "validate_package", lambda _package: None)
        data = encode_package(odd)
    with pytest.raises(PackageFormatError, match="sequence"):
        decode_package(data)


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_a_64_kib_region_alignment_is_honoured(build: str) -> None:
    built = package(build, "v1", "v2", 1)
    aligned = dataclasses.replace(built, region_alignment=1 << 16)
    decoded = decode_package(encode_package(aligned))
    assert decoded.region_alignment == 1 << 16
    target = process(build, "v1")
    report = apply_package(target, decoded, options=ApplyOptions(allow_unsigned=True))
    assert report.region_va % (1 << 16) == 0
