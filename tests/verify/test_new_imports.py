"""Carried code that calls through an import the old image lacks: the package's slot for
it is the counterpart of the new build's IAT slot, and nothing else is."""

from __future__ import annotations

import dataclasses

import pytest

from hpatch.package import BuildOptions, build_package
from hpatch.package.model import TargetKind
from hpatch.verify import Outcome, verify_package

from ..conftest import BUILDS
from ..diff.samples import sample_diff

OPTIONS = BuildOptions(sequence=2)


@pytest.mark.parametrize("build", BUILDS)
def test_a_package_adding_an_import_passes_both_checks(build: str) -> None:
    diff = sample_diff(build, "v3", "import-v3", stripped=False)
    assert not diff.blockers
    package = build_package(diff, OPTIONS)
    assert [i.label for i in package.new_imports] == ["samplehost.dll!host_log_count"]
    report = verify_package(diff, package, inputs=50)
    assert {f.name for f in report.functions} >= {"hp_fail"}
    for function in report.functions:
        assert function.translation == Outcome.PASSED, function.mismatches
        assert function.emulation.outcome == Outcome.PASSED, function.emulation
    assert report.passed


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_code_bound_to_another_slot_fails_validation(build: str) -> None:
    diff = sample_diff(build, "v3", "import-v3", stripped=False)
    package = build_package(diff, OPTIONS)
    slot = package.new_imports[0].slot_offset
    # the calls through the new import bound to an import the old image has instead
    fixups = tuple(
        dataclasses.replace(f, target_kind=TargetKind.IMPORT, target=0)
        if f.target_kind == TargetKind.REGION and f.target == slot
        else f
        for f in package.fixups
    )
    assert fixups != package.fixups
    report = verify_package(diff, dataclasses.replace(package, fixups=fixups), emulate=False)
    failed = {f.name: f for f in report.failed}
    assert "hp_fail" in failed
    reasons = [m.reason for m in failed["hp_fail"].mismatches]
    assert any("host_log_count is not imported by the old image" in r for r in reasons)
