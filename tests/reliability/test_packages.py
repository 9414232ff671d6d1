"""Hostile packages, bounded: the reader and the applier give only their own errors,
in bounded time, and leave the process as it was (the full run: figures.py)."""

from __future__ import annotations

import os

import pytest

from hpatch.errors import PackageFormatError
from hpatch.package import decode_package
from hpatch.package.format import MAX_PACKAGE_SIZE

from .drawn import check_drawn_cases
from .harness import SLOW_SECONDS, Campaign, drive
from .package_campaigns import APPLIER, READER
from .samples import signed_bytes

SEED = os.environ.get("HPATCH_RELIABILITY_SEED", "ci")
#: Cases per campaign: making a mutant codes its package again (LZMA in pure Python),
#: about 0.1 s each.
CASES = int(os.environ.get("HPATCH_RELIABILITY_CASES", "20"))


@pytest.mark.parametrize("campaign", [READER, APPLIER], ids=lambda c: c.name)
def test_hostile_packages_are_refused_with_package_errors_only(campaign: Campaign) -> None:
    tally = drive(campaign, SEED, count=CASES)
    assert tally.failures == 0, tally.unexpected
    assert tally.slowest < SLOW_SECONDS
    # Both ways out were taken: mutants that were refused, and mutants that got through
    # (so the applier's later checks were reached, not only the reader's).
    assert tally.outcomes["refused"] > 0 and tally.outcomes["accepted"] > 0, tally.outcomes
    assert len({how.split(":")[0] for how in tally.hows}) == 3, tally.hows


@pytest.mark.parametrize("campaign", [READER, APPLIER], ids=lambda c: c.name)
def test_hypothesis_drawn_mutants_are_refused_with_package_errors_only(
    campaign: Campaign,
) -> None:
    """The same mutators with hypothesis drawing every choice, so that a failure
    shrinks to the smallest mutation that shows it."""

    check_drawn_cases(campaign, CASES)


def test_an_oversized_package_is_refused_before_it_is_read() -> None:
    data = signed_bytes("x64-clang", "v1", "v2", 2)
    oversized = data[:-104] + bytes(MAX_PACKAGE_SIZE) + data[-104:]
    with pytest.raises(PackageFormatError, match="exceeds the 67108864-byte limit"):
        decode_package(oversized)
