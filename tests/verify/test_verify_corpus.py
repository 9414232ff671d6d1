"""Verification on the real-world pairs (only when the corpus is fetched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpatch.diff import diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions, PackageBlocked, build_package
from hpatch.verify import Outcome, verify_package

from ..conftest import corpus_binaries


def corpus_pairs() -> list[tuple[str, Path, Path]]:
    by_pair: dict[str, dict[str, Path]] = {}
    for pair, _arch, path in corpus_binaries():
        by_pair.setdefault(pair, {})[path.stem] = path
    return [(pair, f["old"], f["new"]) for pair, f in sorted(by_pair.items()) if len(f) == 2]


PAIRS = corpus_pairs()


@pytest.mark.skipif(not PAIRS, reason="the real-world corpus is not fetched")
def test_every_emitted_real_world_package_passes_both_checks() -> None:
    verified = emulated = total = 0
    for pair, old_path, new_path in PAIRS:
        if old_path.stat().st_size > (1 << 20):
            continue  # the large pairs are feature releases the verdict blocks (bench/realworld.py)
        diff = diff_images(load_image(old_path), load_image(new_path))
        if not diff.hotpatchable:
            continue
        try:
            package = build_package(diff, BuildOptions(sequence=1))
        except PackageBlocked:
            continue
        report = verify_package(diff, package, inputs=100)
        for function in report.functions:
            assert function.translation == Outcome.PASSED, (pair, function)
            assert function.emulation.outcome != Outcome.FAILED, (pair, function)
            total += 1
            emulated += function.emulation.outcome == Outcome.PASSED
        verified += 1
    assert verified >= 1, "no real-world pair gave a package"
    assert 2 * emulated >= total
