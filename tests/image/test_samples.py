"""Function discovery on the bundled sample DLLs against their linker/DWARF ground truth."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hpatch.image import DataKind, Evidence, load_image

from ..conftest import SAMPLES, read_truth


def test_the_sample_matrix_is_complete(sample_dir: Path) -> None:
    for name in ("sample.dll", "sample.stripped.dll", "samplehost.dll", "sample.funcs.tsv"):
        assert (sample_dir / name).is_file(), name


def test_stripped_image_functions_match_the_truth_exactly(sample_dir: Path) -> None:
    truth = read_truth(sample_dir / "sample.funcs.tsv")
    image = load_image(sample_dir / "sample.stripped.dll")
    assert image.symbols == (), "the stripped copy still has a symbol table"
    expected = sorted((row.rva, row.size) for row in truth if not row.parent)
    found = sorted((f.rva, f.size) for f in image.functions)
    assert found == expected
    expected_parts = sorted((row.rva, row.size) for row in truth if row.parent)
    found_parts = sorted((part.rva, part.size) for f in image.functions for part in f.fragments)
    assert found_parts == expected_parts
    parents = {row.rva: row.parent for row in truth if not row.parent}
    by_name = {row.name: row.rva for row in truth if not row.parent}
    for row in truth:
        if row.parent:
            owner = image.function_at(row.rva)
            assert owner is not None and owner.rva == by_name[row.parent], row.name
    assert parents  # every build has functions


def test_exported_functions_carry_their_export_names(sample_dir: Path) -> None:
    image = load_image(sample_dir / "sample.stripped.dll")
    truth = {row.rva: row.name for row in read_truth(sample_dir / "sample.funcs.tsv")}
    exported = [e for e in image.exports if e.forwarder is None]
    assert len(exported) == 39
    functions = {f.rva: f for f in image.functions}
    for export in exported:
        function = functions[export.rva]
        assert function.name == export.name == truth[export.rva]
        assert Evidence.EXPORT in function.sources


def test_symbol_table_names_every_function_of_the_unstripped_image(sample_dir: Path) -> None:
    image = load_image(sample_dir / "sample.dll")
    truth = {
        row.rva: row.name for row in read_truth(sample_dir / "sample.funcs.tsv") if not row.parent
    }
    # An import thunk is named after what it imports; by ordinal, the image knows no name.
    for function in image.functions:
        if Evidence.IMPORT_THUNK in function.sources and function.name == "samplehost.dll#10":
            assert truth.pop(function.rva) == "host_policy"
            truth[function.rva] = function.name
    names = {f.rva: f.name for f in image.functions}
    assert names == truth


def test_functions_leave_only_padding_between_them(sample_dir: Path) -> None:
    """Every byte of a code section is a function, a fragment, inline data or padding."""
    image = load_image(sample_dir / "sample.stripped.dll")
    data_in_text = [
        line.split("\t")
        for line in (sample_dir / "sample.textdata.tsv").read_text().splitlines()[1:]
    ]
    linker_data = {
        int(fields[1], 16): int(fields[2]) for fields in data_in_text if fields[0] == "linker_data"
    }
    spans = sorted(
        [(f.rva, f.end_rva, 0) for f in image.functions if f.inline_data]
        + [(f.rva, f.extent_end, f.padding_after) for f in image.functions if not f.inline_data]
        + [(p.rva, p.rva + p.size, 0) for f in image.functions for p in f.fragments]
        + [(d.rva, d.rva + d.size, 0) for f in image.functions for d in f.inline_data]
        + [(rva, rva + size, 0) for rva, size in linker_data.items()]
    )
    for (start, end, padding), (next_start, _, _) in itertools.pairwise(spans):
        assert end <= next_start, f"0x{start:x} overlaps 0x{next_start:x}"
        gap = image.read(end, next_start - end)
        assert image.arch.padding_length(gap, 0) == len(gap), f"unclaimed bytes at 0x{end:x}"
        if padding:
            assert end + padding <= next_start


def test_inline_jump_tables_are_data_not_code(sample_dir: Path) -> None:
    image = load_image(sample_dir / "sample.stripped.dll")
    lines = (sample_dir / "sample.textdata.tsv").read_text().splitlines()[1:]
    expected = [
        int(fields[1], 16)
        for fields in (line.split("\t") for line in lines)
        if fields[0] == "jumptable"
    ]
    tables = [d for f in image.functions for d in f.inline_data]
    assert all(d.kind == DataKind.JUMP_TABLE for d in tables)
    if expected:
        # the truth lists the region once; the function holds each table in it
        assert tables and min(d.rva for d in tables) == min(expected)
        owner = image.function_at(tables[0].rva)
        assert owner is not None and owner.end_rva <= tables[0].rva
    else:
        assert tables == []


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4"])
def test_hotpatch_build_keeps_room_before_every_function(version: str) -> None:
    image = load_image(SAMPLES / "x64-clang-hotpatch" / version / "sample.stripped.dll")
    functions = image.functions
    for previous, function in itertools.pairwise(functions):
        assert function.rva - previous.extent_end >= 6, hex(function.rva)
        assert previous.padding_after == function.rva - previous.extent_end
        assert image.read(function.rva - 6, 6) == b"\xcc" * 6


def test_gcc_import_stubs_are_named_after_their_import() -> None:
    image = load_image(SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll")
    stubs = [f for f in image.functions if Evidence.IMPORT_THUNK in f.sources]
    assert [(f.name, f.size) for f in stubs] == [
        ("host_log", 6),
        ("host_alloc", 6),
        ("host_free", 6),
        ("host_now", 6),
        ("samplehost.dll#10", 6),
    ]


def test_identity_and_directories(sample_dir: Path) -> None:
    image = load_image(sample_dir / "sample.stripped.dll")
    identity = image.identity
    assert identity.machine.name == ("ARM64" if "arm64" in str(sample_dir) else "AMD64")
    assert len(identity.file_sha256) == len(identity.mapped_sha256) == 64
    assert len(image.mapped) == identity.size_of_image
    assert {i.dll.lower() for i in image.imports} == {"samplehost.dll"}
    by_ordinal = [i for i in image.imports if i.name is None]
    assert [(i.ordinal, i.dll.lower()) for i in by_ordinal] == [(10, "samplehost.dll")]
    assert image.relocations, "a DLL with pointer tables has base relocations"
    if "gcc" in str(sample_dir):
        assert image.load_config is None
    else:
        assert image.load_config is not None and image.load_config.size == 0x108
        assert image.load_config.chpe_metadata_va == 0


def test_symbols_do_not_change_the_mapped_image() -> None:
    for build in ("x64-clang", "arm64-clang"):
        full = load_image(SAMPLES / build / "v1" / "sample.dll")
        stripped = load_image(SAMPLES / build / "v1" / "sample.stripped.dll")
        assert [s.data for s in full.sections] == [s.data for s in stripped.sections]
        assert full.identity.file_sha256 != stripped.identity.file_sha256


@pytest.mark.parametrize("build", ["x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang"])
def test_samplehost_functions_match_the_truth_exactly(build: str) -> None:
    folder = SAMPLES / build / "v1"
    truth = read_truth(folder / "samplehost.funcs.tsv")
    image = load_image(folder / "samplehost.dll")
    assert sorted((f.rva, f.size) for f in image.functions) == sorted(
        (r.rva, r.size) for r in truth
    )
    names = {f.rva: f.name for f in image.functions}
    assert {names[r.rva] for r in truth} >= {"host_log", "host_alloc", "host_free", "host_now"}
    for version in ("v2", "v3", "v4"):  # the host does not change with the library's versions
        assert (SAMPLES / build / version / "samplehost.dll").read_bytes() == (
            folder / "samplehost.dll"
        ).read_bytes()


def test_function_at_agrees_with_a_scan_of_every_function(sample_dir: Path) -> None:
    image = load_image(sample_dir / "sample.stripped.dll")
    probes = set()
    for function in image.functions:
        for start, end in (
            [(function.rva, function.extent_end)]
            + [(f.rva, f.rva + f.size) for f in function.fragments]
            + [(d.rva, d.rva + d.size) for d in function.inline_data]
        ):
            probes.update((start - 1, start, end - 1, end))
    for rva in sorted(probes):
        expected = next((f for f in image.functions if f.contains(rva)), None)
        assert image.function_at(rva) == expected, hex(rva)
