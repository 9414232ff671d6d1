"""The corpus of failing cases: each replays to an expected outcome in bounded time;
and the isolating runner itself saves the case a crashed child was on."""

from __future__ import annotations

from pathlib import Path

from .campaigns import TARGETS, campaign
from .corpus import load, saved
from .harness import SLOW_SECONDS, run_case
from .isolation import isolated


def test_saved_cases_no_longer_fail() -> None:
    for path in saved():
        case, failure = load(path)
        assert case.campaign in TARGETS, path
        outcome, took = run_case(campaign(case.campaign), case)
        assert not outcome.startswith(("unexpected", "hang")), (path, failure, outcome)
        assert took < SLOW_SECONDS, (path, failure, took)


def test_a_crashing_case_is_saved_and_the_run_goes_on(tmp_path: Path) -> None:
    tally = isolated("image-reader", "corpus-test", count=6, corpus_root=tmp_path, abort_at=2)
    assert tally.crashes == 1 and tally.executions == 6
    (path,) = saved(tmp_path)
    case, failure = load(path)
    assert failure.startswith("crash: exit code") and case.campaign == "image-reader"
    assert run_case(campaign("image-reader"), case)[0] in ("accepted", "refused")
