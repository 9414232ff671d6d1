"""ARM64 decoding: .pdata in packed and .xdata forms, code extents, padding, thunks."""

from __future__ import annotations

import struct

import capstone
import keystone
import pytest

from hpatch.arch import Machine, SiteKind, arch_for
from hpatch.errors import ImageFormatError

from .memory import FakeImage

ARM64 = arch_for(Machine.ARM64)
KS = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)


def assemble(source: str, rva: int) -> bytes:
    encoding, _ = KS.asm(source, rva)
    return bytes(encoding)


def packed(length: int, flag: int = 1) -> int:
    return (length // 4) << 2 | flag


def xdata_header(length: int, epilogs: int, code_words: int, e_bit: int = 0) -> int:
    return (length // 4) | e_bit << 21 | epilogs << 22 | code_words << 27


def test_packed_and_fragment_entries() -> None:
    pdata = struct.pack("<IIIIII", 0x1000, packed(0x40), 0x1040, packed(0x20, flag=2), 0, 0)
    entries = ARM64.decode_unwind_entries(pdata, FakeImage().read)
    assert [(e.begin_rva, e.end_rva, e.is_fragment) for e in entries] == [
        (0x1000, 0x1040, False),
        (0x1040, 0x1060, True),
    ]


def test_xdata_forms() -> None:
    image = FakeImage()
    # header + one epilog scope + one code word (save_fplr_x, end)
    image.put(0x5000, struct.pack("<III", xdata_header(0x80, 1, 1), 0x1C, 0xE4E4E481))
    # packed epilog (E=1): no scope words
    image.put(0x5010, struct.pack("<II", xdata_header(0x100, 0, 1, e_bit=1), 0xE4E4E4E4))
    # extended header: epilog count and code words in the second word
    image.put(0x5020, struct.pack("<II", xdata_header(0x400, 0, 0), 2 | 1 << 16))
    image.put(0x5028, struct.pack("<III", 0x10, 0x20, 0xE4E4E4E4))
    # a fragment: its unwind codes open with end_c
    image.put(0x5040, struct.pack("<II", xdata_header(0x30, 0, 1, e_bit=1), 0xE4E4E4E5))
    pdata = struct.pack("<8I", 0x1000, 0x5000, 0x1100, 0x5010, 0x2000, 0x5020, 0x2400, 0x5040)
    entries = ARM64.decode_unwind_entries(pdata, image.read)
    assert [(e.begin_rva, e.end_rva, e.is_fragment, e.unwind_rva) for e in entries] == [
        (0x1000, 0x1080, False, 0x5000),
        (0x1100, 0x1200, False, 0x5010),
        (0x2000, 0x2400, False, 0x5020),
        (0x2400, 0x2430, True, 0x5040),
    ]


@pytest.mark.parametrize(
    ("pdata", "xdata", "message"),
    [
        ((0x1002, packed(0x10)), None, "not 4-aligned"),
        ((0x1000, 3), None, "reserved flag"),
        ((0x1000, packed(0)), None, "zero length"),
        (
            (0x1000, 0x5000),
            struct.pack("<I", xdata_header(0x40, 1, 1) | 1 << 18),
            "unknown version",
        ),
        ((0x1000, 0x5000), struct.pack("<II", xdata_header(0x40, 1, 1), 0x10), "epilog scope"),
        ((0x1000, 0xFFFC), None, "outside"),
    ],
)
def test_corrupt_entries_are_refused(
    pdata: tuple[int, int], xdata: bytes | None, message: str
) -> None:
    image = FakeImage()
    if xdata is not None:
        image.put(0x5000, xdata)
    with pytest.raises(ImageFormatError, match=message):
        ARM64.decode_unwind_entries(struct.pack("<II", *pdata), image.read)


@pytest.mark.parametrize(
    ("source", "expected_size"),
    [
        ("ret", 4),
        ("mov w0, wzr; ret", 8),
        ("cbz w0, #0x100c; mov w0, #1; ret; mov w0, #2; ret", 20),
        ("tbnz w0, #3, #0x1008; ret; b #0x2000", 12),  # tail branch out of the range
        ("br x16", 4),
        ("bl #0x3000; brk #0x1", 8),
    ],
)
def test_code_extent_follows_control_flow(source: str, expected_size: int) -> None:
    code = assemble(source, 0x1000) + b"\0" * 8
    image = FakeImage()
    image.put(0x1000, code)
    assert ARM64.code_extent(image.read, 0x1000, 0x1000 + len(code)) == 0x1000 + expected_size


def test_code_extent_refuses_runaway_or_misaligned_code() -> None:
    image = FakeImage()
    image.put(0x1000, assemble("mov w0, #1; mov w1, #2", 0x1000))
    assert ARM64.code_extent(image.read, 0x1000, 0x1008) is None
    assert ARM64.code_extent(image.read, 0x1002, 0x1010) is None


def test_padding_thunks_and_sites() -> None:
    nop = struct.pack("<I", 0xD503201F)
    assert ARM64.padding_length(nop + b"\0" * 4 + assemble("ret", 0), 0) == 8
    image = FakeImage()
    image.put(0x1000, assemble("adrp x16, #0x3000; ldr x16, [x16, #0x10]; br x16", 0x1000))
    assert ARM64.import_thunk(image.read, 0x1000) == (12, 0x3010)
    image.put(0x1100, assemble("adrp x17, #0x3000; ldr x17, [x17, #0x10]; br x17", 0x1100))
    assert ARM64.import_thunk(image.read, 0x1100) is None
    # keystone 0.9.2 mis-encodes ADR, so that word is built by hand (capstone agrees).
    offset = 0x1800 - 0x1024
    adr_x2 = 0x10000000 | (offset & 3) << 29 | (offset >> 2) << 5 | 2
    capstone_view = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    decoded = next(capstone_view.disasm(struct.pack("<I", adr_x2), 0x1024))
    assert (decoded.mnemonic, decoded.op_str) == ("adr", "x2, #0x1800")
    code = (
        assemble(
            "bl #0x1100; b #0x1200; b.ne #0x1300; cbz x1, #0x1400; tbz w2, #1, #0x1500;"
            " adrp x0, #0x5000; add x0, x0, #0x18; adrp x8, #0x6000; add x1, x8, #0x20",
            0x1000,
        )
        + struct.pack("<I", adr_x2)
        + assemble("ldr q0, #0x1900; ldrsw x3, #0x1904; prfm pldl1keep, #0x1908", 0x1028)
    )
    sites = ARM64.scan_sites(code, 0x1000, 0, 0x10000)
    assert sites == [
        (0x1000, 0x1100, SiteKind.CALL),
        (0x1004, 0x1200, SiteKind.JUMP),
        (0x1008, 0x1300, SiteKind.COND_JUMP),
        (0x100C, 0x1400, SiteKind.COND_JUMP),
        (0x1010, 0x1500, SiteKind.COND_JUMP),
        (0x1014, 0x5018, SiteKind.ADDRESS),
        (0x101C, 0x6020, SiteKind.ADDRESS),  # the ADD may write another register
        (0x1024, 0x1800, SiteKind.ADDRESS),
        (0x1028, 0x1900, SiteKind.LOAD),
        (0x102C, 0x1904, SiteKind.LOAD),
    ]
    image = FakeImage()
    image.put(0x1000, code)
    assert [ARM64.load_size(image.read, rva) for rva in (0x1028, 0x102C)] == [16, 4]


@pytest.mark.parametrize(
    ("source", "falls"),
    [
        ("mov x0, x1; ldp x19, x20, [sp], #0x20", True),
        ("mov x0, x1; ret", False),
        ("mov x0, x1; b #0x2000", False),
        ("mov x0, x1; bl #0x2000", False),  # a final call does not return
        ("mov x0, x1; cbz x0, #0x1000", True),
        ("mov x0, x1; brk #0xf000", False),
    ],
)
def test_falls_through(source: str, falls: bool) -> None:
    code = assemble(source, 0x1000)
    image = FakeImage()
    image.put(0x1000, code)
    assert ARM64.falls_through(image.read, 0x1000, 0x1000 + len(code)) is falls
