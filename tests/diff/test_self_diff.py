"""A build diffed against itself, or against a copy rebased with its own relocations,
changes nothing: every pointer is compared by what it points at, never by its value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpatch.diff import Status, diff_images
from hpatch.image import load_image

from ..conftest import sample_dirs, sample_id
from .rebased import REBASE_DELTA, rebased_copy

SAMPLES = [d / "sample.stripped.dll" for d in sample_dirs()]


def assert_nothing_changed(old_path: Path, new_path: Path) -> None:
    result = diff_images(load_image(old_path), load_image(new_path))
    changed = [c for c in result.changes if c.status != Status.UNCHANGED]
    assert changed == [], [(c.status, c.reason) for c in changed[:5]]
    assert result.blockers == ()


@pytest.mark.parametrize("path", SAMPLES, ids=[sample_id(d) for d in sample_dirs()])
def test_sample_against_itself(path: Path) -> None:
    assert_nothing_changed(path, path)


@pytest.mark.parametrize("path", SAMPLES, ids=[sample_id(d) for d in sample_dirs()])
def test_sample_against_rebased_copy(path: Path, tmp_path: Path) -> None:
    copy = rebased_copy(path, tmp_path / path.name)
    old, new = load_image(path), load_image(copy)
    # The copy really differs in every relocated pointer and in its preferred base.
    assert new.image_base == old.image_base + REBASE_DELTA
    assert old.relocations and old.mapped != new.mapped
    assert_nothing_changed(path, copy)
