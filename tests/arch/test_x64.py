"""AMD64 decoding: .pdata/UNWIND_INFO, code extents, padding, import thunks."""

from __future__ import annotations

import struct

import keystone
import pytest

from hpatch.arch import Machine, SiteKind, arch_for
from hpatch.errors import ImageFormatError

from .memory import FakeImage

X64 = arch_for(Machine.AMD64)
KS = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


def assemble(source: str, rva: int) -> bytes:
    encoding, _ = KS.asm(source, rva)
    return bytes(encoding)


def unwind_info(
    prolog: int, codes: list[int], flags: int = 0, chained: tuple[int, int, int] | None = None
) -> bytes:
    body = bytes([1 | flags << 3, prolog, len(codes), 0])
    body += b"".join(struct.pack("<H", c) for c in codes)
    if len(codes) % 2:
        body += b"\0\0"
    if chained is not None:
        body += struct.pack("<III", *chained)
    return body


def test_pdata_primary_chained_and_continuation_entries() -> None:
    image = FakeImage()
    image.put(0x5000, unwind_info(4, [0x4204]))  # primary: sub rsp, 0x28 at offset 4
    image.put(0x5010, unwind_info(0, [], flags=4, chained=(0x1000, 0x1040, 0x5000)))
    image.put(0x5030, unwind_info(0, [], flags=4, chained=(0x1040, 0x1050, 0x5010)))  # chain of 2
    image.put(0x5050, unwind_info(0, [0x4204]))  # gcc .cold: frame already set up
    image.put(0x5060, unwind_info(0, []))  # frameless
    pdata = struct.pack(
        "<" + "III" * 6,
        0x1000,
        0x1040,
        0x5000,
        0x1040,
        0x1050,
        0x5010,
        0x1050,
        0x1060,
        0x5030,
        0x1100,
        0x1120,
        0x5050,
        0x1200,
        0x1201,
        0x5060,
        0,
        0,
        0,
    )
    entries = X64.decode_unwind_entries(pdata, image.read)
    assert [(e.begin_rva, e.end_rva, e.is_fragment, e.parent_rva) for e in entries] == [
        (0x1000, 0x1040, False, None),
        (0x1040, 0x1050, True, 0x1000),
        (0x1050, 0x1060, True, 0x1000),
        (0x1100, 0x1120, True, None),
        (0x1200, 0x1201, False, None),
    ]
    assert [e.frameless for e in entries] == [False, False, False, False, True]


def test_pdata_rejects_inverted_entries_bad_versions_and_chain_loops() -> None:
    image = FakeImage()
    image.put(0x5000, unwind_info(0, []))
    with pytest.raises(ImageFormatError, match="empty or inverted"):
        X64.decode_unwind_entries(struct.pack("<III", 0x1040, 0x1000, 0x5000), image.read)
    image.put(0x5100, bytes([7, 0, 0, 0]))
    with pytest.raises(ImageFormatError, match="unknown version 7"):
        X64.decode_unwind_entries(struct.pack("<III", 0x1000, 0x1010, 0x5100), image.read)
    image.put(0x5200, unwind_info(0, [], flags=4, chained=(0x1000, 0x1010, 0x5200)))
    with pytest.raises(ImageFormatError, match="loops"):
        X64.decode_unwind_entries(struct.pack("<III", 0x1000, 0x1010, 0x5200), image.read)
    with pytest.raises(ImageFormatError):
        X64.decode_unwind_entries(struct.pack("<III", 0x1000, 0x1010, 0xFFF0), image.read)


@pytest.mark.parametrize(
    ("source", "tail", "expected_size"),
    [
        ("ret", b"\xcc" * 15, 1),
        ("xor eax, eax; ret", b"\xcc" * 13, 3),
        # a branch over internal alignment padding reaches code after the first ret
        (
            "test ecx, ecx; je 0x100e; mov eax, 1; ret",
            b"\x0f\x1f\x40\x00" + bytes.fromhex("31c0c3"),
            17,
        ),
        ("mov eax, ecx; jmp 0x2000", b"\xcc" * 9, 7),  # tail call out of the range
        ("jmp qword ptr [rip + 0x100]", b"\xcc" * 10, 6),
        ("call 0x3000; ud2", b"\xcc" * 9, 7),  # ud2 after a call that does not return
    ],
)
def test_code_extent_follows_control_flow(source: str, tail: bytes, expected_size: int) -> None:
    code = assemble(source, 0x1000) + tail
    image = FakeImage()
    image.put(0x1000, code)
    assert X64.code_extent(image.read, 0x1000, 0x1000 + len(code)) == 0x1000 + expected_size


