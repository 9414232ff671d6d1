"""The baseline's import slots, read from its mapped image: the same as lief's reading
(the image model) and pefile's of the file, and a defensive reader that refuses a
corrupted or truncated image with PackageFormatError only."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pefile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpatch.errors import PackageFormatError
from hpatch.image import load_image
from hpatch.package.baseline_imports import import_slots

from ..conftest import SAMPLES, corpus_binaries

SAMPLE_FILES = sorted(SAMPLES.glob("*/*/*.dll"))
CORPUS = corpus_binaries()
IMPORT = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]
DESCRIPTOR = 20
THUNK = 8
#: Samples that import by name and by ordinal, one per build.
IMPORTING = ("x64-gcc/v1", "x64-clang/v1", "x64-clang-hotpatch/v1", "arm64-clang/v1")

Slots = dict[int, tuple[str, str, int]]


def pefile_slots(data: bytes) -> Slots:
    """RVA -> (DLL, name, ordinal) of every IAT slot, as pefile reads the file."""
    pe = pefile.PE(data=data, fast_load=True)
    pe.parse_data_directories(directories=[IMPORT])
    base = pe.OPTIONAL_HEADER.ImageBase
    listed = [
        (
            imp.address - base,
            (entry.dll.decode(), imp.name.decode() if imp.name else "", imp.ordinal or 0),
        )
        for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
        for imp in entry.imports
    ]
    slots = dict(listed)
    assert len(slots) == len(listed), "two imports share a slot"
    return slots


def check_against_oracles(path: Path) -> Slots:
    data = path.read_bytes()
    image = load_image(data, path.name)
    slots = import_slots(image.mapped)
    assert slots == pefile_slots(data)
    assert slots == {i.iat_rva: (i.dll, i.name or "", i.ordinal or 0) for i in image.imports}
    assert all(rva > 0 and rva + THUNK <= len(image.mapped) for rva in slots)
    return slots


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_samples_read_the_same_as_lief_and_pefile(path: Path) -> None:
    check_against_oracles(path)


def test_samples_import_by_name_and_by_ordinal() -> None:
    """Both thunk forms are read (the agreement above could hold with one form only)."""
    for sample in IMPORTING:
        slots = check_against_oracles(SAMPLES / sample / "sample.dll")
        assert any(name and not ordinal for _dll, name, ordinal in slots.values())
        assert any(ordinal and not name for _dll, name, ordinal in slots.values())


@pytest.mark.parametrize("ordinal", [0x1234, 0xFFFF])
def test_an_ordinal_reads_all_sixteen_bits(ordinal: int) -> None:
    """The samples' ordinal is 10: give one a wide ordinal in the file, through pefile."""
    path = SAMPLES / "x64-clang" / "v1" / "sample.dll"
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(directories=[IMPORT])
    base = pe.OPTIONAL_HEADER.ImageBase
    by_ordinal = next(
        imp for lib in pe.DIRECTORY_ENTRY_IMPORT for imp in lib.imports if imp.import_by_ordinal
    )
    data = bytearray(path.read_bytes())
    for rva in (by_ordinal.thunk_rva, by_ordinal.address - base):
        struct.pack_into("<Q", data, pe.get_offset_from_rva(rva), 1 << 63 | ordinal)
    slots = import_slots(load_image(bytes(data), path.name).mapped)
    assert slots == pefile_slots(bytes(data))
    assert slots[by_ordinal.address - base][1:] == ("", ordinal)


@pytest.mark.parametrize(
    "path", [p for _, _, p in CORPUS], ids=[f"{i}/{p.stem}" for i, _, p in CORPUS]
)
def test_corpus_reads_the_same_as_lief_and_pefile(path: Path) -> None:
    assert check_against_oracles(path)


