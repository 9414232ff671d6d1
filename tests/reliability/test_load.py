"""Patching under load, bounded: threads loop calling patched functions and their
callers while packages are applied, replaced and rolled back under them; every call
returns the old or the new build's result, none faults (5,000 trials per
architecture: figures.py)."""

from __future__ import annotations

import os

import pytest

from .load import run_trials
from .samples import BUILDS

SEED = os.environ.get("HPATCH_RELIABILITY_SEED", "ci")
TRIALS = int(os.environ.get("HPATCH_RELIABILITY_TRIALS", "200"))


@pytest.mark.parametrize("build", BUILDS)
def test_every_call_returns_the_old_or_the_new_result(build: str) -> None:
    tally = run_trials(build, TRIALS, SEED)
    assert tally.crashes == [] and tally.wrong == []
    assert tally.trials == TRIALS
    assert set(tally.operations) == {"apply", "replace", "rollback"}, tally.operations
    # The threads were in the way (the safety check refused or waited), calls ran
    # while the code changed under them, and the versions' results did differ.
    assert tally.refused_busy > 0 and tally.calls_across_changes > 0
    assert tally.distinct_results > 0 and tally.refused_as_expected > 0