def test_code_extent_refuses_undecodable_or_runaway_code() -> None:
    image = FakeImage()
    image.put(0x1000, b"\x06\x06\x06")  # invalid in 64-bit mode
    assert X64.code_extent(image.read, 0x1000, 0x1010) is None
    image.put(0x2000, assemble("mov eax, 1", 0x2000))  # falls off the end of its range
    assert X64.code_extent(image.read, 0x2000, 0x2005) is None


@pytest.mark.parametrize(
    ("blob", "length"),
    [
        (b"\xcc\xcc\xcc", 3),
        (b"\x90" * 5 + b"\x00\x00", 7),
        (bytes.fromhex("0f1f4000"), 4),
        (bytes.fromhex("0f1f440000"), 5),
        (bytes.fromhex("660f1f440000"), 6),
        (bytes.fromhex("0f1f8000000000"), 7),
        (bytes.fromhex("0f1f840000000000"), 8),
        (bytes.fromhex("66662e0f1f840000000000"), 11),
        (bytes.fromhex("6690"), 2),
        (bytes.fromhex("55"), 0),  # push rbp: code, not padding
        (bytes.fromhex("0f1f84"), 0),  # a truncated multi-byte nop is not padding
    ],
)
def test_padding_recognises_traps_nops_and_zeros(blob: bytes, length: int) -> None:
    assert X64.padding_length(blob + b"\x55", 0) == length


def test_import_thunk_and_sites() -> None:
    image = FakeImage()
    image.put(0x1000, bytes.fromhex("ff256a900000"))
    assert X64.import_thunk(image.read, 0x1000) == (6, 0x1006 + 0x906A)
    image.put(0x1010, assemble("mov eax, 1", 0x1010))
    assert X64.import_thunk(image.read, 0x1010) is None
    code = assemble(
        "call 0x1100; jmp 0x1200; jne 0x1300; lea rcx, [rip + 0x1000]; lea r9, [rip + 0x10]", 0x1000
    )
    sites = X64.scan_sites(code, 0x1000, 0, 0x10000)
    assert [column.typecode for column in sites] == ["I", "I", "B"]
    assert list(zip(*sites, strict=True)) == [
        (0x1000, 0x1100, SiteKind.CALL),
        (0x1005, 0x1200, SiteKind.JUMP),
        (0x100A, 0x1300, SiteKind.COND_JUMP),
        (0x1010, 0x1017 + 0x1000, SiteKind.ADDRESS),
        (0x1017, 0x101E + 0x10, SiteKind.ADDRESS),  # REX.WB form
    ]


@pytest.mark.parametrize(
    ("source", "falls"),
    [
        ("push rbx; pop rbx", True),
        ("pop rbx; ret", False),
        ("mov eax, 1; jmp 0x2000", False),
        ("mov eax, 1; call 0x2000", False),  # a final call does not return
        ("cmp eax, 1; je 0x1000", True),
        ("xor eax, eax; int3", False),
    ],
)
def test_falls_through(source: str, falls: bool) -> None:
    code = assemble(source, 0x1000)
    image = FakeImage()
    image.put(0x1000, code)
    assert X64.falls_through(image.read, 0x1000, 0x1000 + len(code)) is falls


def test_falls_through_needs_a_clean_decode_to_the_end() -> None:
    image = FakeImage()
    image.put(0x1000, assemble("mov eax, 1", 0x1000))
    assert X64.falls_through(image.read, 0x1000, 0x1005) is True
    assert X64.falls_through(image.read, 0x1000, 0x1004) is False  # cuts the instruction


def test_table_of_rvas() -> None:
    image = FakeImage()
    image.put(0x1100, struct.pack("<4I", 0x1000, 0x1010, 0x10F0, 0x9000))
    assert X64.rva_table_size(image.read, 0x1100, 0x1000, 0x1200) == 12
    image.put(0x1200, struct.pack("<2I", 0x1000, 0x9000))
    assert X64.rva_table_size(image.read, 0x1200, 0x1000, 0x1300) == 0  # one entry is no table


def test_jump_table_of_table_relative_offsets() -> None:
    image = FakeImage()
    table = 0x1100
    image.put(table, struct.pack("<4i", -0x100, -0xF0, -0x80, -0x10) + struct.pack("<i", 0x7000))
    assert X64.jump_table_size(image.read, table, 0x1000, 0x1200) == 16
    assert X64.jump_table_size(image.read, table, 0x1000, table + 8) == 8
    assert X64.jump_table_size(image.read, table + 16, 0x1000, 0x1200) == 0
