"""Every DLL of the CVE corpus, and every binary of the real-world wheel corpus, diffed
against itself and against a copy rebased with its own relocations: nothing changes and
nothing blocks (mingw builds hold pointers in code sections and to section ends; every
build links at its own base). The long corpus run (make cves) holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import CVE_ABSENT, corpus_binaries, cve_pairs
from ..diff.rebased import rebased_copy
from ..diff.test_self_diff import assert_nothing_changed

DLLS = sorted({path for pair in cve_pairs() for path in (pair.old, pair.new)})
WHEEL_BINARIES = sorted({path for _, _, path in corpus_binaries()})


def _dll_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


@pytest.mark.skipif(not DLLS, reason=CVE_ABSENT)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", DLLS, ids=[_dll_id(p) for p in DLLS])
def test_cve_dll_against_itself_and_rebased(path: Path, tmp_path: Path) -> None:
    assert_nothing_changed(path, path)
    assert_nothing_changed(path, rebased_copy(path, tmp_path / path.name))


@pytest.mark.skipif(
    not WHEEL_BINARIES, reason="real-world corpus absent (run ../shared/corpus/fetch.sh)"
)
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "path", WHEEL_BINARIES, ids=[f"{p.parent.name}/{p.name}" for p in WHEEL_BINARIES]
)
def test_wheel_binary_against_itself_and_rebased(path: Path, tmp_path: Path) -> None:
    assert_nothing_changed(path, path)
    assert_nothing_changed(path, rebased_copy(path, tmp_path / path.name))
