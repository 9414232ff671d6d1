"""Fault injection, bounded: every step of apply, replace and rollback failed with
errors the applier knows nothing of, at a rebased image (hpatch errors at the preferred
base: tests/apply/test_refusals.py; every combination: figures.py)."""

from __future__ import annotations

import pytest

from ..apply.support import REBASED
from .faults import KINDS, OPERATIONS, inject_every_step


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("build", ["x64-clang-hotpatch", "arm64-clang"])
def test_every_step_fails_and_the_image_is_restored(build: str, kind: str) -> None:
    steps: set[str] = set()
    for operation, version in OPERATIONS:
        tally = inject_every_step(build, operation, version, REBASED, kind)
        assert tally.injected >= 4, (operation, version)
        assert tally.restored == tally.injected, tally.failures
        steps |= tally.steps
    assert steps == {"map", "protect", "write", "unmap", "register unwind table"} | {
        "remove unwind table"
    }
