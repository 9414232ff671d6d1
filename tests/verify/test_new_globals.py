"""New globals a package carries: both checks pass with the package's copies as the
counterparts of the new build's globals, and a global the new build's start-up code
sets stays blocked (naming the start-up function)."""

from __future__ import annotations

import pefile
import pytest

from hpatch.blockers import BlockerCause
from hpatch.diff import diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions, build_package
from hpatch.verify import Outcome, verify_package
from hpatch.verify.startup import new_data_set_at_start

from ..conftest import BUILDS, SAMPLES, read_truth
from ..diff.samples import sample_diff

OPTIONS = BuildOptions(sequence=2)


@pytest.mark.parametrize("build", BUILDS)
def test_a_package_carrying_new_globals_passes_both_checks(build: str) -> None:
    diff = sample_diff(build, "v3", "global-v3", stripped=False)
    package = build_package(diff, OPTIONS)
    report = verify_package(diff, package, inputs=50)
    assert "hp_fail" in {f.name for f in report.functions}
    for function in report.functions:
        assert function.translation == Outcome.PASSED, function.mismatches
        assert function.emulation.outcome == Outcome.PASSED, function.emulation
    assert new_data_set_at_start(diff) == ()


def entry_at(build: str, function: str) -> bytes:
    """global-v3 with its entry point moved to ``function``: start-up code that sets
    the new globals (hp_fail counts down the quota)."""
    rows = read_truth(SAMPLES / build / "global-v3" / "sample.funcs.tsv")
    rva = next(row.rva for row in rows if row.name == function)
    pe = pefile.PE(str(SAMPLES / build / "global-v3" / "sample.stripped.dll"), fast_load=True)
    pe.OPTIONAL_HEADER.AddressOfEntryPoint = rva
    return bytes(pe.write())


@pytest.mark.parametrize("build", ["x64-clang", "x64-gcc", "arm64-clang"])
def test_new_globals_the_start_up_code_sets_stay_blocked(build: str) -> None:
    old = load_image(SAMPLES / build / "v3" / "sample.stripped.dll")
    new = load_image(entry_at(build, "hp_fail"), name="sample.stripped.dll")
    diff = diff_images(old, new)
    hazards = new_data_set_at_start(diff)
    assert hazards and {h.cause for h in hazards} == {BlockerCause.NEW_DATA_AT_START}
    assert all(h.blocker_class.value == "hazard" for h in hazards)
    # named by the start-up function that names the global: the entry point itself
    entry = diff.new.function_at(diff.new.entry_rva)
    assert entry is not None and {h.function for h in hazards} == {f"sub_{entry.rva:x}"}
    # the sample's own entry point leaves them alone
    assert new_data_set_at_start(sample_diff(build, "v3", "global-v3")) == ()