@dataclass(frozen=True)
class Layout:
    """Where a mapped image keeps what the reader walks, as pefile finds it (the headers
    are mapped at RVA 0, so their file offsets are RVAs)."""

    mapped: bytes
    e_lfanew: int
    magic: int
    directory_count: int
    import_entry: int
    directory: int
    descriptors: int
    names: tuple[tuple[int, int], ...]  # (RVA, length without the NUL) of DLL names
    thunks: tuple[tuple[int, int], ...]  # (RVA, entries without the terminator): ILTs, IATs
    hint_names: tuple[tuple[int, int], ...]  # (RVA, length of hint and name)

    def patched(self, at: int, fmt: str, value: int) -> bytes:
        data = bytearray(self.mapped)
        struct.pack_into(fmt, data, at, value)
        return bytes(data)


@cache
def layout(sample: str) -> Layout:
    path = SAMPLES / sample / "sample.dll"
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(directories=[IMPORT])
    optional = pe.OPTIONAL_HEADER
    entry = optional.DATA_DIRECTORY[IMPORT]
    libraries = pe.DIRECTORY_ENTRY_IMPORT
    return Layout(
        mapped=load_image(path).mapped,
        e_lfanew=pe.DOS_HEADER.get_field_absolute_offset("e_lfanew"),
        magic=optional.get_field_absolute_offset("Magic"),
        directory_count=optional.get_field_absolute_offset("NumberOfRvaAndSizes"),
        import_entry=entry.get_field_absolute_offset("VirtualAddress"),
        directory=entry.VirtualAddress,
        descriptors=len(libraries),
        names=tuple((lib.struct.Name, len(lib.dll)) for lib in libraries),
        thunks=tuple(
            (rva, len(lib.imports))
            for lib in libraries
            for rva in (lib.struct.OriginalFirstThunk, lib.struct.FirstThunk)
            if rva
        ),
        hint_names=tuple(
            (imp.hint_name_table_rva, 2 + len(imp.name))
            for lib in libraries
            for imp in lib.imports
            if imp.name
        ),
    )


def refused(data: bytes) -> bool:
    try:
        import_slots(data)
    except PackageFormatError:
        return True
    return False


@pytest.mark.parametrize("sample", IMPORTING)
def test_an_image_without_an_import_directory_has_no_slots(sample: str) -> None:
    image = layout(sample)
    assert import_slots(image.mapped)
    assert import_slots(image.patched(image.import_entry, "<Q", 0)) == {}
    for count in (0, 1):
        assert import_slots(image.patched(image.directory_count, "<I", count)) == {}


def test_samples_without_imports_have_no_slots() -> None:
    """gcc's host DLL has an import directory holding only the terminating descriptor;
    clang's has none."""
    for build in ("x64-gcc", "x64-clang", "arm64-clang"):
        assert import_slots(load_image(SAMPLES / build / "v1" / "samplehost.dll").mapped) == {}


def bad_headers(image: Layout) -> dict[str, bytes]:
    size = len(image.mapped)
    no_room = bytearray(image.patched(image.e_lfanew, "<I", size - 64))
    no_room[size - 64 : size - 60] = b"PE\0\0"
    return {
        "e_lfanew at the end": image.patched(image.e_lfanew, "<I", size),
        "e_lfanew past the end": image.patched(image.e_lfanew, "<I", 0xFFFFFFFF),
        "e_lfanew at the DOS stub": image.patched(image.e_lfanew, "<I", 0x40),
        "optional header past the end": bytes(no_room),
        "PE32, not PE32+": image.patched(image.magic, "<H", 0x10B),
        "cut in e_lfanew": image.mapped[: image.e_lfanew + 2],
        "cut in the optional header": image.mapped[: image.magic + 64],
        "empty": b"",
    }


@pytest.mark.parametrize("sample", IMPORTING)
def test_a_bad_pe_header_is_refused(sample: str) -> None:
    assert [why for why, data in bad_headers(layout(sample)).items() if not refused(data)] == []


