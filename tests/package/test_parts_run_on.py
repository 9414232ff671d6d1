"""MSVC ARM64 functions in parts: a page completed in another part of the same run is
bound and proven; a run whose code goes on past its end is refused.

psutil 7.1.0 -> 7.1.1 (ARM64) holds both in one function: ``sub_6dac`` is a chained
fragment of ``sub_6d80`` (which falls into it). Its ADRP at 0x6db4 is completed at
0x6e34, two parts on, and its last part ends at 0x6e48 with no return: the code goes
on into ``sub_6d80``'s epilogue. Runs only when the real-world corpus is fetched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.mark.timeout(600)
def test_code_running_on_past_its_last_part_is_refused_not_its_page() -> None:
    diff = psutil_diff()
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
    diff = psutil_diff()
    with monkeypatch.context() as patch:
        patch.setattr(type(diff.new.arch), "falls_through", lambda *_: False)
        package = build_package(diff)
    report = verify_package(diff, package, emulate=False)
    outcomes = {f.name: f for f in report.functions}
    assert {name for name, f in outcomes.items() if f.translation != Outcome.PASSED} == {"sub_6dac"}
    (mismatch,) = outcomes["sub_6dac"].mismatches
    assert mismatch.reason.startswith("the code runs on past the end of its part")
    assert "old RVA 0x6e48" in mismatch.reason
