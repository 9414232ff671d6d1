"""ARM64 pages of the CVE corpus (../shared/cves): the pages the relocator follows
through callee-saved registers, past shifts and extends, and past code that reuses
the page register, are bound, and the packages pass translation validation and
differential emulation. Completions reached only along a branch are seen by the
diff too: the functions whose constants merely moved within their page are
unchanged."""

from __future__ import annotations

import json

import pytest

from hpatch.diff import Status, diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions
from hpatch.verify import build_verified_package

from ..conftest import CVE_ABSENT, CvePair, cve_pairs

PAIRS = {pair.pair_id: pair for pair in cve_pairs()}

# Each carried function held a page the builder used to refuse: a shift or extend that
# overwrote the page register taken for a read, or a completion only the linear scan saw.
BOUND = {
    "sqlite3-arm64-clang-v0-v1": {
        "sqlite3BtreeOpen",
        "sqlite3BtreeIndexMoveto",
        "sessionApplyOneOp",
    },
    "sqlite3-arm64-clang-v1-v2": {
        "winShmMap",
        "winGetTempname",
        "sqlite3BtreeOpen",
        "sqlite3BtreeIndexMoveto",
        "sqlite3Select",
        "sessionApplyOneOp",
    },
    "sqlite3-arm64-clang-v0-v2": {
        "winShmMap",
        "winGetTempname",
        "sqlite3BtreeOpen",
        "sqlite3BtreeIndexMoveto",
        "sqlite3Select",
        "sessionApplyOneOp",
    },
}

# Each function completes a NEON table's page only past a branch over code that takes
# the page register for something else (png_do_read_transformations: adrp x15, b.hs,
# then ldr q2, [x15, #0x1d0] at the target), and each table lies 0x10 lower in its
# page in v0. Followed along the branches, the loads are completions and the
# functions are unchanged; the pages they leave in x1 at a return and in x7 at a call
# are no longer carried (a page handed on whose target moved within its page stays
# refused: tests/package/test_page_passed_on.py).
UNCHANGED = {
    "libpng-arm64-clang-v0-v1": {
        "png_do_read_transformations",
        "png_read_filter_row_paeth_multibyte_pixel",
        "png_write_find_filter",
    },
    "libpng-arm64-clang-v0-v5": {
        "png_do_read_transformations",
        "png_read_filter_row_paeth_multibyte_pixel",
        "png_write_find_filter",
    },
}


def pair_or_skip(pair_id: str) -> CvePair:
    if not PAIRS:
        pytest.skip(CVE_ABSENT)
    return PAIRS[pair_id]


def new_names(pair: CvePair) -> dict[int, str]:
    truth = json.loads(pair.truth.read_text())
    return {start: name for name, (start, _end) in truth["new_funcs"].items()}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pair_id", sorted(BOUND))
def test_pages_followed_through_the_code_are_bound_and_proven(pair_id: str) -> None:
    pair = pair_or_skip(pair_id)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    assert diff.hotpatchable, [b.reason for b in diff.blockers]
    package, report = build_verified_package(diff, BuildOptions())
    names = new_names(pair)
    carried = {names.get(f.new_rva) for f in package.functions}
    assert BOUND[pair_id] <= carried
    assert report is not None


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pair_id", sorted(UNCHANGED))
def test_tables_completed_past_a_branch_that_moved_in_their_page_are_no_change(
    pair_id: str,
) -> None:
    pair = pair_or_skip(pair_id)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    truth = json.loads(pair.truth.read_text())
    names = {start: name for name, (start, _end) in truth["old_funcs"].items()}
    modified = {names.get(c.old.rva) for c in diff.with_status(Status.MODIFIED) if c.old}
    assert modified == set(truth["modified"])
    assert {names.get(c.old.rva) for c in diff.with_status(Status.UNCHANGED) if c.old} >= (
        UNCHANGED[pair_id]
    )
    assert diff.hotpatchable, [b.reason for b in diff.blockers]
    _package, report = build_verified_package(diff, BuildOptions())
    assert report is not None
