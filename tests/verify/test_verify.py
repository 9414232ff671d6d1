"""Translation validation and differential emulation of the sample packages."""

from __future__ import annotations

import dataclasses

import pytest

from hpatch.diff import BlockerKind
from hpatch.diff.verdict import BlockerCause, BlockerClass, Build, function_label
from hpatch.errors import HPatchError
from hpatch.package import BuildOptions, PackageBlocked, build_package
from hpatch.package.model import BlobKind
from hpatch.verify import Outcome, build_verified_package, verify_package
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.differential import DifferentialRunner
from hpatch.verify.session import Session

from ..conftest import BUILDS
from ..diff.samples import sample_diff
from .tampering import corrupt_fixup, owner, swap_callee

PAIRS = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"))
OPTIONS = BuildOptions(sequence=2)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_every_sample_package_passes_both_checks(build: str, pair: tuple[str, str]) -> None:
    diff = sample_diff(build, *pair)
    package = build_package(diff, OPTIONS)
    report = verify_package(diff, package, inputs=100)
    assert len(report.functions) == len(package.functions) > 0
    for function in report.functions:
        assert function.translation == Outcome.PASSED, function.mismatches
        assert function.emulation.outcome == Outcome.PASSED, function.emulation
        assert function.emulation.agreed == 100
        assert function.emulation.returned > 0
    assert report.passed


@pytest.mark.parametrize("build", BUILDS)
def test_a_corrupted_fixup_fails_validation_and_names_the_function(build: str) -> None:
    diff = sample_diff(build, "v1", "v3")
    corrupted, function = corrupt_fixup(build_package(diff, OPTIONS))
    report = verify_package(diff, corrupted, emulate=False)
    failed = {f.name: f for f in report.failed}
    assert function.name in failed or f"sub_{function.new_rva:x}" in failed
    named = failed.get(function.name) or failed[f"sub_{function.new_rva:x}"]
    assert named.translation == Outcome.FAILED
    first = named.mismatches[0]
    assert first.patched_instruction and first.new_instruction
    assert not report.passed


@pytest.mark.parametrize("build", BUILDS)
def test_a_swapped_callee_fails_validation_and_names_the_caller(build: str) -> None:
    swapped, caller = swap_callee(sample_diff(build, "v1", "v3"))
    report = verify_package(swapped, build_package(swapped, OPTIONS), emulate=False)
    failed = {f.name: f for f in report.failed}
    assert caller in failed
    assert any("not the same code" in m.reason for m in failed[caller].mismatches)


@pytest.mark.parametrize("build", BUILDS)
def test_no_package_is_built_for_a_function_that_fails(build: str) -> None:
    swapped, caller = swap_callee(sample_diff(build, "v1", "v3"))
    with pytest.raises(PackageBlocked) as blocked:
        build_verified_package(swapped, OPTIONS)
    blockers = blocked.value.blockers
    assert {(b.kind, b.cause) for b in blockers} == {
        (BlockerKind.UNVALIDATED, BlockerCause.TRANSLATION_FAILED)
    }
    assert all(b.blocker_class == BlockerClass.LIMITATION for b in blockers)
    assert caller in {b.where for b in blockers}
    functions = {f.rva: f for f in swapped.new.functions}
    for blocker in blockers:
        assert blocker.build == Build.NEW and blocker.rva in functions
        assert blocker.function == blocker.where == function_label(functions[blocker.rva])


def test_a_verified_package_is_the_package_built() -> None:
    diff = sample_diff("x64-gcc", "v1", "v3")
    package, report = build_verified_package(diff, OPTIONS)
    assert package == build_package(diff, OPTIONS)
    assert report is not None and report.passed
    unverified, none = build_verified_package(diff, OPTIONS, validate=False)
    assert unverified == package and none is None


@pytest.mark.parametrize("build", BUILDS)
def test_emulation_catches_changed_behaviour(build: str) -> None:
    """A constant changed in the package's copy of a function (the static check would
    stop it first; here the emulation is run on its own) changes what the function
    returns or writes for some input."""
    diff = sample_diff(build, "v1", "v3")
    package = build_package(diff, OPTIONS)
    target = next(f for f in package.functions if f.name == "hp_version")
    # hp_version returns a constant: flip the low bit of every byte of its code until
    # one changes the result without breaking the code.
    code = next(
        b for b in package.blobs if b.kind == BlobKind.CODE and b.offset == target.entry_offset
    )
    outcomes = set()
    for at in range(code.size):
        data = bytearray(code.data)
        data[at] ^= 1
        blobs = tuple(
            dataclasses.replace(b, data=bytes(data)) if b is code else b for b in package.blobs
        )
        changed = dataclasses.replace(package, blobs=blobs)
        runner = _runner(diff, changed)
        if runner is None:
            continue
        summary = runner.run(target)
        outcomes.add(summary.outcome)
        if summary.outcome == Outcome.FAILED:
            assert "input set" in summary.detail
            break
    assert Outcome.FAILED in outcomes
    assert owner(package, target.entry_offset) == target


def _runner(diff, package) -> DifferentialRunner | None:  # type: ignore[no-untyped-def]
    try:
        session = Session(diff, package)
    except HPatchError:
        return None
    return DifferentialRunner(session, Counterparts(session), 10)


@pytest.mark.parametrize("build", ("x64-gcc", "arm64-clang"))
def test_both_processes_map_the_same_ranges_outside_the_images(build: str) -> None:
    """A pointer a run makes up must read the same bytes, or fault, on both sides."""
    diff = sample_diff(build, "v1", "v2")
    session = Session(diff, build_package(diff, OPTIONS))

    def layout(process, module) -> list:  # type: ignore[no-untyped-def]
        return [
            (r.va, r.size, tuple(r.protections), bytes(r.view))
            for r in process.space.regions
            if not module.contains(r.va) and not session.in_region(r.va)
        ]

    patched = layout(session.patched, session.old_module)
    assert patched == layout(session.new, session.new_module)
    # the patched side has more than the new one of its own (the redirect stepper's stack)
    assert any("mirror of" in r.name for r in session.new.space.regions)
