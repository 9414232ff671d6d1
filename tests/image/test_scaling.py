"""Function discovery costs what an image holds, entry by entry: 50,000 .pdata entries
or exports cost a few hundred bytes each, kept and at the peak (traced by tracemalloc;
no timing is asserted)."""

from __future__ import annotations

import tracemalloc

import pytest

from hpatch.image import load_image
from hpatch.image.model import Evidence

from ..conftest import SAMPLES
from .mutants import with_functions

GCC_X64 = SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll"
COUNT = 50_000
#: Bytes of Python memory per entry: what the model keeps (the entries, the functions),
#: and the most discovery holds at once, by kind. Measured: 331 and 354 kept, 639 and
#: 785 at the peak; before, the peaks were 1254 and 1720.
KEPT_PER_ENTRY = 450
PEAK_PER_ENTRY = {"pdata": 800, "exports": 1000}


@pytest.mark.parametrize("kind", ["pdata", "exports"])
def test_memory_per_entry_is_bounded(kind: str) -> None:
    data = with_functions(
        GCC_X64.read_bytes(), COUNT, pdata=kind == "pdata", exports=kind == "exports"
    )
    assert load_image(GCC_X64).functions  # imports and one-time tables, not counted
    tracemalloc.start()
    try:
        image = load_image(data)
        functions = image.functions
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    added = next(s for s in image.sections if s.name == ".text2")
    found = [f for f in functions if added.contains(f.rva)]
    assert len(found) == COUNT
    evidence = Evidence.PDATA if kind == "pdata" else Evidence.EXPORT
    assert all(evidence in f.sources for f in found[:: COUNT // 100])
    assert kept < KEPT_PER_ENTRY * COUNT, kept / COUNT
    assert peak < PEAK_PER_ENTRY[kind] * COUNT, peak / COUNT
