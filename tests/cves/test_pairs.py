"""The CVE corpora (../shared/cves, and the libraries of tests/cves/extra): for every
pair, the functions the diff reports modified are the ground truth's, every code-only
pair becomes a package that passes translation validation, and every data pair is
refused for hazards only, except for the gaps tests/cves/known_gaps.tsv lists with
their reasons. The list is exact: a gap closed must leave it, and a new one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpatch.blockers import BlockerClass
from hpatch.diff import Status, diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions, PackageBlocked
from hpatch.verify import build_verified_package

from ..conftest import CVE_ABSENT, CvePair, cve_pairs

PAIRS = cve_pairs()
GAPS_FILE = Path(__file__).with_name("known_gaps.tsv")


def known_gaps() -> dict[str, set[str]]:
    """pair id -> its listed gaps: ``extra NAME``, ``missing NAME`` or ``blocked CAUSE``."""
    gaps: dict[str, set[str]] = {}
    for line in GAPS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pair_id, gap, reason = line.split("\t")
        assert reason.strip(), f"{pair_id} {gap}: a listed gap needs its reason"
        gaps.setdefault(pair_id, set()).add(gap)
    return gaps


def observed_gaps(pair: CvePair) -> set[str]:
    truth = json.loads(pair.truth.read_text())
    names = {start: name for name, (start, _end) in truth["old_funcs"].items()}
    result = diff_images(load_image(pair.old), load_image(pair.new))
    reported = {
        names.get(c.old.rva, f"sub_{c.old.rva:x}")
        for c in result.with_status(Status.MODIFIED)
        if c.old is not None
    }
    wanted = set(truth["modified"])
    gaps = {f"extra {name}" for name in reported - wanted}
    gaps |= {f"missing {name}" for name in wanted - reported}
    if pair.kind == "code-only":
        blockers = result.blockers
        if not blockers:
            # As `hpatch diff -o` does: the package is built and proven, or refused.
            try:
                build_verified_package(result, BuildOptions())
            except PackageBlocked as blocked:
                blockers = blocked.blockers
        gaps |= {f"blocked {b.cause.value}" for b in blockers}
    else:
        # A data pair must be refused, and only for what the update itself changes.
        if result.hotpatchable:
            gaps.add("packaged data pair")
        gaps |= {
            f"blocked {b.cause.value}"
            for b in result.blockers
            if b.blocker_class != BlockerClass.HAZARD
        }
    return gaps


def test_gap_list_names_real_pairs() -> None:
    """Every listed gap names a pair of a corpus that is built (each library's pairs
    come whole or not at all)."""
    if not PAIRS:
        pytest.skip(CVE_ABSENT)
    ids = {pair.pair_id for pair in PAIRS}
    libraries = {pair_id.split("-")[0] for pair_id in ids}
    listed = {pair_id for pair_id in known_gaps() if pair_id.split("-")[0] in libraries}
    assert listed and listed <= ids


@pytest.mark.skipif(not PAIRS, reason=CVE_ABSENT)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("pair", PAIRS, ids=[p.pair_id for p in PAIRS])
def test_cve_pair_matches_truth(pair: CvePair) -> None:
    assert observed_gaps(pair) == known_gaps().get(pair.pair_id, set())
