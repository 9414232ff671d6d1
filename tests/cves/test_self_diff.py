"""Every DLL of the CVE corpus diffed against itself and against a copy rebased with
its own relocations: nothing changes and nothing blocks (mingw builds hold pointers in
code sections and to section ends; every build links at its own base)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import CVE_ABSENT, cve_pairs
from ..diff.rebased import rebased_copy
from ..diff.test_self_diff import assert_nothing_changed

DLLS = sorted({path for pair in cve_pairs() for path in (pair.old, pair.new)})


def _dll_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


@pytest.mark.skipif(not DLLS, reason=CVE_ABSENT)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", DLLS, ids=[_dll_id(p) for p in DLLS])
def test_cve_dll_against_itself_and_rebased(path: Path, tmp_path: Path) -> None:
    assert_nothing_changed(path, path)
    assert_nothing_changed(path, rebased_copy(path, tmp_path / path.name))
