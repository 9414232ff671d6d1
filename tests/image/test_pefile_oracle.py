"""Cross-check what hpatch reads with pefile, on samples and the corpus."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pefile
import pytest

from hpatch.image import Evidence, load_image

from ..conftest import SAMPLES, corpus_binaries

SAMPLE_FILES = sorted(SAMPLES.glob("*/*/*.dll"))
CORPUS = corpus_binaries()


def _check_against_pefile(path: Path) -> None:
    image = load_image(path)
    pe = pefile.PE(str(path))
    base = pe.OPTIONAL_HEADER.ImageBase
    assert image.image_base == base
    assert image.size_of_image == pe.OPTIONAL_HEADER.SizeOfImage
    assert image.identity.time_date_stamp == pe.FILE_HEADER.TimeDateStamp
    assert image.identity.checksum == pe.OPTIONAL_HEADER.CheckSum
    assert image.entry_rva == pe.OPTIONAL_HEADER.AddressOfEntryPoint
    assert [(s.name, s.rva, s.raw_size, s.characteristics) for s in image.sections] == [
        (s.Name.rstrip(b"\0").decode(), s.VirtualAddress, s.SizeOfRawData, s.Characteristics)
        for s in pe.sections
    ]
    for section, theirs in zip(image.sections, pe.sections, strict=True):
        assert section.data[: theirs.SizeOfRawData] == theirs.get_data()[: section.virtual_size]
    exports = sorted(
        (e.ordinal, e.name.decode() if e.name else None, e.address)
        for e in getattr(getattr(pe, "DIRECTORY_ENTRY_EXPORT", None), "symbols", [])
        if not e.forwarder
    )
    assert [(e.ordinal, e.name, e.rva) for e in image.exports if e.forwarder is None] == exports
    imports = sorted(
        (
            imp.address - base,
            entry.dll.decode().lower(),
            imp.name.decode() if imp.name else None,
            None if imp.name else imp.ordinal,
        )
        for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
        for imp in entry.imports
    )
    assert sorted((i.iat_rva, i.dll.lower(), i.name, i.ordinal) for i in image.imports) == imports
    relocations = sorted(
        (e.rva, e.type)
        for block in getattr(pe, "DIRECTORY_ENTRY_BASERELOC", [])
        for e in block.entries
        if e.type != 0
    )
    assert sorted((r.rva, int(r.type)) for r in image.relocations) == relocations
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[
        pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]
    ]
    raw = pe.get_data(directory.VirtualAddress, directory.Size) if directory.Size else b""
    step = image.arch.pdata_entry_size
    begins = sorted(
        {struct.unpack_from("<I", raw, i)[0] for i in range(0, len(raw) - step + 1, step)} - {0}
    )
    assert [e.begin_rva for e in image.unwind_entries] == begins
    if step == 12 and hasattr(pe, "DIRECTORY_ENTRY_EXCEPTION"):
        assert [(e.begin_rva, e.end_rva) for e in image.unwind_entries] == sorted(
            (e.struct.BeginAddress, e.struct.EndAddress) for e in pe.DIRECTORY_ENTRY_EXCEPTION
        )


def _check_functions_follow_pdata(path: Path) -> None:
    """Every primary .pdata entry is a function and fragments are folded.

    A function (or fragment) ends where its entry does, or later only where the code
    of the entry's range falls through its end (MSVC ARM64 leaves the final ``ret``
    of some epilogs outside the range).
    """
    image = load_image(path)
    functions = {f.rva: f for f in image.functions}
    parts = {p.rva: p for f in image.functions for p in f.fragments}
    ends = {e.end_rva: e.begin_rva for e in image.unwind_entries}
    for entry in image.unwind_entries:
        owner = image.function_at(entry.begin_rva)
        if owner is not None and owner.rva < entry.begin_rva and entry.begin_rva not in parts:
            # An entry before the .pdata range: straight-line code that runs into it.
            assert Evidence.PDATA in owner.sources
            assert image.arch.falls_through(image.read, owner.rva, entry.begin_rva)
            functions[entry.begin_rva] = owner
        if entry.begin_rva in functions:
            function = functions[entry.begin_rva]
            part_index, end = 0, function.end_rva
        else:
            # A fragment, a frameless entry, or a stage of a shrink-wrapped frame that
            # the entry before runs on into.
            continued = entry.begin_rva in ends and image.arch.runs_on(
                image.read, ends[entry.begin_rva], entry.begin_rva
            )
            assert entry.is_fragment or entry.frameless or continued, hex(entry.begin_rva)
            function = next(
                f for f in image.functions if any(p.rva == entry.begin_rva for p in f.fragments)
            )
            part_index = 1 + [p.rva for p in function.fragments].index(entry.begin_rva)
            part = parts[entry.begin_rva]
            end = part.rva + part.size
        # Tables and other data of the part (MSVC may even give a table its own entry),
        # and code laid out after a table, count towards the part's extent.
        data_ends = [d.rva + d.size for d in function.inline_data if d.part == part_index]
        after = [
            p.rva + p.size
            for p in function.fragments
            if function.inline_data and entry.begin_rva <= p.rva < entry.end_rva
        ]
        end = max([end, *data_ends, *after])
        assert end >= entry.end_rva, hex(entry.begin_rva)
        if end > entry.end_rva and not data_ends:
            assert image.arch.falls_through(image.read, entry.begin_rva, entry.end_rva)
    spans = sorted(
        [(f.rva, f.end_rva) for f in image.functions]
        + [(p.rva, p.rva + p.size) for p in parts.values()]
    )
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start, f"0x{start:x}..0x{end:x} overlaps 0x{next_start:x}"


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_samples_read_the_same_as_pefile(path: Path) -> None:
    _check_against_pefile(path)
    _check_functions_follow_pdata(path)


@pytest.mark.parametrize(
    "path", [p for _, _, p in CORPUS], ids=[f"{i}/{p.stem}" for i, _, p in CORPUS]
)
def test_corpus_reads_the_same_as_pefile(path: Path) -> None:
    _check_against_pefile(path)
    _check_functions_follow_pdata(path)
