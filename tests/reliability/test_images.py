"""Hostile images, bounded: the PE reader gives only image errors, the loader only
hpatch errors, in bounded time (the full run: figures.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpatch.arch import Machine
from hpatch.emu import Process
from hpatch.errors import ImageFormatError
from hpatch.image import load_image

from ..conftest import SAMPLES
from .drawn import check_drawn_cases
from .harness import SLOW_SECONDS, Campaign, Case, drive, run_case
from .image_campaigns import loader, reader, run_loader, run_reader
from .image_mutations import chain_loop

SEED = os.environ.get("HPATCH_RELIABILITY_SEED", "ci")
IMAGE = "sample.stripped.dll"


@pytest.mark.parametrize(
    ("campaign", "cases"), [(reader(), 200), (loader(), 60)], ids=["reader", "loader"]
)
def test_hostile_images_give_only_hpatch_errors(campaign: Campaign, cases: int) -> None:
    tally = drive(campaign, SEED, count=cases)
    assert tally.failures == 0, tally.unexpected
    assert tally.slowest < SLOW_SECONDS
    refused = sum(n for outcome, n in tally.outcomes.items() if outcome.startswith("refused"))
    assert refused > 0 and tally.executions - refused > 0, tally.outcomes
    # Every kind of targeted mutation was tried.
    kinds = {how.split(":")[0] for mutation in tally.hows for how in mutation.split("+")}
    assert kinds >= {"sections", "relocations", "pdata", "imports", "headers", "noise"}, kinds


@pytest.mark.parametrize(
    ("campaign", "cases"), [(reader(), 100), (loader(), 40)], ids=["reader", "loader"]
)
def test_hypothesis_drawn_images_give_only_hpatch_errors(campaign: Campaign, cases: int) -> None:
    """The same mutators with hypothesis drawing every choice (failures shrink)."""

    check_drawn_cases(campaign, cases)


@pytest.mark.parametrize("how", ["self", "entry"])
@pytest.mark.parametrize("index", [0, 7])
def test_unwind_chains_that_loop_are_refused(how: str, index: int) -> None:
    data = bytes(chain_loop((SAMPLES / "x64-clang" / "v1" / IMAGE).read_bytes(), index, how))
    case = Case("image-loader", "x64-clang/v1", f"pdata:chain-loop-{how}", data)
    assert run_case(Campaign("image-reader", reader().make, run_reader), case)[0] == "refused"
    with pytest.raises(ImageFormatError, match=r"unwind info chain of function 0x[0-9a-f]+ loops"):
        assert load_image(data).functions
    outcome, took = run_case(Campaign("image-loader", loader().make, run_loader), case)
    assert outcome == "refused by the reader" and took < SLOW_SECONDS


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_import_loops_load_each_dll_once(build: str, tmp_path: Path) -> None:
    """Two DLLs that import each other, and a DLL that imports itself."""
    data = (SAMPLES / build / "v1" / IMAGE).read_bytes()
    assert data.count(b"samplehost.dll") == 1

    def importing(dll: bytes) -> bytes:
        return data.replace(b"samplehost.dll", dll.ljust(len(b"samplehost.dll"), b"\0"))

    machine = Machine.ARM64 if build.startswith("arm64") else Machine.AMD64
    (tmp_path / "loopa.dll").write_bytes(importing(b"loopb.dll"))
    (tmp_path / "loopb.dll").write_bytes(importing(b"loopa.dll"))
    target = Process(machine)
    target.load_image(tmp_path / "loopa.dll")
    assert sorted(m.name for m in target.modules) == ["loopa.dll", "loopb.dll"]
    # The import of the DLL still loading binds to a stub that faults when called.
    first = target.module("loopa.dll")
    assert first is not None and first.image.imports[0].dll == "loopb.dll"

    (tmp_path / "loopa.dll").write_bytes(importing(b"loopa.dll"))
    target = Process(machine)
    target.load_image(tmp_path / "loopa.dll")
    assert [m.name for m in target.modules] == ["loopa.dll"]
