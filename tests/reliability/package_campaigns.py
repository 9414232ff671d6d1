"""The package campaigns: hostile packages against the reader, and against the
applier of a process running the baseline (or a package already)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from functools import cache

from hpatch.apply import apply_package, rollback
from hpatch.errors import ApplyError, PackageFormatError
from hpatch.package import Package, decode_package, encode_package

from .harness import Campaign, Case
from .package_mutations import mutant
from .samples import (
    BUILDS,
    PAIRS,
    baseline_mapped,
    process,
    signed,
    signed_bytes,
    signing_key,
    snapshot,
    trusting,
)


def _context(case: Case) -> tuple[str, str, str, int, str]:
    build, old, new, sequence, start = case.context.split("/")
    return build, old, new, int(sequence), start


def _make(rng: random.Random, campaign: str, start: str) -> Case:
    """A mutant of a sample package, signed by the trusted key most of the time. Records
    are changed in the decoded package, resolved against the baseline when the change
    is to the region's bytes or targets (which then must be coded again), unresolved
    otherwise (the region stream is kept as it is)."""
    build = rng.choice(BUILDS)
    old, new, sequence = rng.choice(PAIRS)
    key = signing_key() if rng.random() < 0.8 else None
    data = signed_bytes(build, old, new, sequence)
    if key is None:
        data = encode_package(replace(signed(build, old, new, sequence), signature=None))
    base = decoded(data, build, old) if rng.random() < 0.3 else decoded(data)
    made, how = mutant(base, data, rng, key)
    return Case(campaign, f"{build}/{old}/{new}/{sequence}/{start}", how, made)


@cache
def decoded(data: bytes, build: str | None = None, version: str | None = None) -> Package:
    if build is None or version is None:
        return decode_package(data)
    return decode_package(data, baseline_mapped(build, version))


def make_reader_case(rng: random.Random) -> Case:
    return _make(rng, "package-reader", "-")


def run_reader(case: Case) -> str:
    """Decode without and with the baseline: PackageFormatError, or a package that
    encodes back to the very bytes read (the format is canonical)."""
    build, old, _new, _sequence, _start = _context(case)
    outcomes = []
    for baseline in (None, baseline_mapped(build, old)):
        try:
            package = decode_package(case.data, baseline)
        except PackageFormatError:
            outcomes.append("refused")
            continue
        assert encode_package(package) == case.data, "accepted bytes that are not canonical"
        outcomes.append("accepted")
    return outcomes[0] if outcomes[0] == outcomes[1] else "/".join(outcomes)


#: How often each kind of mutant got past the reader to the applier (per run).
REACHED_APPLIER: Counter[str] = Counter()


def make_applier_case(rng: random.Random) -> Case:
    """A mutant the reader accepts, most of the time (the applier's input); the start
    is the baseline, or package 2 already applied (the mutant then replaces it)."""
    case = None
    for _ in range(12):
        start = "baseline"
        if rng.random() < 0.4:
            start = "active"
        case = _make(rng, "package-applier", start)
        build, old, new, sequence, start = _context(case)
        if start == "active" and (old, sequence) != ("v1", 3):
            case = Case(
                case.campaign, f"{build}/{old}/{new}/{sequence}/baseline", case.how, case.data
            )
        try:
            decode_package(case.data)
        except PackageFormatError:
            continue
        return case
    assert case is not None
    return case


def run_applier(case: Case) -> str:
    """Apply to a process running the baseline: ApplyError with the process as it was,
    or applied, and a rollback then gives back the baseline exactly."""
    build, old, _new, _sequence, start = _context(case)
    try:
        package = decode_package(case.data)
    except PackageFormatError:
        return "refused by the reader"
    target = process(build, old)
    fresh = snapshot(target)
    if start == "active":
        apply_package(target, signed(build, "v1", "v2", 2), options=trusting())
    before = snapshot(target)
    try:
        apply_package(target, package, options=trusting())
    except ApplyError:
        assert snapshot(target) == before, "a refused apply changed the process"
        return "refused"
    rollback(target)
    assert snapshot(target)[:2] == fresh[:2], "the rollback did not restore the baseline"
    return "accepted"


READER = Campaign("package-reader", make_reader_case, run_reader)
APPLIER = Campaign("package-applier", make_applier_case, run_applier)
