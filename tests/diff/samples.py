"""Diffs of the sample builds, computed once per session (a DiffResult is immutable)."""

from __future__ import annotations

from functools import cache

from hpatch.diff import DiffResult, diff_images
from hpatch.image import load_image

from ..conftest import SAMPLES


@cache
def sample_diff(build: str, old: str, new: str, stripped: bool = True) -> DiffResult:
    name = "sample.stripped.dll" if stripped else "sample.dll"
    return diff_images(
        load_image(SAMPLES / build / old / name), load_image(SAMPLES / build / new / name)
    )
