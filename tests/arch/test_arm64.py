"""ARM64 decoding: .pdata in packed and .xdata forms, code extents, padding, thunks, and
the pairing of ADRPs with the words that complete them."""

from __future__ import annotations

import random
import struct

import capstone
import keystone
import pytest

from hpatch._fallback.scan import _arm64_written
from hpatch.arch import Machine, RefKind, SiteKind, arch_for
from hpatch.arch.arm64_relocate import _gpr_access
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
    assert [column.typecode for column in sites] == ["I", "I", "B"]
    assert list(zip(*sites, strict=True)) == [
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


DATA_WORD = struct.pack("<I", 0xC0040000)  # MSVC fill after a return; decodes as an SME move


@pytest.mark.parametrize(
    ("code", "spans", "runs"),
    [
        (assemble("mov x0, x1; ldr x19, [sp]", 0x1000), (), True),
        (assemble("mov x0, x1; ret", 0x1000), (), False),
        # a word after the return that no branch leads to is never run
        (assemble("mov x0, x1; ret", 0x1000) + DATA_WORD, (), False),
        # unless a branch of the part leads to it
        (assemble("cbz x0, #0x100c; mov x0, x1; ret; ldr x19, [sp]", 0x1000), (), True),
        # or one in another part of the function
        (assemble("mov x0, x1; ret; ldr x19, [sp]", 0x1000), ((0x2000, 0x2004),), True),
        (assemble("mov x0, x1; b #0x1000; ldr x19, [sp]", 0x1000), (), False),
        (assemble("mov x0, x1; brk #0xf000; ldr x19, [sp]", 0x1000), (), False),
    ],
)
def test_runs_on_needs_the_last_instruction_reached(
    code: bytes, spans: tuple[tuple[int, int], ...], runs: bool
) -> None:
    image = FakeImage()
    image.put(0x1000, code)
    image.put(0x2000, assemble("b #0x1008", 0x2000))
    end = 0x1000 + len(code)
    assert ARM64.runs_on(image.read, 0x1000, end, spans) is runs
    assert ARM64.runs_on(image.read, 0x1000, end, (), [end - 4]) is (
        ARM64.falls_through(image.read, 0x1000, end)
    )


# ADRP pairing along the control flow ---------------------------------------------


def completions(source: str, rva: int = 0x1000) -> dict[int, int]:
    """The ADDRESS references of the code ``source`` assembles to, as one part:
    {site: target}."""
    code = assemble(source, rva)
    normalised = ARM64.normalise(code, rva, (rva, rva + len(code)), b"", 0)
    return {r.site_rva: r.target_rva for r in normalised.references if r.kind == RefKind.ADDRESS}


def test_a_completion_reached_by_a_branch_over_code_that_reuses_the_register() -> None:
    # libpng's png_do_read_transformations: the page is set, a branch jumps over code
    # that takes x15 for something else, and the load at the target completes it.
    refs = completions(
        "adrp x15, #0x3000; b.hs #0x1018;"
        " movz x15, #5; ldr x0, [x15, #8]; ret;"
        " ldp x1, x2, [sp], #16; ldr q2, [x15, #0x1d0]; ret"
    )
    assert refs == {0x1000: 0x31D0, 0x1018: 0x31D0}


def test_paths_that_join_with_different_pages_are_not_paired() -> None:
    refs = completions(
        "cbz x0, #0x100c; adrp x8, #0x3000; b #0x1010; adrp x8, #0x4000; ldr x1, [x8, #0x10]; ret"
    )
    assert refs == {0x1004: 0x3000, 0x100C: 0x4000}


def test_paths_that_join_with_adrps_of_one_page_are_paired() -> None:
    # Each ADRP takes the first completion that a join of its page reached.
    refs = completions(
        "cbz x0, #0x100c; adrp x8, #0x3000; b #0x1010; adrp x8, #0x3000;"
        " ldr x1, [x8, #0x10]; ldr x2, [x8, #0x18]; ret"
    )
    assert refs == {0x1004: 0x3010, 0x100C: 0x3010, 0x1010: 0x3010, 0x1014: 0x3018}


def test_a_call_keeps_callee_saved_registers_and_clobbers_the_others() -> None:
    refs = completions(
        "adrp x19, #0x3000; adrp x8, #0x4000; adrp x18, #0x5000; bl #0x8000;"
        " ldr x0, [x19, #0x20]; ldr x1, [x8, #0x30]; ldr x2, [x18, #0x40];"
        " adrp x20, #0x6000; blr x3; add x0, x20, #0x50; ldr x1, [x30, #8]; ret"
    )
    assert refs == {
        0x1000: 0x3020,
        0x1004: 0x4000,
        0x1008: 0x5000,
        0x1010: 0x3020,
        0x101C: 0x6050,
        0x1024: 0x6050,
    }


def test_words_that_only_read_the_page_register_keep_it() -> None:
    # CBZ/TBZ test it, CMP/TST write the zero register, stores read it (the indexed
    # ones write their base), FMOV and DUP write a vector register.
    refs = completions(
        "adrp x8, #0x3000; cbz x8, #0x1040; cmp x8, #0; tst x8, #1;"
        " stp x8, x9, [sp, #16]; str x8, [x10], #8; stur x8, [x10, #-8];"
        " fmov d8, x8; dup v8.2d, x8; tbz w8, #3, #0x1040; b.eq #0x1040;"
        " ldr x0, [x8, #0x40]; ldr x8, [x8, #0x48]; ldr x1, [x8, #0x50]; nop; nop; ret"
    )
    assert refs == {0x1000: 0x3040, 0x102C: 0x3040, 0x1030: 0x3048}


def test_a_copy_carries_the_page_and_a_write_ends_it() -> None:
    refs = completions(
        "adrp x8, #0x3000; mov x9, x8; lsr x8, x8, #1; ldr x0, [x9, #0x10];"
        " ldr x1, [x8, #0x18]; ldp x10, x9, [sp]; ldr x2, [x9, #0x20]; ret"
    )
    assert refs == {0x1000: 0x3010, 0x100C: 0x3010}


def test_jump_table_cases_take_what_registers_hold_at_the_dispatch() -> None:
    # Cases no direct branch reaches; the code after a RET (no BR before it) starts
    # with nothing known, and takes nothing away from the code it falls into.
    refs = completions(
        "adrp x20, #0x3000; ldr x9, [x1]; add x9, x9, x0, lsl #2; br x9;"
        " ldr x0, [x20, #0x10]; ret; ldr x1, [x20, #0x18]; ret"
    )
    assert refs == {0x1000: 0x3010, 0x1010: 0x3010, 0x1018: 0x3018}
    refs = completions(
        "adrp x20, #0x3000; cbz x0, #0x1010; ret; nop; ldr x0, [x20, #0x10];"
        " ldr x1, [x21, #0x18]; ret; adrp x21, #0x4000; nop; ret"
    )
    assert refs == {0x1000: 0x3010, 0x1010: 0x3010, 0x101C: 0x4000}


def test_pairing_is_bounded_on_hostile_code() -> None:
    # Every word a branch target and a join of many pages: the states only go down.
    rva, count = 0x10000, 1 << 14
    words = []
    for index in range(count):
        if index % 3 == 0:
            words.append(0x90000000 | (index % 31) | ((index % 7) << 5))  # ADRP
        elif index % 3 == 1:  # B.NE back to the start
            words.append(0x54000001 | ((-index & 0x7FFFF) << 5))
        else:
            words.append(0xF9400000 | ((index % 31) << 5) | ((index * 7) % 31))  # LDR
    code = struct.pack(f"<{count}I", *words)
    normalised = ARM64.normalise(code, rva, (rva, rva + len(code)), b"", 0)
    assert normalised.instruction_count == count


def test_the_normaliser_forgets_every_register_the_relocator_takes_as_written() -> None:
    # Where the relocator sees a page overwritten, the fingerprint must not complete it
    # further on: the builder would find no field for that reference. (The C core's
    # write set is its twin's, which the parity tests hold it to.)
    rng = random.Random(0x5EED)
    for _ in range(100_000):
        word = rng.getrandbits(32)
        access = _gpr_access(word)
        if access is not None:
            written = sum(1 << n for n in access[1])
            assert written & ~_arm64_written(word) == 0, hex(word)
