"""Both checks on packages of the CVE corpus (../shared/cves), skipped when it is not
built."""

from __future__ import annotations

import pytest

from hpatch.diff import diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions, build_package
from hpatch.package.model import BlobKind, TargetKind
from hpatch.verify import Outcome, build_verified_package, verify_package

from ..conftest import CVE_ABSENT, cve_pairs

PAIRS = {pair.pair_id: pair for pair in cve_pairs()}


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "pair_id",
    # sqlite3_config's package once switched through a verbatim copy of its table
    # (clang puts every switch's table of offsets to its cases in .rdata); the same
    # update without hotpatch padding.
    ("sqlite3-x64-clang-hp-v1-v2", "sqlite3-x64-clang-v1-v2"),
)
def test_sqlite_update_packages_pass_both_checks(pair_id: str) -> None:
    pair = PAIRS.get(pair_id)
    if pair is None:
        pytest.skip(CVE_ABSENT)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    # As `hpatch diff -o` does: built, then proven by both checks (or refused).
    package, report = build_verified_package(diff, BuildOptions())
    assert report is not None and report.passed
    config = next(f for f in report.functions if f.name == "sqlite3_config")
    assert config.translation == Outcome.PASSED
    assert config.emulation.outcome == Outcome.PASSED, config.emulation
    # Its switch reads the package's own copy of the table.
    (function,) = [f for f in package.functions if f.name == "sqlite3_config"]
    rodata = [b for b in package.blobs if b.kind == BlobKind.RODATA]
    assert any(
        f.target_kind == TargetKind.REGION
        and any(p.offset <= f.offset < p.offset + p.size for p in function.parts)
        and any(b.offset <= f.target < b.offset + b.size for b in rodata)
        for f in package.fixups
    )
    emulated = sum(f.emulation.outcome == Outcome.PASSED for f in report.functions)
    assert 2 * emulated >= len(report.functions)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "pair_id",
    # EncodeAlphaInternal reads WebPFilters[i] with i a random argument: with gcc the
    # images lie at different bases, so both sides fault at wild addresses that differ;
    # with clang the index lands just past the new image, where the patched process
    # holds the patch region.
    ("libwebp-x64-gcc-v0-v1", "libwebp-x64-clang-v0-v1"),
)
def test_runs_that_stray_past_an_image_alike_agree(pair_id: str) -> None:
    pair = PAIRS.get(pair_id)
    if pair is None:
        pytest.skip(CVE_ABSENT)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    report = verify_package(diff, build_package(diff, BuildOptions()), inputs=100)
    assert all(f.translation == Outcome.PASSED for f in report.functions)
    assert report.passed, [f.emulation.detail for f in report.failed]
