"""The hostile campaigns, bounded (the full run: ``figures.py --only hostile``): every
kind through the command line in child processes, each run exiting with a documented
code, no internal error, no traceback, no hang, and its peak memory bounded (each
child's own high-water mark)."""

from __future__ import annotations

import pytest

from .hostile import KINDS, campaign

#: A bounded run's peak resident size: the largest inputs here (20,000 .pdata entries
#: or exports, a 1 GiB unbacked section) took about 240 MiB.
CI_MEMORY_BOUND = 512 << 20


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_campaign_bounded(kind: str) -> None:
    tally = campaign(kind, "ci")
    assert tally.runs > 0 and tally.inputs > 0
    assert tally.unexpected == [], tally.unexpected
    assert tally.internal == tally.tracebacks == tally.hangs == tally.over_memory == 0
    assert set(tally.codes) <= {str(code) for code in range(7)}, tally.codes
    assert tally.peak_kib * 1024 < CI_MEMORY_BOUND, (tally.peak_kib, tally.peak_run)
