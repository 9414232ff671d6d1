"""MSVC ARM64's compressed switch: the table sits in the code, its signed byte (or
halfword) entries count instructions from the table itself::

    adr   x9, table
    ldrsb x8, [x9, w10, uxtw]
    add   x8, x9, x8, lsl #2
    br    x8

Taken for instructions, its bytes decode as branches out of the image (psutil 7.1.2's
_psutil_windows.pyd had two such blockers)."""

from __future__ import annotations

import struct

import pytest

from hpatch.arch.arm64 import Arm64
from hpatch.errors import ImageFormatError

ARCH = Arm64()
BASE = 0x1000


def adr(rd: int, offset: int) -> int:
    return 0x10000000 | (offset & 3) << 29 | (offset >> 2 & 0x7FFFF) << 5 | rd


def load(opcode: int, rt: int, rn: int, rm: int) -> int:
    return opcode | rm << 16 | 0b010 << 13 | rn << 5 | rt  # [xN, wM, uxtw]


LDRSB_X, LDRSB_W, LDRSH_X, LDRB_W = 0x38A00800, 0x38E00800, 0x78A00800, 0x38600800


def add_lsl2(rd: int, rn: int, rm: int) -> int:
    return 0x8B000800 | rm << 16 | rn << 5 | rd


def br(rn: int) -> int:
    return 0xD61F0000 | rn << 5


def reader(words: list[int], table: bytes = b""):  # type: ignore[no-untyped-def]
    data = struct.pack(f"<{len(words)}I", *words) + table

    def read(rva: int, size: int) -> bytes:
        if rva < BASE or rva + size > BASE + len(data):
            raise ImageFormatError("outside")
        return data[rva - BASE : rva - BASE + size]

    return read


def dispatch(opcode: int, *, add: int | None = None, gap: bool = False) -> list[int]:
    words = [adr(9, 0x40), load(opcode, 8, 9, 10), add_lsl2(8, 9, 8) if add is None else add]
    words.append(br(8))
    if gap:
        words.insert(1, 0xD503201F)  # a NOP between the ADR and the load
    return words + [0xD503201F] * 8


@pytest.mark.parametrize(
    ("opcode", "width"), [(LDRSB_X, 1), (LDRSB_W, 1), (LDRSH_X, 2), (LDRB_W, None)]
)
def test_the_entry_width_comes_from_the_load(opcode: int, width: int | None) -> None:
    assert ARCH.packed_table_width(reader(dispatch(opcode)), BASE) == width
    assert ARCH.packed_table_width(reader(dispatch(opcode, gap=True)), BASE) == width


def test_only_a_dispatch_through_the_table_counts() -> None:
    other_base = add_lsl2(8, 11, 8)  # adds the entry to another register than the table
    assert ARCH.packed_table_width(reader(dispatch(LDRSB_X, add=other_base)), BASE) is None
    not_adr = [0x90000009, *dispatch(LDRSB_X)[1:]]  # ADRP, not ADR
    assert ARCH.packed_table_width(reader(not_adr), BASE) is None
    assert ARCH.packed_table_width(reader(dispatch(LDRSB_X)), BASE + 2) is None
    assert ARCH.packed_table_width(reader(dispatch(LDRSB_X)[:2]), BASE) is None  # cut short


def test_entries_count_instructions_from_the_table() -> None:
    words = [0xD503201F] * 16
    table_rva = BASE + 4 * len(words)
    entries = bytes([0xF0, 0xF4, 0xF8, 0x00])  # -16, -12, -8 words; then the table itself
    read = reader(words, entries)
    targets = ARCH.packed_table_targets(read, table_rva, 1, BASE, table_rva, table_rva + 4)
    assert targets == [table_rva - 64, table_rva - 48, table_rva - 32]
    halves = struct.pack("<3h", -16, -2, 40)  # the third leads past the code
    read = reader(words, halves)
    targets = ARCH.packed_table_targets(read, table_rva, 2, BASE, table_rva, table_rva + 6)
    assert targets == [table_rva - 64, table_rva - 8]


def test_psutils_compressed_switches_are_data_of_their_functions() -> None:
    """In psutil 7.1.1's ARM64 build three functions dispatch through an 8-entry byte
    table after their code; discovery keeps the tables out of the instructions, and
    the diff of the release pair names no branch out of the image."""
    from ..conftest import corpus_binaries

    paths = [
        path
        for pair_id, _, path in corpus_binaries()
        if pair_id == "psutil-7.1.0-7.1.1-win_arm64-_psutil_windows.pyd"
    ]
    if len(paths) != 2:
        pytest.skip("the real-world corpus is absent: run ../shared/corpus/fetch.sh")
    from hpatch.diff import diff_images
    from hpatch.image import DataKind, load_image

    old, new = load_image(paths[0]), load_image(paths[1])
    tables = [
        (function.rva, data)
        for function in new.functions
        for data in function.inline_data
        if data.kind == DataKind.JUMP_TABLE_BYTES
    ]
    assert len(tables) == 3
    for function_rva, data in tables:
        assert data.size == 8
        function = new.function_at(function_rva)
        assert function is not None and function.end_rva <= data.rva
    diff = diff_images(old, new)
    assert not [b for b in diff.blockers if b.cause.value == "unknown_data"]
