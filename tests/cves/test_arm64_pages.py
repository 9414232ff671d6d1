"""ARM64 pages of the CVE corpus (../shared/cves): the pages the relocator follows
through callee-saved registers, past shifts and extends, and that the diff's linear
scan takes for completed where the control flow rules it out, are bound, and the
packages pass translation validation and differential emulation. Pages that may
still be handed on out of sight with a target that moved within its page stay
refused, in the functions that hand them on."""

from __future__ import annotations

import json

import pytest

from hpatch.diff import diff_images
from hpatch.diff.verdict import BlockerCause
from hpatch.image import load_image
from hpatch.package import BuildOptions, PackageBlocked
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

# A NEON table's page is left in x1 at png_do_read_transformations' return and in x7
# at png_write_find_filter's call of png_compress_IDAT, and each table lies 0x10 lower
# in its page in v0. Neither x1 nor x7 carries anything there (the function returns
# nothing; the callee takes four arguments), but the code does not say so: x7 flows
# on, unwritten, through png_free to png_ptr->free_fn, an indirect call.
HANDED_ON = {
    "libpng-arm64-clang-v0-v1": {"png_do_read_transformations", "png_write_find_filter"},
    "libpng-arm64-clang-v0-v5": {"png_do_read_transformations", "png_write_find_filter"},
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
@pytest.mark.parametrize("pair_id", sorted(HANDED_ON))
def test_a_page_handed_on_whose_target_moved_in_its_page_stays_refused(pair_id: str) -> None:
    pair = pair_or_skip(pair_id)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    with pytest.raises(PackageBlocked) as blocked:
        build_verified_package(diff, BuildOptions())
    names = new_names(pair)
    assert {b.cause for b in blocked.value.blockers} == {BlockerCause.PAGE_PASSED_ON}
    holders = [diff.new.function_at(b.rva) for b in blocked.value.blockers if b.rva is not None]
    assert {names.get(f.rva) for f in holders if f is not None} == HANDED_ON[pair_id]
    for blocker in blocked.value.blockers:
        assert blocker.target_rva is not None and "another page offset" in blocker.reason
