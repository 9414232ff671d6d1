"""Driving a campaign: numbered inputs made from a seed, each run under a time bound,
every outcome counted as expected (accepted, or refused with the campaign's error types)
or not (any other exception, a broken invariant, a slow input).

Case ``i`` of campaign ``c`` comes from ``random.Random(f"{seed}/{c}/{i}")``, so a run
can be replayed case by case. Unexpected and slow cases are saved to the corpus
(``corpus.py``) by whoever ran them.
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: A case may take this long before it counts as slow (and is saved); the isolating
#: runner kills a case that takes HANG_SECONDS.
SLOW_SECONDS = 5.0
HANG_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Case:
    """One input: ``data`` for the target, ``context`` telling it how to set up
    (which baseline, which process state), ``how`` the mutation that made it."""

    campaign: str
    context: str
    how: str
    data: bytes


@dataclass(frozen=True)
class Campaign:
    """Makes cases and runs them. ``run`` returns "accepted" or "refused" (having
    caught one of ``expected`` itself), and raises for anything else; an
    AssertionError means an invariant broke (state changed after a refusal, a
    non-canonical package accepted)."""

    name: str
    make: Callable[[random.Random], Case]
    run: Callable[[Case], str]


class Hang(BaseException):
    """A case ran past its time bound (raised by the alarm inside it)."""


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise Hang in the running case after ``seconds`` of wall time (Python code only:
    a hang inside a C call is the isolating runner's to catch)."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Tally:
    """What a campaign run did."""

    campaign: str
    executions: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_case: str = ""  # which case that was, and how it was made
    outcomes: Counter[str] = field(default_factory=Counter)
    hows: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # one line each
    hangs: int = 0
    crashes: int = 0
    memory: int = 0  # cases killed for growing past the memory bound
    slow: int = 0
    peak_rss_kib: int = 0

    @property
    def failures(self) -> int:
        return len(self.unexpected) + self.hangs + self.crashes + self.memory + self.slow

    def merge(self, other: Tally) -> None:
        self.executions += other.executions
        self.seconds += other.seconds
        if other.slowest > self.slowest:
            self.slowest, self.slowest_case = other.slowest, other.slowest_case
        self.outcomes.update(other.outcomes)
        self.hows.update(other.hows)
        self.unexpected.extend(other.unexpected)
        self.hangs += other.hangs
        self.crashes += other.crashes
        self.memory += other.memory
        self.slow += other.slow
        self.peak_rss_kib = max(self.peak_rss_kib, other.peak_rss_kib)

    def to_json(self) -> dict[str, object]:
        return {
            "campaign": self.campaign,
            "executions": self.executions,
            "seconds": self.seconds,
            "slowest": self.slowest,
            "slowest_case": self.slowest_case,
            "outcomes": dict(self.outcomes),
            "hows": dict(self.hows),
            "unexpected": self.unexpected,
            "hangs": self.hangs,
            "crashes": self.crashes,
            "memory": self.memory,
            "slow": self.slow,
            "peak_rss_kib": self.peak_rss_kib,
        }

    @classmethod
    def from_json(cls, document: dict) -> Tally:
        tally = cls(str(document["campaign"]))
        for name in ("executions", "hangs", "crashes", "memory", "slow", "peak_rss_kib"):
            setattr(tally, name, int(document[name]))
        tally.seconds = float(document["seconds"])
        tally.slowest = float(document["slowest"])
        tally.slowest_case = str(document.get("slowest_case", ""))
        tally.outcomes = Counter(document["outcomes"])
        tally.hows = Counter(document["hows"])
        tally.unexpected = list(document["unexpected"])
        return tally


def make_case(campaign: Campaign, seed: str, index: int) -> Case:
    return campaign.make(random.Random(f"{seed}/{campaign.name}/{index}"))


def run_case(campaign: Campaign, case: Case, seconds: float = HANG_SECONDS) -> tuple[str, float]:
    """("accepted" | "refused" | "unexpected: ..." | "hang: ...", wall seconds)."""
    started = time.perf_counter()
    try:
        with time_bound(seconds):
            outcome = campaign.run(case)
    except Hang as hang:
        outcome = f"hang: {hang}"
    except Exception as error:  # anything the target did not refuse properly
        where = traceback.extract_tb(error.__traceback__)[-1]
        outcome = (
            f"unexpected: {type(error).__name__}: {str(error)[:200]} "
            f"({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        )
    return outcome, time.perf_counter() - started


def drive(
    campaign: Campaign,
    seed: str,
    *,
    count: int | None = None,
    seconds: float | None = None,
    start: int = 0,
    on_case: Callable[[int], None] | None = None,
    on_failure: Callable[[Case, str], None] | None = None,
    on_tally: Callable[[Tally], None] | None = None,
) -> Tally:
    """Run cases ``start``, ``start + 1``, ... until ``count`` ran or ``seconds`` passed."""
    tally = Tally(campaign.name)
    deadline = None if seconds is None else time.monotonic() + seconds
    index = start
    while (count is None or index < start + count) and (
        deadline is None or time.monotonic() < deadline
    ):
        if on_case is not None:
            on_case(index)
        case = make_case(campaign, seed, index)
        outcome, took = run_case(campaign, case)
        tally.executions += 1
        tally.seconds += took
        if took > tally.slowest:
            tally.slowest, tally.slowest_case = took, f"case {index} ({case.how})"
        tally.hows[case.how] += 1
        failure = None
        if outcome.startswith("hang"):
            tally.hangs += 1
            failure = outcome
        elif outcome.startswith("unexpected"):
            tally.unexpected.append(f"case {index} ({case.how}): {outcome}")
            failure = outcome
        elif took > SLOW_SECONDS:
            tally.slow += 1
            failure = f"slow: {took:.1f} s"
        tally.outcomes[outcome if failure is None else "failed"] += 1
        if failure is not None and on_failure is not None:
            on_failure(case, failure)
        if on_tally is not None:
            on_tally(tally)
        index += 1
    return tally
