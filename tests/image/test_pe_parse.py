"""hpatch's PE parser on structures real files rarely hold: forwarders, unnamed and
empty export slots, load configs of every size, odd debug directories (read as lief
reads them), and tables whose counts claim more than the file holds (cost bounded,
refused with hpatch's own error)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hpatch.errors import ImageFormatError
from hpatch.image import load_image
from hpatch.image.pe_parse import MAX_EXPORTS, read_exports, read_imports

from ..conftest import SAMPLES
from . import corrupt
from .test_reader_oracle import check_against_lief

CLANG_X64 = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
GCC_X64 = SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll"
ARM64 = SAMPLES / "arm64-clang" / "v2" / "sample.stripped.dll"
EXPORT, DEBUG, LOAD_CONFIG = 0, 6, 10


def _address_table(data: bytes) -> tuple[int, int]:
    """(file offset of the export address table, RVA of the DLL name string)."""
    rva, _ = corrupt.directory(data, EXPORT)
    fields = struct.unpack_from("<IIHHIIIIIII", data, corrupt.rva_to_offset(data, rva))
    return corrupt.rva_to_offset(data, fields[8]), fields[4]


def _same_as_lief(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "mutant.dll"
    path.write_bytes(data)
    check_against_lief(path)


@pytest.mark.parametrize("path", (CLANG_X64, GCC_X64, ARM64), ids=lambda p: p.parent.parent.name)
def test_forwarded_and_empty_exports_read_as_lief_reads_them(path: Path, tmp_path: Path) -> None:
    data = path.read_bytes()
    table, dll_name = _address_table(data)
    # The DLL name lies inside the export directory: an address there is a forwarder.
    forwarded = corrupt.set_u32(data, table + 12, dll_name)
    image = load_image(forwarded)
    assert [(e.rva, e.forwarder) for e in image.exports if e.forwarder] == [(0, "sample.dll")]
    _same_as_lief(forwarded, tmp_path)
    emptied = corrupt.set_u32(data, table + 4, 0)  # an empty slot is no export
    assert len(load_image(emptied).exports) == len(load_image(data).exports) - 1
    _same_as_lief(emptied, tmp_path)


@pytest.mark.parametrize("size", [0, 4, 100, 128, 129, 148, 200, 208, 224, 230, 240, 244, 0x1000])
def test_load_config_fields_follow_its_size_as_lief_reads_them(size: int, tmp_path: Path) -> None:
    data = CLANG_X64.read_bytes()
    rva, _ = corrupt.directory(data, LOAD_CONFIG)
    _same_as_lief(corrupt.set_u32(data, corrupt.rva_to_offset(data, rva), size), tmp_path)


@pytest.mark.parametrize("size", [1, 27, 28, 29, 56])
def test_debug_entries_as_lief_reads_them(size: int, tmp_path: Path) -> None:
    data = ARM64.read_bytes()
    _same_as_lief(corrupt.set_u32(data, corrupt.directory_offset(data, DEBUG) + 4, size), tmp_path)


def test_more_than_sixteen_data_directories_read_sixteen() -> None:
    data = CLANG_X64.read_bytes()
    many = corrupt.set_u32(data, corrupt.optional_offset(data) + 108, 100)
    assert load_image(many).structure_bounds == load_image(data).structure_bounds


@pytest.mark.parametrize(
    ("cut", "message"),
    [(100, "optional header is cut short"), (200, "data directories are cut short")],
)
def test_headers_cut_short_say_so(cut: int, message: str) -> None:
    """Cut ``cut`` bytes into the optional header (its fixed part is 112 bytes, the
    data directories 128 more)."""
    data = CLANG_X64.read_bytes()
    with pytest.raises(ImageFormatError, match=message):
        load_image(data[: corrupt.optional_offset(data) + cut])


def test_a_section_table_past_the_file_says_so() -> None:
    data = CLANG_X64.read_bytes()
    with pytest.raises(ImageFormatError, match="section table of 65535 sections"):
        load_image(corrupt.set_u16(data, corrupt.pe_offset(data) + 6, 0xFFFF))


def test_descriptors_sharing_one_thunk_table_are_bounded() -> None:
    """A thousand descriptors naming one table of 100,000 thunks: the walks would cost
    a hundred million entries; refused once they name more imports than the image has
    IAT room for."""
    thunks, descriptors = 100_000, 1000
    image = bytearray(0x1000 + 8 * (thunks + 1))
    names = b"\0\0Function\0host.dll\0"  # a hint/name entry at 0x10, the DLL name at 0x1B
    image[0x10 : 0x10 + len(names)] = names
    struct.pack_into(f"<{thunks}Q", image, 0x1000, *([0x10] * thunks))
    table = b"".join(struct.pack("<5I", 0x1000, 0, 0, 0x1B, 0x1000) for _ in range(descriptors))
    image += table + bytes(20)
    with pytest.raises(ImageFormatError, match="more imports than the image has room for"):
        read_imports(bytes(image), len(image) - len(table) - 20, len(table) + 20)


def test_export_counts_cost_what_the_image_holds() -> None:
    image = bytearray(0x2000)
    # 2^24 entries claimed, the address table 4 KiB before the image's end
    struct.pack_into("<IIHHIIIIIII", image, 0x100, 0, 0, 0, 0, 0, 1, MAX_EXPORTS, 0, 0x1000, 0, 0)
    image[0x1000:0x2000] = struct.pack("<1024I", *range(0x3000, 0x3000 + 1024))
    assert len(read_exports(bytes(image), 0x100, 0x28)) == 1024
    struct.pack_into("<I", image, 0x100 + 20, MAX_EXPORTS + 1)
    assert read_exports(bytes(image), 0x100, 0x28) == []
