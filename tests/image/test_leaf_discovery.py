"""Functions without unwind data: leaves reached by calls, tail calls and addresses,
packed against the function before them, and dead code, on the samples and on the CVE
corpus (../shared/cves) against the COFF symbols of its builds."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import struct
from collections import defaultdict
from pathlib import Path

import pytest

from hpatch.arch import SiteKind
from hpatch.image import Evidence, load_image
from hpatch.image.reader import PEImage

from ..conftest import SAMPLES, VERSIONS, read_truth

CVE_ROOT = Path(os.environ.get("HPCVES", Path.home() / ".cache" / "hpatch-cves"))
CVE_ABSENT = "CVE corpus absent: build it with ../shared/cves/build.sh"
#: Share of the symbols' function starts found, per build, as measured: all of them.
#: The slack allows for a corpus built again with other compiler versions.
MIN_RECALL = 0.999
_EXCEPTION_DIRECTORY = 3


def reference_kinds(image: PEImage) -> dict[int, set[SiteKind]]:
    """Target -> the kinds of the direct references to it anywhere in code."""
    kinds: dict[int, set[SiteKind]] = defaultdict(set)
    for section in image.executable_sections:
        sites = image.arch.scan_sites(section.data, section.rva, 0, image.size_of_image)
        for target, kind in zip(sites.targets, sites.kinds, strict=True):
            kinds[target].add(SiteKind(kind))
    return kinds


def leaves_of(sample_dir: Path) -> tuple[PEImage, list[tuple[object, object]]]:
    """The stripped sample, and (previous, row) truth pairs of its functions without
    unwind data."""
    image = load_image(sample_dir / "sample.stripped.dll")
    rows = sorted(
        (r for r in read_truth(sample_dir / "sample.funcs.tsv") if not r.parent),
        key=lambda r: r.rva,
    )
    pdata = {entry.begin_rva for entry in image.unwind_entries}
    return image, [(a, b) for a, b in itertools.pairwise(rows) if b.rva not in pdata]


def test_leaves_packed_after_a_function_and_only_called_are_found(sample_dir: Path) -> None:
    image, leaves = leaves_of(sample_dir)
    kinds = reference_kinds(image)
    functions = {f.rva: f for f in image.functions}
    packed = [
        row
        for previous, row in leaves
        if previous.rva + previous.size == row.rva and kinds.get(row.rva) == {SiteKind.CALL}
    ]
    for row in packed:
        function = functions.get(row.rva)
        assert function is not None, row.name
        assert function.size == row.size, row.name
        assert Evidence.CALL in function.sources, row.name
    if sample_dir.parent.name == "arm64-clang":  # clang packs ARM64 functions
        assert len(packed) >= 19


def test_leaves_reached_only_by_jumps_from_other_functions_are_found(sample_dir: Path) -> None:
    image, leaves = leaves_of(sample_dir)
    kinds = reference_kinds(image)
    functions = {f.rva: f for f in image.functions}
    jumped = [
        row
        for _, row in leaves
        if kinds.get(row.rva) and kinds[row.rva] <= {SiteKind.JUMP, SiteKind.COND_JUMP}
    ]
    for row in jumped:
        function = functions.get(row.rva)
        assert function is not None, row.name
        assert function.size == row.size, row.name
        assert Evidence.JUMP in function.sources, row.name
    if sample_dir.parent.name != "x64-gcc":  # clang tail-calls a shared helper
        assert len(jumped) == 2


def without_unwind_data(path: Path) -> bytes:
    """The image at ``path`` with its exception directory (.pdata) emptied."""
    data = bytearray(path.read_bytes())
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    # PE32+: the data directories start 112 bytes into the optional header.
    struct.pack_into("<II", data, pe_offset + 24 + 112 + 8 * _EXCEPTION_DIRECTORY, 0, 0)
    return bytes(data)


#: Reached only by a jump from the function right before them: without unwind data,
#: nothing tells them from that function's own blocks.
_OWN_BLOCKS_WITHOUT_PDATA = {
    "tlv_find_path_rec": "hp_tlv_find_path",
    "parse_primary": "parse_unary",
    "parse_number": "parse_unary",
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("build", ["x64-clang", "x64-clang-hotpatch", "arm64-clang"])
def test_clang_samples_without_unwind_data_split_nowhere(build: str, version: str) -> None:
    """With .pdata gone every function is a leaf: calls, tail calls, addresses and
    exports must find them all, each with its own extent, and split none."""
    folder = SAMPLES / build / version
    image = load_image(without_unwind_data(folder / "sample.stripped.dll"))
    assert image.unwind_entries == ()
    truth = [row for row in read_truth(folder / "sample.funcs.tsv") if not row.parent]
    found = {f.rva: f for f in image.functions}
    assert not [f.fragments for f in image.functions if f.fragments]
    assert set(found) <= {row.rva for row in truth}
    missed = {row.name for row in truth if row.rva not in found}
    assert missed == set(_OWN_BLOCKS_WITHOUT_PDATA)
    # The functions those blocks follow own them; every other extent is exact.
    sizes = {row.name: (found[row.rva].size, row.size) for row in truth if row.rva in found}
    wrong = {name for name, (size, expected) in sizes.items() if size != expected}
    assert wrong == set(_OWN_BLOCKS_WITHOUT_PDATA.values())


def cve_images() -> dict[str, list[tuple[Path, dict[str, list[int]]]]]:
    """Build -> (stripped DLL, its functions {name: [start, end]} from the truth) for
    every DLL of the CVE corpus, each once."""
    listing = CVE_ROOT / "pairs.tsv"
    if not listing.is_file():
        return {}
    found: dict[Path, dict[str, list[int]]] = {}
    for line in listing.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) != 6:
            continue
        old, new, truth = Path(fields[2]), Path(fields[3]), Path(fields[4])
        if not (old.is_file() and new.is_file() and truth.is_file()):
            continue
        if old in found and new in found:
            continue
        document = json.loads(truth.read_text())
        found.setdefault(old, document["old_funcs"])
        found.setdefault(new, document["new_funcs"])
    builds: dict[str, list[tuple[Path, dict[str, list[int]]]]] = defaultdict(list)
    for path, funcs in sorted(found.items()):
        builds[path.parent.name].append((path, funcs))
    return dict(builds)


CVE_IMAGES = cve_images()


@pytest.mark.skipif(not CVE_IMAGES, reason=CVE_ABSENT)
@pytest.mark.parametrize("build", ["x64-gcc", "x64-clang", "x64-clang-hp", "arm64-clang"])
def test_cve_corpus_function_starts_match_the_symbols(build: str) -> None:
    """Every function start the symbols name is found, no function starts inside
    another, and no function runs on past the next symbol.

    The symbols also name data that gcc's runtime keeps in ``.text`` (constructor
    lists, libm constants): a start whose bytes do not decode into code up to the next
    symbol, found by nothing, is not counted. A .pdata entry that no symbol names
    (gcc drops some static functions' names) is a start of its own.
    """
    images = CVE_IMAGES.get(build)
    if not images:
        pytest.skip(f"{CVE_ABSENT} ({build} not built)")
    counted = hits = 0
    misses: list[str] = []
    splits: list[str] = []
    overruns: list[str] = []
    for path, funcs in images:
        image = load_image(path)
        label = f"{path.parent.parent.name}/{build}/{path.name}"
        names = {start: name for name, (start, _) in funcs.items()}
        starts = sorted(names)
        ends = {start: end for start, end in funcs.values()}
        found = {f.rva: f for f in image.functions}
        parts = set(found) | {p.rva for f in image.functions for p in f.fragments}
        pdata = {entry.begin_rva for entry in image.unwind_entries}
        for start in starts:
            if start in parts:
                hits += 1
            elif (
                start in pdata or image.arch.code_extent(image.read, start, ends[start]) is not None
            ):
                misses.append(f"{label} {names[start]} 0x{start:x}")
            else:
                continue  # data under a symbol
            counted += 1
        for rva in sorted(parts - set(names) - pdata):
            owner = starts[bisect.bisect_right(starts, rva) - 1]
            splits.append(f"{label} 0x{rva:x} in {names[owner]}+0x{rva - owner:x}")
        for start, function in found.items():
            following = bisect.bisect_right(starts, start)
            if (
                start in names
                and following < len(starts)
                and function.extent_end > starts[following]
            ):
                overruns.append(f"{label} {names[start]} into {names[starts[following]]}")
    assert counted
    assert hits / counted >= MIN_RECALL, (hits, counted, misses[:20])
    assert splits == []
    assert overruns == []
