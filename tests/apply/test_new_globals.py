"""A package that carries new globals: they live on pages of their own in the patch
region, writable and never executable, start from the new build's initial bytes, and
the fixed code keeps its state there (the samples' v3 -> global-v3: only 64 failures are
logged, then one note)."""

from __future__ import annotations

import dataclasses

import pytest

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.emu.memory import Protection
from hpatch.errors import CheckRefused, PackageFormatError
from hpatch.package import new_data
from hpatch.package.format import decode_package, encode_package
from hpatch.package.model import Blob, BlobKind

from .support import BUILDS, package, process

ALLOW = ApplyOptions(allow_unsigned=True)
QUOTA = 64


def fail_and_count(build: str, target: object, times: int) -> int:
    """Fail ``times`` calls through hp_fail (an unknown limit); the host's log lines."""
    for _ in range(times):
        assert target.call("hp_set_limit", 99, 0) & 0xFFFFFFFF == 0xFFFFFFFE  # type: ignore[attr-defined]
    host = target.module("samplehost.dll")  # type: ignore[attr-defined]
    return target.call("host_log_count", module=host)  # type: ignore[attr-defined]


@pytest.mark.parametrize("build", BUILDS)
def test_the_new_globals_are_carried_writable_and_keep_the_fixs_state(build: str) -> None:
    assert fail_and_count(build, process(build, "v3"), QUOTA + 6) == QUOTA + 6
    assert fail_and_count(build, process(build, "global-v3"), QUOTA + 6) == QUOTA + 1
    target = process(build, "v3")
    pkg = package(build, "v3", "global-v3", 2)
    data = [b for b in pkg.blobs if b.kind == BlobKind.DATA]
    assert data and data[0].offset < 4096
    report = apply_package(target, pkg, options=ALLOW)
    for start, end in new_data.data_pages(pkg):
        for page in range(report.region_va + start, report.region_va + end, 4096):
            assert target.space.protection_at(page) == Protection.RW
    code = next(b for b in pkg.blobs if b.kind == BlobKind.CODE)
    assert target.space.protection_at(report.region_va + code.offset) == Protection.RX
    # the quota, then one note, then silence; the old globals are untouched in place
    assert fail_and_count(build, target, QUOTA + 6) == QUOTA + 1
    assert fail_and_count(build, target, 3) == QUOTA + 1
    rollback(target)
    assert fail_and_count(build, target, 2) == QUOTA + 3  # v3's code logs every failure


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_the_package_round_trips_with_its_data_blob(build: str) -> None:
    pkg = package(build, "v3", "global-v3", 2)
    encoded = encode_package(pkg)
    decoded = decode_package(encoded)
    kinds = [b.kind for b in decoded.blobs]
    assert BlobKind.DATA in kinds
    assert encode_package(pkg) == encoded  # deterministic


def test_new_data_sharing_a_page_with_code_is_refused_before_anything_changes() -> None:
    build = "x64-clang"
    pkg = package(build, "v3", "global-v3", 2)
    last = max(pkg.blobs, key=lambda b: b.offset)
    assert last.kind != BlobKind.DATA
    # one more new global, right after the last blob on its (executable) page
    offset = last.offset + last.size + (-(last.offset + last.size) % 16)
    assert offset + 8 <= pkg.region_size and offset // 4096 == last.offset // 4096
    hostile = dataclasses.replace(
        pkg, blobs=(*pkg.blobs, Blob(BlobKind.DATA, offset, bytes(range(1, 9))))
    )
    with pytest.raises(PackageFormatError, match="shares a page with new data"):
        new_data.validate(hostile)
    target = process(build, "v3")
    before = target.space.state()
    with pytest.raises(CheckRefused, match=r"check 'package contents' failed: .* shares a page"):
        apply_package(target, hostile, options=ALLOW)
    assert target.space.state() == before


def test_inspect_shows_the_new_globals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    pkg = package("arm64-clang", "v3", "global-v3", 2)
    path = tmp_path / "g.hpk"
    path.write_bytes(encode_package(pkg))
    run = [sys.executable, "-m", "hpatch", "inspect", str(path)]
    document = json.loads(subprocess.run([*run, "--json"], capture_output=True, check=True).stdout)
    blobs = [b for b in pkg.blobs if b.kind == BlobKind.DATA]
    assert document["globals"] == [{"offset": b.offset, "size": b.size} for b in blobs]
    text = subprocess.run(run, capture_output=True, check=True, text=True).stdout
    assert f"new globals: {len(blobs)} block(s)" in text