@pytest.mark.parametrize("sample", IMPORTING)
def test_an_import_directory_outside_the_image_is_refused(sample: str) -> None:
    image = layout(sample)
    size = len(image.mapped)
    cases = {
        "at the end": image.patched(image.import_entry, "<I", size),
        "past the end": image.patched(image.import_entry, "<I", size + 0x1000),
        "across the end": image.patched(image.import_entry, "<I", size - 8),
    }
    assert [why for why, data in cases.items() if not refused(data)] == []


@pytest.mark.parametrize("sample", IMPORTING)
def test_a_dll_name_without_its_nul_is_refused(sample: str) -> None:
    image = layout(sample)
    size = len(image.mapped)
    name_field = image.directory + 12
    unterminated = bytearray(image.patched(name_field, "<I", size - 16))
    unterminated[size - 16 :] = b"A" * 16
    cases = {
        "runs to the end": bytes(unterminated),
        "at the end": image.patched(name_field, "<I", size),
        "past the end": image.patched(name_field, "<I", 0xFFFFFFF0),
        "at RVA 0": image.patched(name_field, "<I", 0),
    }
    assert [why for why, data in cases.items() if not refused(data)] == []


@pytest.mark.parametrize("sample", IMPORTING)
def test_thunks_outside_the_image_are_refused(sample: str) -> None:
    image = layout(sample)
    size = len(image.mapped)
    lookup, _count = image.thunks[0]
    assert not struct.unpack_from("<Q", image.mapped, lookup)[0] >> 63, "imported by name"
    cases = {
        "lookup table past the end": image.patched(image.directory, "<I", size + 8),
        "IAT past the end": image.patched(image.directory + 16, "<I", size + 8),
        "hint/name past the end": image.patched(lookup, "<Q", size + 0x100),
    }
    assert [why for why, data in cases.items() if not refused(data)] == []


def truncations(image: Layout) -> list[int]:
    """Lengths that cut the image inside its import data: the descriptor table with its
    terminator, a DLL name or its NUL, a lookup table or IAT with its terminator, a
    hint/name entry."""
    cuts = set(range(image.directory, image.directory + DESCRIPTOR * (image.descriptors + 1)))
    for rva, length in image.names + image.hint_names:
        cuts.update(range(rva, rva + length + 1))
    for rva, count in image.thunks:
        cuts.update(range(rva, rva + THUNK * (count + 1)))
    return sorted(cuts)


@pytest.mark.parametrize("sample", IMPORTING)
def test_an_image_cut_inside_its_import_data_is_refused(sample: str) -> None:
    """A truncated image never reads as one with fewer (or no) imports."""
    image = layout(sample)
    quietly_read = [
        (hex(cut), len(import_slots(image.mapped[:cut])))
        for cut in truncations(image)
        if not refused(image.mapped[:cut])
    ]
    assert not quietly_read, f"(length of the cut image, slots read): {quietly_read}"


@cache
def fuzzed_region(sample: str) -> tuple[int, ...]:
    """Offsets worth changing: the headers the reader reads and its import data."""
    image = layout(sample)
    return tuple(sorted({*range(image.e_lfanew, image.import_entry + 8), *truncations(image)}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(IMPORTING),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_any_corruption_gives_slots_inside_the_image_or_package_format_error(
    sample: str, changes: list[tuple[int, int]], cut: int | None
) -> None:
    image = layout(sample)
    region = fuzzed_region(sample)
    data = bytearray(image.mapped)
    for index, value in changes:
        data[region[index % len(region)]] = value
    if cut is not None:
        del data[region[cut % len(region)] :]
    try:
        slots = import_slots(bytes(data))
    except PackageFormatError:
        return
    for rva, (dll, name, ordinal) in slots.items():
        assert rva > 0 and rva + THUNK <= len(data)
        assert isinstance(dll, str) and isinstance(name, str)
        assert 0 <= ordinal <= 0xFFFF and not (name and ordinal)
