"""Every DLL of the CVE corpus and of the real-world wheel corpora (the default one and
the extra one of make realworld) loads as `hpatch apply` loads it, TLS callbacks and
entry point run: the start-up surface its DllMain and CRT initialisation use is
modelled (hpatch/emu/startup.py), and a second load leaves the same bytes
(deterministic)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from hpatch.emu import Module, Process
from hpatch.emu.memory import PAGE_SIZE, Protection
from hpatch.emu.tls import TEB_TLS_POINTER, tls_directory
from hpatch.errors import UnsupportedError
from hpatch.image import load_image

from ..conftest import CVE_ABSENT, CvePair, corpus_binaries, cve_pairs
from ..test_cli import run


def _extra_binaries() -> list[Path]:
    root = Path(os.environ.get("HPCORPUS_EXTRA", Path.home() / ".cache" / "hpatch-corpus-extra"))
    listing = root / "pairs.tsv"
    if not listing.is_file():
        return []
    fields = [line.split("\t") for line in listing.read_text().splitlines()]
    return [Path(p) for row in fields if len(row) == 4 for p in row[2:] if Path(p).is_file()]


def _wheels() -> list[Path]:
    roots = {path.parent.parent.parent for path in WHEEL_BINARIES}  # <root>/pairs/<id>/x
    return sorted(wheel for root in roots for wheel in (root / "wheels").glob("*.whl"))


def _members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return sorted(n for n in archive.namelist() if n.lower().endswith((".dll", ".pyd")))


CVE_DLLS = sorted({path for pair in cve_pairs() for path in (pair.old, pair.new)})
WHEEL_BINARIES = sorted({path for _, _, path in corpus_binaries()} | set(_extra_binaries()))


WHEEL_MEMBERS = [(wheel, member) for wheel in _wheels() for member in _members(wheel)]


def _writable_pages(process: Process, module: Module) -> list[bytes]:
    """The module's data after its entry point ran (what DllMain initialised)."""
    pages = range(module.base, module.end, PAGE_SIZE)
    return [
        process.space.read(va, PAGE_SIZE)
        for va in pages
        if process.space.protection_at(va) & Protection.W
    ]


def _load_with_entry_point(path: Path) -> list[bytes]:
    image = load_image(path)
    # As `hpatch apply` loads IMAGE: the DLLs beside it found, the entry point run.
    process = Process(image.identity.machine, search_path=[path.parent])
    module = process.load_image(image)
    tls = tls_directory(process.space, module)
    if tls is not None:  # the loader gave the image an index and the thread its block
        index = int.from_bytes(process.space.read(tls.index_va, 4), "little")
        array = process.space.read_u64(process.main_thread.teb.va + TEB_TLS_POINTER)
        assert process.space.read_u64(array + 8 * index)
    return _writable_pages(process, module)


def _assert_loads(path: Path) -> None:
    first = _load_with_entry_point(path)
    assert _load_with_entry_point(path) == first, "two loads initialised different data"


@pytest.mark.skipif(not CVE_DLLS, reason=CVE_ABSENT)
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "path", CVE_DLLS, ids=[f"{p.parent.parent.name}/{p.parent.name}/{p.name}" for p in CVE_DLLS]
)
def test_cve_dll_loads_with_its_entry_point_run(path: Path) -> None:
    _assert_loads(path)


@pytest.mark.skipif(
    not WHEEL_BINARIES, reason="real-world corpus absent (run ../shared/corpus/fetch.sh)"
)
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "path", WHEEL_BINARIES, ids=[f"{p.parent.name}/{p.name}" for p in WHEEL_BINARIES]
)
def test_wheel_binary_loads_with_its_entry_point_run(path: Path) -> None:
    _assert_loads(path)


CJSON_PAIRS = [p for p in cve_pairs() if p.pair_id.startswith("cjson-") and p.kind == "code-only"]


@pytest.mark.skipif(not CJSON_PAIRS, reason=CVE_ABSENT)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("pair", CJSON_PAIRS, ids=[p.pair_id for p in CJSON_PAIRS])
def test_cli_apply_runs_the_entry_point_by_default(
    pair: CvePair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line, end to end: a package of the pair applies to the old DLL loaded
    with its entry point run (no --no-entry-point), and rolls back."""
    package = tmp_path / "fix.hpk"
    code, _, err = run(capsys, "diff", str(pair.old), str(pair.new), "-o", str(package))
    assert code == 0, err
    code, out, err = run(
        capsys, "apply", str(pair.old), str(package), "--allow-unsigned", "--rollback", "--json"
    )
    assert code == 0, err
    document = json.loads(out)
    assert [p["outcome"] for p in document["packages"]] == ["applied"]


@pytest.mark.skipif(
    not WHEEL_MEMBERS, reason="real-world corpus absent (run ../shared/corpus/fetch.sh)"
)
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("wheel", "member"), WHEEL_MEMBERS, ids=[f"{w.stem}/{m}" for w, m in WHEEL_MEMBERS]
)
def test_every_dll_of_every_fetched_wheel_loads(wheel: Path, member: str, tmp_path: Path) -> None:
    """Beyond the pairs: every DLL and extension module the corpus's wheels ship (numpy's
    msvcp140 and OpenBLAS, lxml's, pillow's), each alone in a directory."""
    path = tmp_path / Path(member).name
    with zipfile.ZipFile(wheel) as archive:
        path.write_bytes(archive.read(member))
    try:
        load_image(path)
    except UnsupportedError as refused:  # an ARM64X build: refused by design, not here
        pytest.skip(str(refused)[:80])
    _assert_loads(path)
