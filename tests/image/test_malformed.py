"""Bad input gets an hpatch error, never a traceback, a hang or a half-built model."""

from __future__ import annotations

import random
import struct
import warnings
from pathlib import Path

import pytest

from hpatch.errors import HPatchError, ImageFormatError, UnsupportedError
from hpatch.image import load_image

from ..conftest import SAMPLES
from . import corrupt

EXCEPTION_DIRECTORY, LOAD_CONFIG_DIRECTORY = 3, 10
CLANG_X64 = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
ARM64 = SAMPLES / "arm64-clang" / "v1" / "sample.stripped.dll"
GCC_X64 = SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll"
REAL_FILES = (CLANG_X64, ARM64, GCC_X64)


def load_fully(data: bytes) -> None:
    """Parse and discover functions: the whole path a command takes."""
    image = load_image(data)
    assert image.functions is not None


def pdata_offset(data: bytes) -> int:
    rva, size = corrupt.directory(data, EXCEPTION_DIRECTORY)
    assert size
    return corrupt.rva_to_offset(data, rva)


@pytest.mark.parametrize(
    "data",
    [b"", b"MZ", b"\0" * 4096, b"MZ" + b"\xff" * 200, b"PE\0\0" * 100],
    ids=["empty", "mz-only", "zeros", "mz-garbage", "pe-garbage"],
)
def test_not_a_pe_file(data: bytes) -> None:
    with pytest.raises(ImageFormatError, match="not a PE file"):
        load_image(data)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_truncated_inside_section_data(path: Path) -> None:
    data = path.read_bytes()
    last_end = max(
        raw_offset + raw_size for _, _, _, raw_offset, raw_size in corrupt.sections(data)
    )
    for cut in (0x40, 0x100, corrupt.pe_offset(data) + 30, 0x600, last_end // 2, last_end - 1):
        with pytest.raises(ImageFormatError):
            load_image(data[:cut])


def test_wrong_machine_and_pe32_are_unsupported() -> None:
    data = CLANG_X64.read_bytes()
    with pytest.raises(UnsupportedError, match="unsupported machine I386: hpatch handles"):
        load_image(corrupt.set_u16(data, corrupt.pe_offset(data) + 4, 0x14C))
    with pytest.raises(UnsupportedError, match="unsupported machine ARMNT: "):
        load_image(corrupt.set_u16(data, corrupt.pe_offset(data) + 4, 0x1C4))
    with pytest.raises(UnsupportedError, match="PE32\\+"):
        load_image(corrupt.set_u16(data, corrupt.optional_offset(data), 0x10B))


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_directories_outside_the_image(path: Path) -> None:
    data = path.read_bytes()
    for index, label in ((EXCEPTION_DIRECTORY, "exception"), (1, "import"), (5, "base relocation")):
        at = corrupt.directory_offset(data, index)
        with pytest.raises(ImageFormatError, match=f"corrupt {label} directory"):
            load_image(corrupt.set_u32(data, at, 0x7FFFFF00))


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_overlapping_pdata_entries(path: Path) -> None:
    data = path.read_bytes()
    image = load_image(data)
    step = image.arch.pdata_entry_size
    at = pdata_offset(data)
    first = data[at : at + step]
    # The second entry starts inside the first.
    second = corrupt.set_u32(first, 0, struct.unpack_from("<I", first)[0] + 4)
    with pytest.raises(ImageFormatError, match="overlaps"):
        load_image(corrupt.patch(data, at + step, second))


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_pdata_entry_outside_code(path: Path) -> None:
    data = path.read_bytes()
    data_section = next(
        rva for name, rva, *_ in corrupt.sections(data) if name in (".rdata", ".data")
    )
    at = pdata_offset(data)
    moved = corrupt.set_u32(data, at, data_section)
    if load_image(data).arch.pdata_entry_size == 12:  # x64 entries carry their end too
        moved = corrupt.set_u32(moved, at + 4, data_section + 0x10)
    with pytest.raises(ImageFormatError, match="out of range"):
        load_image(moved)


@pytest.mark.parametrize("path", (CLANG_X64, ARM64), ids=("x64", "arm64"))
def test_hybrid_images_are_refused_with_the_reason(path: Path) -> None:
    data = path.read_bytes()
    config_rva, _ = corrupt.directory(data, LOAD_CONFIG_DIRECTORY)
    image = load_image(data)
    chpe_at = corrupt.rva_to_offset(data, config_rva) + 0xC8
    hybrid = corrupt.set_u64(data, chpe_at, image.image_base + image.sections[0].rva)
    with pytest.raises(UnsupportedError, match="hybrid CHPE/ARM64EC/ARM64X") as raised:
        load_image(hybrid)
    assert "CHPE hybrid metadata" in str(raised.value)
    hybrid_name = "ARM64EC" if path == CLANG_X64 else "ARM64X"  # x64 with CHPE, ARM64 with it
    assert f"it is an {hybrid_name} image" in str(raised.value)
    assert "CHPE to be disabled" in str(raised.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_bit_flips_give_hpatch_errors_or_a_model(path: Path) -> None:
    """Flip bits in headers, directories, .pdata and unwind data: nothing else escapes."""
    data = path.read_bytes()
    rng = random.Random(path.parent.parent.name)
    header_end = 0x400
    pdata_at = pdata_offset(data)
    pdata_size = corrupt.directory(data, EXCEPTION_DIRECTORY)[1]
    regions = [(0, header_end), (pdata_at, pdata_at + pdata_size), (0, len(data))]
    outcomes = {"error": 0, "ok": 0}
    for trial in range(300):
        start, end = regions[trial % len(regions)]
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
        try:
            load_fully(bytes(mutated))
        except HPatchError:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["error"] > 20, outcomes  # the corruptions were noticed, not ignored


@pytest.mark.timeout(120)
def test_random_files_behind_a_valid_header() -> None:
    """Random bodies after real headers, and fully random files."""
    rng = random.Random(1)
    header = CLANG_X64.read_bytes()[:0x400]
    for trial in range(200):
        body = rng.randbytes(rng.randrange(0, 0x4000))
        data = header + body if trial % 2 else body
        with pytest.raises(HPatchError):
            load_fully(data)


def test_size_of_image_larger_than_the_sections_need() -> None:
    data = CLANG_X64.read_bytes()
    huge = corrupt.set_u32(data, corrupt.optional_offset(data) + 56, 0x20009000)
    with pytest.raises(ImageFormatError, match="larger than the sections need"):
        load_image(huge)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_unknown_base_relocation_type_is_an_error_not_a_warning(path: Path) -> None:
    data = path.read_bytes()
    rva, _ = corrupt.directory(data, 5)
    first_entry = corrupt.rva_to_offset(data, rva) + 8
    (entry,) = struct.unpack_from("<H", data, first_entry)
    mutated = corrupt.set_u16(data, first_entry, (8 << 12) | (entry & 0xFFF))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageFormatError, match="unknown type 8"):
            load_image(mutated)


@pytest.mark.parametrize(
    ("path", "section_alignment"),
    [(CLANG_X64, None), (GCC_X64, None), (ARM64, None), (ARM64, 1)],
    ids=["x64-clang", "x64-gcc", "arm64-clang", "arm64-clang-alignment-1"],
)
def test_misaligned_sections_are_refused(path: Path, section_alignment: int | None) -> None:
    """The first section (.text) one byte off its alignment, or, with SectionAlignment 1,
    off the instruction alignment: ARM64 function discovery raised ValueError on it
    (found by tests/reliability; corpus/image-reader/b51b523c07cc2541)."""
    data = path.read_bytes()
    table = (
        corrupt.optional_offset(data)
        + struct.unpack_from("<H", data, corrupt.pe_offset(data) + 20)[0]
    )
    rva_at = table + 12  # the first section header's VirtualAddress
    mutated = corrupt.set_u32(data, rva_at, struct.unpack_from("<I", data, rva_at)[0] + 1)
    if section_alignment is not None:
        mutated = corrupt.set_u32(mutated, corrupt.optional_offset(data) + 32, section_alignment)
    with pytest.raises(ImageFormatError, match=r"section '\.text' at rva 0x1001 is misaligned"):
        load_fully(mutated)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.parent.parent.name)
def test_zero_filled_code_is_looked_at_once(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """.text with most of its raw data cut off (the rest reads as zeros, which is
    padding): each padding query scanned to the end of the section, so discovery took
    time quadratic in its size (3.5 s on a 250 KiB corpus DLL; found by
    tests/reliability). The padding looked at, summed over every query, stays within a
    small multiple of the section."""
    data = path.read_bytes()
    table = (
        corrupt.optional_offset(data)
        + struct.unpack_from("<H", data, corrupt.pe_offset(data) + 20)[0]
    )
    cut = corrupt.set_u32(data, table + 16, 0x200)  # the first section's SizeOfRawData
    image = load_image(cut)
    text = image.sections[0]
    assert text.name == ".text" and text.virtual_size > 0x2000
    scanned: list[int] = []
    measure = type(image.arch).padding_length

    def counting(arch: object, window: bytes, offset: int) -> int:
        length = measure(arch, window, offset)  # type: ignore[arg-type]
        scanned.append(length)
        return length

    monkeypatch.setattr(type(image.arch), "padding_length", counting)
    assert image.functions
    assert sum(scanned) <= 4 * text.virtual_size, (len(scanned), sum(scanned))
