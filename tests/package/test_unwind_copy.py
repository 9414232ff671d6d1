"""Unwind records with exception handlers: built byte by byte, laid out and fixed up."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from hpatch.arch import Machine, arch_for
from hpatch.arch.rewrite import Fixup
from hpatch.arch.x64 import UNW_GS_FLAG_HAS_ALIGNMENT
from hpatch.errors import ImageFormatError
from hpatch.package.model import FixupEntry, TargetKind
from hpatch.package.unwind_copy import (
    EXCEPTION_EXECUTE_HANDLER,
    ExceptionHandler,
    HandlerDataError,
    HandlerIdentity,
    ScopeField,
    UnwindRecordLayout,
    recognise_handler,
    record_fixups,
    unwind_record_layout,
)

UNWIND_RVA = 0x3000
HANDLER_RVA = 0x2000
#: The function the records belong to: [FUNCTION_RVA, FUNCTION_END), copied at COPY.
FUNCTION_RVA, FUNCTION_END, COPY = 0x1000, 0x1100, 0x400
UNW_FLAG_EHANDLER, UNW_FLAG_UHANDLER = 1, 2


def reader(data: bytes, at: int) -> Callable[[int, int], bytes]:
    """A ReadRva over ``data`` placed at RVA ``at`` (ImageFormatError outside it)."""

    def read(rva: int, size: int) -> bytes:
        if rva < at or rva + size > at + len(data):
            raise ImageFormatError(f"read of {size} bytes at 0x{rva:x}")
        return data[rva - at : rva - at + size]

    return read


def named(handler: ExceptionHandler | None) -> Callable[[int], HandlerIdentity]:
    def identify(rva: int) -> HandlerIdentity:
        assert rva == HANDLER_RVA, "the handler is read from its field"
        return HandlerIdentity(handler, handler.value if handler else f"sub_{rva:x}")

    return identify


def x64_record(codes: int, tail: bytes) -> bytes:
    """UNWIND_INFO version 1 with both handler flags, ``codes`` unwind code slots (all
    UWOP_PUSH_NONVOL), then the handler RVA and ``tail`` (its data)."""
    flags = UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER
    header = bytes((1 | flags << 3, 2 * codes, codes, 0))
    slots = b"".join(bytes((2 * (codes - i), 0x50)) for i in range(codes))
    slots += bytes(2 * (codes % 2))  # the slot count is padded to even
    return header + slots + struct.pack("<I", HANDLER_RVA) + tail


def arm64_record(epilogs: int, code_words: int, tail: bytes, *, extended: bool = False) -> bytes:
    """.xdata with the X bit, ``epilogs`` epilog scopes (E clear), ``code_words`` words of
    unwind codes, then the handler RVA and ``tail``."""
    function_words = (FUNCTION_END - FUNCTION_RVA) // 4
    if extended:
        header = struct.pack("<II", function_words | 1 << 20, epilogs | code_words << 16)
    else:
        header = struct.pack("<I", function_words | 1 << 20 | epilogs << 22 | code_words << 27)
    scopes = b"".join(struct.pack("<I", 4 * i) for i in range(epilogs))
    codes = bytes([0xE4]) * (4 * code_words)  # end
    return header + scopes + codes + struct.pack("<I", HANDLER_RVA) + tail


def scope_table(*records: tuple[int, int, int, int]) -> bytes:
    return struct.pack("<I", len(records)) + b"".join(struct.pack("<IIII", *r) for r in records)


def layout(machine: Machine, record: bytes, handler: ExceptionHandler | None) -> UnwindRecordLayout:
    return unwind_record_layout(
        arch_for(machine), reader(record, UNWIND_RVA), UNWIND_RVA, named(handler)
    )


# layouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("codes", [1, 2, 3])
@pytest.mark.parametrize("cookie", [0x140, 0x140 | UNW_GS_FLAG_HAS_ALIGNMENT])
def test_x64_gs_data_is_copied_whole_with_no_fields(codes: int, cookie: int) -> None:
    gs_data = struct.pack("<I", cookie)
    if cookie & UNW_GS_FLAG_HAS_ALIGNMENT:
        gs_data += struct.pack("<iI", -0x20, 0x40)  # aligned base offset, alignment
    record = x64_record(codes, gs_data + b"\xee" * 8)  # trailing bytes are another record's
    found = layout(Machine.AMD64, record, ExceptionHandler.GS_HANDLER_CHECK)
    handler_offset = 4 + 2 * (codes + codes % 2)
    assert found.handler_offset == handler_offset
    assert record[handler_offset : handler_offset + 4] == struct.pack("<I", HANDLER_RVA)
    assert found.handler_rva == HANDLER_RVA
    assert found.size == handler_offset + 4 + len(gs_data)
    assert found.fields == ()


def test_a_record_without_a_handler_has_no_handler_fields() -> None:
    record = bytes((1, 4, 2, 0)) + bytes((4, 0x50, 2, 0x50))
    found = layout(Machine.AMD64, record, None)
    assert (found.size, found.handler_offset, found.handler, found.fields) == (8, None, None, ())
    assert record_fixups(found, COPY, Fixup.X64_ADDR32NB, _never, _never) == []


def _never(*_: object) -> None:
    raise AssertionError("nothing to bind")


def test_c_specific_handler_scope_table_fields() -> None:
    except_filtered = (0x1010, 0x1030, 0x5000, 0x1040)  # __except (filter at 0x5000)
    except_always = (0x1044, 0x1050, EXCEPTION_EXECUTE_HANDLER, 0x1060)  # __except (1)
    finally_ = (0x1064, 0x1080, 0x5100, 0)  # __finally: a termination handler
    record = x64_record(2, scope_table(except_filtered, except_always, finally_))
    found = layout(Machine.AMD64, record, ExceptionHandler.C_SPECIFIC_HANDLER)
    base = found.handler_offset + 4  # type: ignore[operator]
    assert found.size == len(record)
    expected = []
    for index, (begin, end, handler, jump) in enumerate((except_filtered, except_always, finally_)):
        at = base + 4 + 16 * index
        expected += [(at, ScopeField.BEGIN_ADDRESS, begin), (at + 4, ScopeField.END_ADDRESS, end)]
        if handler != EXCEPTION_EXECUTE_HANDLER:
            expected.append((at + 8, ScopeField.HANDLER_ADDRESS, handler))
        if jump:
            expected.append((at + 12, ScopeField.JUMP_TARGET, jump))
    assert [(f.offset, f.field, f.target_rva) for f in found.fields] == expected
    for field in found.fields:
        (value,) = struct.unpack_from("<I", record, field.offset)
        assert value == field.target_rva


@pytest.mark.parametrize("machine", [Machine.AMD64, Machine.ARM64])
def test_gs_handler_check_seh_is_a_scope_table_then_gs_data(machine: Machine) -> None:
    table = scope_table((0x1010, 0x1020, EXCEPTION_EXECUTE_HANDLER, 0x1030))
    cookie = struct.pack("<I", 0x60 | UNW_GS_FLAG_HAS_ALIGNMENT)
    # x64 reads an aligned base offset and alignment after a flagged cookie; ARM64 masks
    # two flag bits only, and reads one word.
    gs_data = cookie + (struct.pack("<iI", -8, 32) if machine == Machine.AMD64 else b"")
    tail = table + gs_data + b"\xee" * 12
    record = x64_record(1, tail) if machine == Machine.AMD64 else arm64_record(1, 1, tail)
    found = layout(machine, record, ExceptionHandler.GS_HANDLER_CHECK_SEH)
    assert found.size == len(record) - 12
    assert [f.field for f in found.fields] == [
        ScopeField.BEGIN_ADDRESS,
        ScopeField.END_ADDRESS,
        ScopeField.JUMP_TARGET,
    ]


@pytest.mark.parametrize("extended", [False, True])
@pytest.mark.parametrize(("epilogs", "code_words"), [(0, 1), (2, 3), (1, 2)])
def test_arm64_xdata_handler_follows_epilog_scopes_and_codes(
    extended: bool, epilogs: int, code_words: int
) -> None:
    gs_data = struct.pack("<i", -0x38)
    record = arm64_record(epilogs, code_words, gs_data + b"\xee" * 4, extended=extended)
    found = layout(Machine.ARM64, record, ExceptionHandler.GS_HANDLER_CHECK)
    handler_offset = (8 if extended else 4) + 4 * epilogs + 4 * code_words
    assert found.handler_offset == handler_offset
    assert found.handler_rva == HANDLER_RVA
    assert found.size == handler_offset + 8


@pytest.mark.parametrize(
    "handler",
    [
        ExceptionHandler.CXX_FRAME_HANDLER3,
        ExceptionHandler.CXX_FRAME_HANDLER4,
        ExceptionHandler.GS_HANDLER_CHECK_EH4,
    ],
)
def test_cxx_handlers_are_refused_naming_the_handler(handler: ExceptionHandler) -> None:
    record = x64_record(1, struct.pack("<I", 0x4000))
    with pytest.raises(HandlerDataError, match=rf"{handler.value}.*FuncInfo"):
        layout(Machine.AMD64, record, handler)


def test_an_unknown_handler_is_refused() -> None:
    record = arm64_record(0, 1, struct.pack("<I", 0))
    with pytest.raises(HandlerDataError, match=f"sub_{HANDLER_RVA:x}, which hpatch does not"):
        layout(Machine.ARM64, record, None)


@pytest.mark.parametrize(
    ("table", "why"),
    [
        (scope_table((0x1020, 0x1020, 1, 0x1030)), "empty range"),
        (scope_table((0x1010, 0x1020, 1, 0)), "no termination handler"),
        (scope_table((0x1010, 0x1020, 0, 0x1030)), "null exception filter"),
        (struct.pack("<I", 1 << 20), "not plausible"),
        (struct.pack("<I", 2) + struct.pack("<IIII", 0x1010, 0x1020, 1, 0x1030), "out of"),
    ],
)
def test_malformed_scope_tables_are_refused(table: bytes, why: str) -> None:
    record = x64_record(1, table)
    with pytest.raises(HandlerDataError, match=why):
        layout(Machine.AMD64, record, ExceptionHandler.C_SPECIFIC_HANDLER)


# fixups -----------------------------------------------------------------------------


def locate_own(rva: int, end_ok: bool) -> int | None:
    inside = rva - FUNCTION_RVA
    if 0 <= inside < FUNCTION_END - FUNCTION_RVA or (end_ok and rva == FUNCTION_END):
        return COPY + inside
    return None


def old_code(field: int, target: int) -> tuple[TargetKind, int]:
    """Binds every code reference to an old RVA 0x10 lower (what a diff would find)."""
    assert UNWIND_RVA <= field < UNWIND_RVA + 0x100, "fields are named by their new RVA"
    return TargetKind.OLD_RVA, target - 0x10


@pytest.mark.parametrize(
    ("machine", "kind"),
    [(Machine.AMD64, Fixup.X64_ADDR32NB), (Machine.ARM64, Fixup.ARM64_ADDR32NB)],
)
def test_scope_table_fixups_bind_code_and_the_functions_copy(machine: Machine, kind: Fixup) -> None:
    scopes = ((0x1010, 0x1030, 0x5000, 0x1040), (0x1080, FUNCTION_END, 0x5100, 0))
    tail = scope_table(*scopes)
    record = x64_record(3, tail) if machine == Machine.AMD64 else arm64_record(1, 2, tail)
    found = layout(machine, record, ExceptionHandler.C_SPECIFIC_HANDLER)
    offset = 0x800
    fixups = record_fixups(found, offset, kind, old_code, locate_own)
    assert fixups is not None
    assert found.handler_offset is not None
    table = offset + found.handler_offset + 8
    expected = [
        FixupEntry(offset + found.handler_offset, kind, TargetKind.OLD_RVA, HANDLER_RVA - 0x10)
    ]
    for index, (begin, end, handler, jump) in enumerate(scopes):
        at = table + 16 * index
        expected += [
            FixupEntry(at, kind, TargetKind.REGION, COPY + begin - FUNCTION_RVA),
            FixupEntry(at + 4, kind, TargetKind.REGION, COPY + end - FUNCTION_RVA),
            FixupEntry(at + 8, kind, TargetKind.OLD_RVA, handler - 0x10),
        ]
        if jump:
            expected.append(
                FixupEntry(at + 12, kind, TargetKind.REGION, COPY + jump - FUNCTION_RVA)
            )
    assert fixups == expected


def test_gs_record_fixup_is_the_handler_alone() -> None:
    found = layout(
        Machine.ARM64, arm64_record(0, 1, struct.pack("<i", -8)), ExceptionHandler.GS_HANDLER_CHECK
    )
    fixups = record_fixups(found, 0x40, Fixup.ARM64_ADDR32NB, old_code, locate_own)
    assert fixups == [
        FixupEntry(0x40 + 8, Fixup.ARM64_ADDR32NB, TargetKind.OLD_RVA, HANDLER_RVA - 0x10)
    ]


def test_a_guarded_range_outside_the_function_is_refused() -> None:
    tail = scope_table((0x1010, 0x1030, 1, FUNCTION_END + 0x10))
    found = layout(Machine.AMD64, x64_record(1, tail), ExceptionHandler.C_SPECIFIC_HANDLER)
    with pytest.raises(HandlerDataError, match=f"JumpTarget 0x{FUNCTION_END + 0x10:x} outside"):
        record_fixups(found, 0, Fixup.X64_ADDR32NB, old_code, locate_own)


def test_a_guarded_range_split_by_the_copy_is_refused() -> None:
    tail = scope_table((0x1010, 0x1030, 1, 0x1040))
    found = layout(Machine.AMD64, x64_record(1, tail), ExceptionHandler.C_SPECIFIC_HANDLER)

    def split(rva: int, end_ok: bool) -> int | None:
        located = locate_own(rva, end_ok)
        # two parts: [0x1000, 0x1020) at COPY, [0x1020, 0x1100) 0x100 further on
        return None if located is None else located + (0x100 if rva >= 0x1020 else 0)

    with pytest.raises(HandlerDataError, match="EndAddress 0x1030 not copied along"):
        record_fixups(found, 0, Fixup.X64_ADDR32NB, old_code, split)


def test_an_unbindable_filter_stops_the_fixups() -> None:
    tail = scope_table((0x1010, 0x1030, 0x5000, 0x1040))
    found = layout(Machine.AMD64, x64_record(1, tail), ExceptionHandler.C_SPECIFIC_HANDLER)

    def no_filter(field: int, target: int) -> tuple[TargetKind, int] | None:
        return None if target == 0x5000 else old_code(field, target)

    assert record_fixups(found, 0, Fixup.X64_ADDR32NB, no_filter, locate_own) is None


# recognising the runtime's GS handler -----------------------------------------------

X64_GS_HANDLER_CHECK = bytes.fromhex("4883ec284d8b4138488bca498bd1e80d000000b8010000004883c428c3")
X64_GS_HANDLER_CHECK_COMMON = bytes.fromhex(
    "4053458b18488bda4183e3f84c8bc941f600044c8bd17413418b40084d635004f7d84c03d14863c84c23"
    "d14963c34a8b1410488b43108b4808488b4308f64401030f74100fb6440103b9f0ffffff4823c14c03c8"
    "4c33ca498bc95be984f1ffff"
)
ARM64_GS_HANDLER_CHECK = bytes.fromhex(
    "7f2303d5fd7bbfa9fd030091681c40f9080180b909f57e92286961f8280108cb0801018b002100d1"
    "f2d0ff9720008052fd7bc1a8ff2303d5c0035fd6"
)


def test_x64_gs_handler_is_recognised_with_its_callee() -> None:
    # the handler, three bytes of padding, then __GSHandlerCheckCommon at +0x20
    code = X64_GS_HANDLER_CHECK + b"\xcc" * 3 + X64_GS_HANDLER_CHECK_COMMON
    read = reader(code, HANDLER_RVA)
    assert recognise_handler(Machine.AMD64, read, HANDLER_RVA) == ExceptionHandler.GS_HANDLER_CHECK
    # a callee that reads the data otherwise is not the runtime's
    changed = bytearray(code)
    changed[0x20 + 8] ^= 0x01
    assert (
        recognise_handler(Machine.AMD64, reader(bytes(changed), HANDLER_RVA), HANDLER_RVA) is None
    )
    assert recognise_handler(Machine.AMD64, read, HANDLER_RVA + 1) is None


def test_arm64_gs_handler_is_recognised_whatever_its_call_reaches() -> None:
    read = reader(ARM64_GS_HANDLER_CHECK, HANDLER_RVA)
    assert recognise_handler(Machine.ARM64, read, HANDLER_RVA) == ExceptionHandler.GS_HANDLER_CHECK
    moved = bytearray(ARM64_GS_HANDLER_CHECK)
    moved[40:44] = struct.pack("<I", 0x94000000 | 0x123)  # bl elsewhere
    assert recognise_handler(Machine.ARM64, reader(bytes(moved), HANDLER_RVA), HANDLER_RVA) == (
        ExceptionHandler.GS_HANDLER_CHECK
    )
    moved[16:20] = struct.pack("<I", 0xB9400108)  # ldr w8, [x8]: another data layout
    assert recognise_handler(Machine.ARM64, reader(bytes(moved), HANDLER_RVA), HANDLER_RVA) is None
