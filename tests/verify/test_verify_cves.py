"""Both checks on packages of the CVE corpus (../shared/cves), skipped when it is not
built."""

from __future__ import annotations

import pytest

from hpatch.diff import diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions, build_package
from hpatch.verify import Outcome, verify_package

from ..conftest import CVE_ABSENT, cve_pairs

PAIRS = {pair.pair_id: pair for pair in cve_pairs()}


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
