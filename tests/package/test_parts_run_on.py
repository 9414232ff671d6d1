"""MSVC ARM64 functions in parts: a page completed in another part of the same run is
bound and proven; a run whose code goes on past its end is refused.

psutil 7.1.0 -> 7.1.1 (ARM64) holds both in one function. ``sub_6d80`` saves part of
its frame and runs on into 0x6dac, where a second primary .pdata entry saves the rest
(MSVC's shrink-wrapped prolog: an entry per stage of the frame). Discovery takes the
two for one function, and the update is packaged and proven. Taken for two functions
(as discovery once took them), ``sub_6dac``'s ADRP at 0x6db4 is completed at 0x6e34,
two parts on, and its last part ends at 0x6e48 with no return: the code goes on into
``sub_6d80``'s epilogue, which the builder refuses and validation catches. Runs only
when the real-world corpus is fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import hpatch.image.pdata
from hpatch.blockers import BlockerCause
from hpatch.diff import DiffResult, diff_images
from hpatch.image import load_image
from hpatch.package import PackageBlocked, build_package
from hpatch.verify import verify_package
from hpatch.verify.model import Outcome

from ..conftest import corpus_binaries

PAIR = "psutil-7.1.0-7.1.1-win_arm64-_psutil_windows.pyd"
FOLDERS = [Path(str(p)).parent for pair_id, _, p in corpus_binaries() if pair_id == PAIR]
pytestmark = pytest.mark.skipif(not FOLDERS, reason="the real-world corpus is not fetched")


def psutil_diff() -> DiffResult:
    folder = FOLDERS[0]
    old_path, new_path = (next(folder.glob(f"{which}.*")) for which in ("old", "new"))
    return diff_images(load_image(old_path), load_image(new_path))


def split_diff(monkeypatch: pytest.MonkeyPatch) -> DiffResult:
    """The diff with every stage of a frame taken for a function of its own."""
    monkeypatch.setattr(hpatch.image.pdata, "runs_into", lambda *_: False)
    return psutil_diff()


@pytest.mark.timeout(600)
def test_the_stages_of_a_frame_are_one_function_packaged_and_proven() -> None:
    diff = psutil_diff()
    for image in (diff.old, diff.new):
        function = image.function_at(0x6DAC)
        assert function is not None and function.rva == 0x6D80
        assert 0x6DAC in {f.rva for f in function.fragments}
        assert image.function_at(0x6E48) is function  # the epilogue it runs on into
    package = build_package(diff)
    assert 0x6D80 in {f.new_rva for f in package.functions}
    report = verify_package(diff, package, emulate=True)
    assert report.passed
    outcomes = {f.name: f for f in report.functions}
    assert outcomes["sub_6d80"].translation == Outcome.PASSED
    assert outcomes["sub_6d80"].emulation.outcome == Outcome.PASSED


@pytest.mark.timeout(600)
def test_code_running_on_past_its_last_part_is_refused_not_its_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    diff = split_diff(monkeypatch)
    with pytest.raises(PackageBlocked) as refused:
        build_package(diff)
    (blocker,) = refused.value.blockers
    assert blocker.cause == BlockerCause.RELOCATION_ERROR
    assert blocker.function == "sub_6dac"
    assert "runs on past its end, into 0x6e48" in blocker.reason


@pytest.mark.timeout(600)
def test_a_copy_that_runs_on_into_the_region_fails_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Built as if the last part ended in a return: its page, completed two parts on,
    # is bound and proven; only what follows the copy fails (differential emulation
    # once ran on there into the next function of the region).
    diff = split_diff(monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(type(diff.new.arch), "falls_through", lambda *_: False)
        package = build_package(diff)
    report = verify_package(diff, package, emulate=False)
    outcomes = {f.name: f for f in report.functions}
    assert {name for name, f in outcomes.items() if f.translation != Outcome.PASSED} == {"sub_6dac"}
    (mismatch,) = outcomes["sub_6dac"].mismatches
    assert mismatch.reason.startswith("the code runs on past the end of its part")
    assert "old RVA 0x6e48" in mismatch.reason
