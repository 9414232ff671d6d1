"""Campaign cases drawn by hypothesis, so that a failing mutation shrinks."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import SLOW_SECONDS, Campaign, run_case


def check_drawn_cases(campaign: Campaign, cases: int) -> None:
    """Run ``cases`` cases of ``campaign`` with hypothesis drawing every choice; each
    must end in an expected outcome, within SLOW_SECONDS."""

    @settings(max_examples=cases, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rng=st.randoms(use_true_random=False))
    def check(rng: random.Random) -> None:
        outcome, took = run_case(campaign, campaign.make(rng))
        assert not outcome.startswith(("unexpected", "hang")), outcome
        assert took < SLOW_SECONDS

    check()
