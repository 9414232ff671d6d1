"""Fixup application and redirect encoding: the C core, its Python twin, and oracles.

The parity tests run both ``_native`` and ``_fallback`` on identical inputs. The
oracle tests go through ``hpatch.arch.rewrite`` (whichever backend is active) and
check the rewritten bytes with capstone (decoding) and keystone (assembling).
"""

from __future__ import annotations

import struct
from array import array

import capstone
import keystone
import pytest
from capstone import arm64_const, x86_const
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hpatch import _fallback, _native
from hpatch.arch.rewrite import (
    Fixup,
    FixupRecord,
    Redirect,
    apply_fixups,
    encode_redirect,
    pack_fixups,
)
from hpatch.errors import ApplyError, FixupError

U64 = 1 << 64
INT32_MAX, INT32_MIN = (1 << 31) - 1, -(1 << 31)
VA = 0x1_4000_1000  # a typical x64 / ARM64 image code address
BASE = 0x1_4000_0000

REL32_KINDS = [Fixup.X64_REL32 + n for n in range(6)]
ARM64_INSTRUCTION_KINDS = (
    Fixup.ARM64_BRANCH26,
    Fixup.ARM64_BRANCH19,
    Fixup.ARM64_BRANCH14,
    Fixup.ARM64_PAGEBASE_REL21,
    Fixup.ARM64_REL21,
    Fixup.ARM64_PAGEOFFSET_12A,
    Fixup.ARM64_PAGEOFFSET_12L,
)


def _record(offset: int, kind: int, target: int, reserved: int = 0) -> bytes:
    return struct.pack("<IHHQ", offset, kind, reserved, target)


def _outcome(module, name: str, *args: object) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    try:
        return ("ok", getattr(module, name)(*args))
    except Exception as exc:  # parity of the error is what is tested
        return (type(exc).__name__, str(exc))


def _apply_both(
    buffer: bytes, buffer_va: int, image_base: int, records: bytes
) -> tuple[tuple[tuple[object, ...], bytes], tuple[tuple[object, ...], bytes]]:
    """(outcome, resulting buffer) of each backend on its own copy of buffer."""
    results = []
    for module in (_native, _fallback):
        data = bytearray(buffer)
        results.append(
            (_outcome(module, "apply_fixups", data, buffer_va, image_base, records), bytes(data))
        )
    return results[0], results[1]


# --- ARM64 instruction classes, assembled by keystone (ADR by hand: keystone 0.9.2
# mis-encodes it) --------------------------------------------------------------------

_KS_ARM64 = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
_KS_X64 = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
_CS_ARM64 = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
_CS_ARM64.detail = True
_CS_X64 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CS_X64.detail = True


def _arm64(source: str) -> int:
    """One instruction, assembled at address 0 (so ``#0`` targets leave imm 0)."""
    encoding, _ = _KS_ARM64.asm(source, 0)
    assert encoding is not None and len(encoding) == 4, source
    return struct.unpack("<I", bytes(encoding))[0]


# (source, log2 of the access size) of every LDR/STR (unsigned immediate) form tested
LDST_FORMS = [
    ("ldrb w1, [x2]", 0),
    ("strb w1, [x2]", 0),
    ("ldrsb x1, [x2]", 0),
    ("ldrh w1, [x2]", 1),
    ("ldr w1, [x2]", 2),
    ("ldrsw x1, [x2]", 2),
    ("ldr x1, [x2]", 3),
    ("str x1, [x2]", 3),
    ("prfm pldl1keep, [x1]", 3),
    ("ldr b0, [x1]", 0),
    ("ldr h0, [x1]", 1),
    ("ldr s0, [x1]", 2),
    ("ldr d0, [x1]", 3),
    ("ldr q0, [x1]", 4),
    ("str q1, [x2]", 4),
]
TEMPLATES: dict[Fixup, list[int]] = {
    Fixup.ARM64_BRANCH26: [_arm64("b #0"), _arm64("bl #0")],
    Fixup.ARM64_BRANCH19: [
        _arm64(s)
        for s in (
            "b.ne #0",
            "b.al #0",
            "cbz x3, #0",
            "cbnz w5, #0",
            "ldr x1, #0",
            "ldr w1, #0",
            "ldrsw x1, #0",
            "ldr s1, #0",
            "ldr d1, #0",
            "ldr q1, #0",
        )
    ],
    Fixup.ARM64_BRANCH14: [_arm64("tbz x1, #33, #0"), _arm64("tbnz w3, #7, #0")],
    Fixup.ARM64_PAGEBASE_REL21: [_arm64("adrp x0, #0"), _arm64("adrp x17, #0")],
    Fixup.ARM64_REL21: [0x10000000 | 4, 0x10000000 | 30],  # adr x4 / adr x30
    Fixup.ARM64_PAGEOFFSET_12A: [_arm64("add x1, x2, #0"), _arm64("adds w1, w2, #0")],
    Fixup.ARM64_PAGEOFFSET_12L: [_arm64(s) for s, _ in LDST_FORMS],
}
# Words of no class a fixup names: NOP, RET, MOVZ, shifted ADD, PRFM literal, LDUR.
NOT_FIXABLE = [0xD503201F, 0xD65F03C0, 0xD2800020, _arm64("add x1, x2, #1, lsl #12"), 0xD8000000]


def test_templates_are_what_they_claim() -> None:
    mnemonics = {
        Fixup.ARM64_BRANCH26: {"b", "bl"},
        Fixup.ARM64_BRANCH19: {"b.ne", "b.al", "cbz", "cbnz", "ldr", "ldrsw"},
        Fixup.ARM64_BRANCH14: {"tbz", "tbnz"},
        Fixup.ARM64_PAGEBASE_REL21: {"adrp"},
        Fixup.ARM64_REL21: {"adr"},
        Fixup.ARM64_PAGEOFFSET_12A: {"add", "adds"},
        Fixup.ARM64_PAGEOFFSET_12L: {
            "ldrb",
            "strb",
            "ldrsb",
            "ldrh",
            "ldr",
            "ldrsw",
            "str",
            "prfm",
        },
    }
    for kind, words in TEMPLATES.items():
        for word in words:
            (insn,) = _CS_ARM64.disasm(struct.pack("<I", word), 0)
            assert insn.mnemonic in mnemonics[kind], (kind, hex(word))


# --- parity: random batches, valid and invalid, all kinds ---------------------------


def _reach(kind: int) -> int:
    """A delta near the edge of what ``kind`` can reach (or 0 for data fields)."""
    return {
        Fixup.ARM64_BRANCH26: 1 << 27,
        Fixup.ARM64_BRANCH19: 1 << 20,
        Fixup.ARM64_BRANCH14: 1 << 15,
        Fixup.ARM64_PAGEBASE_REL21: 1 << 32,
        Fixup.ARM64_REL21: 1 << 20,
    }.get(kind, 1 << 31)


@st.composite
def batches(draw: st.DrawFn) -> tuple[bytes, int, int, bytes]:
    """(buffer, buffer_va, image_base, records): mostly valid fixups over instructions of
    the classes they name, with every way of being invalid mixed in."""
    words = draw(st.integers(1, 40))
    buffer = bytearray(draw(st.binary(min_size=4 * words, max_size=4 * words + 3)))
    buffer_va = draw(
        st.one_of(
            st.integers(0, 1 << 20).map(lambda n: VA + 4 * n),
            st.integers(0, 64),
            st.integers(U64 - 4 * words - 64, U64 - len(buffer)),
            st.integers(0, U64 - 1),
        )
    )
    image_base = draw(
        st.one_of(
            st.just(BASE),
            st.integers(0, 1 << 33).map(lambda d: max(0, buffer_va - d)),
            st.integers(0, U64 - 1),
        )
    )
    kinds = [*Fixup, 0, 0x102, 0x10A, 0x201, 0x211, 0xFFFF]
    records = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(kinds))
        if kind in TEMPLATES and draw(st.integers(0, 5)):
            offset = 4 * draw(st.integers(0, words - 1))
            word = draw(st.sampled_from(TEMPLATES[kind])) | draw(st.integers(0, 0x1F))
            buffer[offset : offset + 4] = struct.pack("<I", word)
        else:
            offset = draw(st.integers(0, len(buffer) + 8))
        site = buffer_va + offset
        reach = _reach(kind)
        target = draw(
            st.one_of(
                st.integers(-reach - 8, reach + 8).map(lambda d, s=site: s + d),
                st.integers(-8, 8).map(lambda d, s=site, r=reach: s + r + d),
                st.integers(-8, 8).map(lambda d, s=site, r=reach: s - r + d),
                st.integers(-8, 8).map(lambda d: image_base + (1 << 32) + d),
                st.integers(0, U64 - 1),
            )
        )
        reserved = draw(st.sampled_from([0] * 15 + [1, 0x8000]))
        records.append(_record(offset, kind, target % U64, reserved))
    return bytes(buffer), buffer_va, image_base, b"".join(records)


@settings(max_examples=600, deadline=None)
@given(batch=batches())
def test_backends_agree_on_random_batches(batch: tuple[bytes, int, int, bytes]) -> None:
    buffer, buffer_va, image_base, records = batch
    native, twin = _apply_both(buffer, buffer_va, image_base, records)
    assert native == twin
    outcome, result = native
    if outcome[0] != "ok":
        assert result == buffer, "a refused batch changed the buffer"
        # a record refused, or the buffer placed past the 64-bit address space
        assert outcome[0] == "FixupError" or outcome == (
            "ValueError",
            "apply_fixups: the buffer extends past the 64-bit address space",
        ), outcome
    else:
        assert outcome == ("ok", None)


@settings(max_examples=300, deadline=None)
@given(batch=batches())
def test_a_batch_is_its_records_one_by_one(batch: tuple[bytes, int, int, bytes]) -> None:
    """All or nothing: when every record succeeds alone (applied in order), the batch
    gives the same bytes; when one fails, the batch fails at the first such record."""
    buffer, buffer_va, image_base, records = batch
    assume(buffer_va + len(buffer) <= U64)
    native, _ = _apply_both(buffer, buffer_va, image_base, records)
    original = bytearray(buffer)
    stepwise = bytearray(buffer)
    for index in range(len(records) // 16):
        # each record is checked against the untouched buffer, as the batch does
        probe = bytearray(original)
        outcome = _outcome(
            _native,
            "apply_fixups",
            probe,
            buffer_va,
            image_base,
            records[16 * index : 16 * index + 16],
        )
        if outcome[0] != "ok":
            assert native[0][0] == "FixupError"
            assert native[0][1] == str(outcome[1]).replace("fixup 0:", f"fixup {index}:", 1)
            assert native[1] == buffer
            return
        # the record's field, as written into the untouched buffer, lands in order
        offset = struct.unpack_from("<I", records, 16 * index)[0]
        kind = struct.unpack_from("<H", records, 16 * index + 4)[0]
        size = 8 if kind in (Fixup.X64_ADDR64, Fixup.ARM64_ADDR64) else 4
        stepwise[offset : offset + size] = probe[offset : offset + size]
    assert native == (("ok", None), bytes(stepwise))


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 40),
    buffer_va=st.integers(-(1 << 65), 1 << 65),
    image_base=st.integers(-(1 << 65), 1 << 65),
    junk=st.binary(max_size=40),
    readonly=st.booleans(),
)
def test_backends_agree_on_bad_arguments(
    size: int, buffer_va: int, image_base: int, junk: bytes, readonly: bool
) -> None:
    for module_args in (
        (bytes(size) if readonly else bytearray(size), buffer_va, image_base, junk),
        (bytearray(size), buffer_va % U64, image_base, _record(0, Fixup.X64_ADDR64, 1)),
    ):
        outcomes = [_outcome(m, "apply_fixups", *module_args) for m in (_native, _fallback)]
        assert outcomes[0] == outcomes[1]


def test_bad_arguments_are_refused_with_the_same_message() -> None:
    record = _record(0, Fixup.X64_ADDR64, 1)
    cases = [
        ((b"\0" * 8, 0, 0, record), ("ValueError", "apply_fixups: buffer is read-only")),
        ((bytearray(8), -1, 0, record), ("ValueError", "apply_fixups: buffer_va out of range")),
        ((bytearray(8), U64, 0, record), ("ValueError", "apply_fixups: buffer_va out of range")),
        ((bytearray(8), 0, -1, record), ("ValueError", "apply_fixups: image_base out of range")),
        ((bytearray(8), 0, U64, record), ("ValueError", "apply_fixups: image_base out of range")),
        (
            (bytearray(8), 0, 0, record + b"\0"),
            ("ValueError", "apply_fixups: records length 17 is not a multiple of 16"),
        ),
        (
            (bytearray(8), U64 - 7, 0, record),
            ("ValueError", "apply_fixups: the buffer extends past the 64-bit address space"),
        ),
        (
            (memoryview(bytearray(16))[::2], 0, 0, b""),
            ("ValueError", "apply_fixups: buffer is not contiguous"),
        ),
        (("text", 0, 0, b""), ("TypeError", "apply_fixups: buffer must be a bytes-like object")),
        (
            (bytearray(8), 0, 0, 16),
            ("TypeError", "apply_fixups: records must be a bytes-like object"),
        ),
        (
            (bytearray(8), 1.0, 0, b""),
            ("TypeError", "'float' object cannot be interpreted as an integer"),
        ),
    ]
    for args, expected in cases:
        assert _outcome(_native, "apply_fixups", *args) == expected
        assert _outcome(_fallback, "apply_fixups", *args) == expected
    for module in (_native, _fallback):  # the top byte of the address space is usable
        data = bytearray(8)
        module.apply_fixups(data, U64 - 8, 0, record)
        assert data == struct.pack("<Q", 1)


def test_refusals_name_the_record_and_the_reason() -> None:
    adr, b = TEMPLATES[Fixup.ARM64_REL21][0], TEMPLATES[Fixup.ARM64_BRANCH26][0]
    buffer = struct.pack("<4I", b, adr, _arm64("add x1, x2, #1, lsl #12"), 0xD503201F)
    cases = [
        (_record(0, 0x999, 0), "unknown kind 0x999"),
        (_record(0, Fixup.X64_REL32, VA, reserved=1), "reserved field is not 0"),
        (_record(13, Fixup.X64_REL32, VA), "field outside the buffer"),
        (_record(12, Fixup.X64_REL32, VA + (1 << 31) + 16), "target out of reach"),
        (_record(0, Fixup.X64_ADDR32NB, BASE - 1), "target not within 4 GiB above the image base"),
        (_record(2, Fixup.ARM64_BRANCH26, VA), "instruction offset not 4-aligned"),
        (_record(0, Fixup.ARM64_BRANCH26, VA + 2), "branch target not 4-aligned"),
        (_record(4, Fixup.ARM64_BRANCH26, VA), "not a B/BL instruction"),
        (_record(0, Fixup.ARM64_BRANCH19, VA), "not a B.cond/CBZ/CBNZ/LDR (literal) instruction"),
        (_record(0, Fixup.ARM64_BRANCH14, VA), "not a TBZ/TBNZ instruction"),
        (_record(0, Fixup.ARM64_PAGEBASE_REL21, VA), "not an ADRP instruction"),
        (_record(0, Fixup.ARM64_REL21, VA), "not an ADR instruction"),
        (_record(12, Fixup.ARM64_PAGEOFFSET_12A, VA), "not an ADD/ADDS (immediate) instruction"),
        (_record(8, Fixup.ARM64_PAGEOFFSET_12A, VA), "ADD immediate is shifted"),
        (
            _record(12, Fixup.ARM64_PAGEOFFSET_12L, VA),
            "not an LDR/STR (unsigned immediate) instruction",
        ),
    ]
    for record, reason in cases:
        batch = _record(0, Fixup.X64_ADDR64, 7) + record
        native, twin = _apply_both(buffer, VA, BASE, batch)
        assert native == twin == (("FixupError", f"fixup 1: {reason}"), buffer), reason
        for module in (_native, _fallback):
            # the failing record and what is wrong with it, as data: no message to parse
            with pytest.raises(FixupError) as raised:
                module.apply_fixups(bytearray(buffer), VA, BASE, batch)
            assert (raised.value.index, raised.value.reason) == (1, reason)
    native, twin = _apply_both(buffer, VA + 2, BASE, _record(0, Fixup.ARM64_BRANCH26, VA))
    assert native == twin == (("FixupError", "fixup 0: instruction address not 4-aligned"), buffer)


def test_records_may_alias_the_buffer() -> None:
    for module in (_native, _fallback):
        # the first record overwrites the second's target: it must have been read before
        data = bytearray(
            _record(24, Fixup.X64_ADDR64, 0x1122334455667788) + _record(0, Fixup.X64_ADDR64, 5)
        )
        module.apply_fixups(data, VA, BASE, memoryview(data))
        assert struct.unpack_from("<Q", data, 0)[0] == 5
        assert struct.unpack_from("<Q", data, 24)[0] == 0x1122334455667788


def test_writes_go_through_the_buffer_protocol() -> None:
    for module in (_native, _fallback):
        backing = bytearray(32)
        module.apply_fixups(memoryview(backing)[8:24], VA, BASE, _record(4, Fixup.X64_ADDR64, 0xAB))
        assert backing == bytes(12) + b"\xab" + bytes(19)
        words = array("I", [0] * 4)
        module.apply_fixups(words, VA, BASE, _record(4, Fixup.X64_ADDR32NB, BASE + 0x1234))
        assert list(words) == [0, 0x1234, 0, 0]


def test_later_records_win_where_fields_overlap() -> None:
    records = _record(0, Fixup.X64_ADDR64, U64 - 1) + _record(2, Fixup.X64_ADDR32NB, BASE + 0x10)
    native, twin = _apply_both(bytes(12), VA, BASE, records)
    assert native == twin == (("ok", None), b"\xff\xff\x10\0\0\0\xff\xff\0\0\0\0")


# --- redirect parity -----------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    strategy=st.integers(-1, 7),
    entry=st.one_of(st.integers(-8, 64), st.integers(0, U64 + 8), st.integers(U64 - 32, U64 + 1)),
    delta=st.one_of(
        st.integers(-(1 << 32), 1 << 32),
        st.sampled_from([1 << 27, -(1 << 27), 1 << 31, -(1 << 31)]).flatmap(
            lambda edge: st.integers(edge - 8, edge + 8)
        ),
    ),
)
def test_backends_agree_on_redirects(strategy: int, entry: int, delta: int) -> None:
    target = entry + delta
    native = _outcome(_native, "encode_redirect", strategy, entry, target)
    twin = _outcome(_fallback, "encode_redirect", strategy, entry, target)
    assert native == twin
    if native[0] == "ok":
        assert len(native[1]) == Redirect(strategy).span[1]
    else:
        assert native[0] == "ValueError" and native[1].startswith("redirect: ")


def test_redirect_refusals() -> None:
    cases = [
        ((0, 0x1000, 0x2000), "redirect: unknown strategy 0"),
        ((6, 0x1000, 0x2000), "redirect: unknown strategy 6"),
        ((Redirect.X64_JMP_REL32, -1, 0x2000), "redirect: entry_va out of range"),
        ((Redirect.X64_JMP_REL32, 0x1000, U64), "redirect: target_va out of range"),
        ((Redirect.X64_TWO_STAGE, 4, 0x2000), "redirect: the span leaves the 64-bit address space"),
        (
            (Redirect.X64_JMP_ABS64, U64 - 13, 0),
            "redirect: the span leaves the 64-bit address space",
        ),
        ((Redirect.ARM64_B, 0x1002, 0x2000), "redirect: entry not 4-aligned"),
        ((Redirect.ARM64_B, 0x1000, 0x2002), "redirect: target not 4-aligned"),
        ((Redirect.ARM64_LDR_BR, 0x1001, 0x2000), "redirect: entry not 4-aligned"),
        ((Redirect.ARM64_B, 0x1000, 0x1000 + (1 << 27)), "redirect: target out of reach"),
    ]
    for args, message in cases:
        for module in (_native, _fallback):
            assert _outcome(module, "encode_redirect", *args) == ("ValueError", message)
        with pytest.raises(ApplyError, match=message):
            encode_redirect(*args)


# --- oracles: capstone decodes every rewritten x64 instruction to its target ----------

# (encoding with a zero displacement, offset of the rel32 field, kind)
X64_SITES = [
    (b"\xe8" + bytes(4), 1, Fixup.X64_REL32),  # call rel32
    (b"\xe9" + bytes(4), 1, Fixup.X64_REL32),  # jmp rel32
    (b"\x0f\x84" + bytes(4), 2, Fixup.X64_REL32),  # je rel32
    (b"\x48\x8d\x05" + bytes(4), 3, Fixup.X64_REL32),  # lea rax, [rip + d]
    (b"\x8b\x0d" + bytes(4), 2, Fixup.X64_REL32),  # mov ecx, [rip + d]
    (b"\xff\x15" + bytes(4), 2, Fixup.X64_REL32),  # call [rip + d]
    (b"\x80\x3d" + bytes(4) + b"\x7f", 2, Fixup.X64_REL32_1),  # cmp byte [rip + d], 0x7f
    (b"\xc1\x05" + bytes(4) + b"\x03", 2, Fixup.X64_REL32_1),  # rol dword [rip + d], 3
    (b"\x66\xc7\x05" + bytes(4) + b"\x34\x12", 3, Fixup.X64_REL32_2),  # mov word [rip + d], imm16
    (b"\xc7\x05" + bytes(4) + b"\x78\x56\x34\x12", 2, Fixup.X64_REL32_4),  # mov dword [..], imm32
    (b"\x48\xc7\x05" + bytes(4) + b"\xff\xff\xff\x7f", 3, Fixup.X64_REL32_4),  # mov qword [..]
    (b"\x48\x81\x3d" + bytes(4) + b"\x01\0\0\0", 3, Fixup.X64_REL32_4),  # cmp qword [..], imm32
]


def _x64_target(insn) -> int:  # type: ignore[no-untyped-def]
    """Where an x64 instruction's rel32 or RIP-relative operand points."""
    for operand in insn.operands:
        if operand.type == x86_const.X86_OP_MEM and operand.mem.base == x86_const.X86_REG_RIP:
            return insn.address + insn.size + operand.mem.disp
    if insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
        return insn.operands[0].imm
    raise AssertionError(f"no reference in {insn.mnemonic} {insn.op_str}")


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(range(len(X64_SITES))), st.integers(INT32_MIN, INT32_MAX)),
        min_size=1,
        max_size=12,
    ),
    code_va=st.integers(1 << 31, 1 << 48),
)
def test_x64_fixups_land_on_their_targets(picks: list[tuple[int, int]], code_va: int) -> None:
    code = bytearray()
    records, expected = [], []
    for site, delta in picks:
        encoding, field, kind = X64_SITES[site]
        insn_va = code_va + len(code)
        target = insn_va + len(encoding) + delta  # in reach of rel32, from the insn's end
        records.append(FixupRecord(len(code) + field, kind, target))
        expected.append(target)
        code += encoding
    apply_fixups(code, code_va, BASE, records)
    decoded = list(_CS_X64.disasm(bytes(code), code_va))
    assert [_x64_target(insn) for insn in decoded] == expected


def test_x64_absolute_fields_and_the_rel32_kinds_without_an_instruction() -> None:
    code = bytearray(b"\x48\xb8" + bytes(8) + bytes(16))  # movabs rax, imm64; data
    records = [
        FixupRecord(2, Fixup.X64_ADDR64, 0xFFFF_8000_1234_5678),
        FixupRecord(10, Fixup.X64_ADDR32NB, BASE + 0x2345),
        FixupRecord(14, Fixup.X64_REL32_3, VA + 0x100),
        FixupRecord(18, Fixup.X64_REL32_5, VA - 0x100),
    ]
    apply_fixups(code, VA, BASE, records)
    (movabs,) = _CS_X64.disasm(bytes(code[:10]), VA)
    assert movabs.operands[1].imm % U64 == 0xFFFF_8000_1234_5678  # capstone: signed
    assert struct.unpack_from("<I", code, 10)[0] == 0x2345
    # REL32_n: from the end of the field plus n bytes of the instruction after it
    assert struct.unpack_from("<i", code, 14)[0] == (VA + 0x100) - (VA + 14 + 4 + 3)
    assert struct.unpack_from("<i", code, 18)[0] == (VA - 0x100) - (VA + 18 + 4 + 5)


# --- oracles: capstone decodes every rewritten ARM64 instruction to its target --------


def _arm64_decode(word: int, va: int):  # type: ignore[no-untyped-def]
    (insn,) = _CS_ARM64.disasm(struct.pack("<I", word), va)
    return insn


def _arm64_branch_target(word: int, va: int) -> int:
    insn = _arm64_decode(word, va)
    assert insn.operands[-1].type == arm64_const.ARM64_OP_IMM
    return insn.operands[-1].imm


def _arm64_reach(kind: Fixup) -> tuple[int, int]:
    """[lo, hi] of the byte delta a kind reaches (pages for ADRP)."""
    bits = {
        Fixup.ARM64_BRANCH26: 28,
        Fixup.ARM64_BRANCH19: 21,
        Fixup.ARM64_BRANCH14: 16,
        Fixup.ARM64_REL21: 21,
    }[kind]
    step = 1 if kind == Fixup.ARM64_REL21 else 4
    return -(1 << (bits - 1)), (1 << (bits - 1)) - step


BRANCH_KINDS = (Fixup.ARM64_BRANCH26, Fixup.ARM64_BRANCH19, Fixup.ARM64_BRANCH14, Fixup.ARM64_REL21)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(BRANCH_KINDS),
    pick=st.integers(0, 99),
    fraction=st.floats(0, 1),
    site_va=st.integers(1 << 30, 1 << 47).map(lambda v: v & ~3),
    stale=st.integers(0, 0xFFFFFFFF),
)
def test_arm64_branches_land_on_their_targets(
    kind: Fixup, pick: int, fraction: float, site_va: int, stale: int
) -> None:
    template = TEMPLATES[kind][pick % len(TEMPLATES[kind])]
    lo, hi = _arm64_reach(kind)
    delta = lo + int((hi - lo) * fraction)
    if kind != Fixup.ARM64_REL21:
        delta &= ~3
    # a stale immediate that the fixup must replace entirely
    code = bytearray(struct.pack("<I", template | (stale & _imm_mask(kind))))
    before = struct.unpack("<I", code)[0]
    apply_fixups(code, site_va, BASE, [FixupRecord(0, kind, site_va + delta)])
    word = struct.unpack("<I", code)[0]
    assert _arm64_branch_target(word, site_va) == site_va + delta
    # only the immediate changed
    assert word & ~_imm_mask(kind) & 0xFFFFFFFF == before & ~_imm_mask(kind) & 0xFFFFFFFF


def _imm_mask(kind: Fixup) -> int:
    return {
        Fixup.ARM64_BRANCH26: 0x03FFFFFF,
        Fixup.ARM64_BRANCH19: 0x00FFFFE0,
        Fixup.ARM64_BRANCH14: 0x0007FFE0,
        Fixup.ARM64_REL21: 0x60FFFFE0,
        Fixup.ARM64_PAGEBASE_REL21: 0x60FFFFE0,
        Fixup.ARM64_PAGEOFFSET_12A: 0x003FFC00,
        Fixup.ARM64_PAGEOFFSET_12L: 0x003FFC00,
    }[kind]


@settings(max_examples=400, deadline=None)
@given(
    form=st.sampled_from(range(len(LDST_FORMS) + 2)),
    site_va=st.integers(1 << 30, 1 << 47).map(lambda v: v & ~3),
    pages=st.integers(-(1 << 20), (1 << 20) - 1),
    low=st.integers(0, 0xFFF),
)
def test_arm64_adrp_pairs_land_on_their_targets(
    form: int, site_va: int, pages: int, low: int
) -> None:
    """ADRP + ADD and ADRP + LDR/STR of every access size reach the target exactly."""
    if form < len(LDST_FORMS):
        source, scale = LDST_FORMS[form]
        second, kind = _arm64(source), Fixup.ARM64_PAGEOFFSET_12L
        low &= ~((1 << scale) - 1)
    else:
        second = TEMPLATES[Fixup.ARM64_PAGEOFFSET_12A][form - len(LDST_FORMS)]
        kind = Fixup.ARM64_PAGEOFFSET_12A
    target = (site_va & ~0xFFF) + (pages << 12) + low
    assume(target >= 0)
    code = bytearray(struct.pack("<II", _arm64("adrp x2, #0"), second))
    apply_fixups(
        code,
        site_va,
        BASE,
        [FixupRecord(0, Fixup.ARM64_PAGEBASE_REL21, target), FixupRecord(4, kind, target)],
    )
    adrp, second_insn = _CS_ARM64.disasm(bytes(code), site_va)
    assert adrp.mnemonic == "adrp"
    page = adrp.operands[1].imm
    if kind == Fixup.ARM64_PAGEOFFSET_12A:
        offset = second_insn.operands[2].imm
    else:
        (memory,) = [o for o in second_insn.operands if o.type == arm64_const.ARM64_OP_MEM]
        offset = memory.mem.disp
    assert page + offset == target


def test_arm64_literal_loads_and_data_fields() -> None:
    code = bytearray(struct.pack("<3I", *TEMPLATES[Fixup.ARM64_BRANCH19][4:7]) + bytes(12))
    records = [
        FixupRecord(0, Fixup.ARM64_BRANCH19, VA + 0x1000),
        FixupRecord(4, Fixup.ARM64_BRANCH19, VA - 0x2000),
        FixupRecord(8, Fixup.ARM64_BRANCH19, VA + 12),
        FixupRecord(12, Fixup.ARM64_ADDR64, 0x1234_5678_9ABC),
        FixupRecord(20, Fixup.ARM64_ADDR32NB, BASE + 0x8000),
    ]
    apply_fixups(code, VA, BASE, records)
    decoded = list(_CS_ARM64.disasm(bytes(code[:12]), VA))
    assert [i.mnemonic for i in decoded] == ["ldr", "ldr", "ldrsw"]
    assert [i.operands[-1].imm for i in decoded] == [VA + 0x1000, VA - 0x2000, VA + 12]
    assert struct.unpack_from("<QI", code, 12) == (0x1234_5678_9ABC, 0x8000)


# --- range edges: exactly at the limit passes, one step past fails, for every kind ----


def _passes(
    code: bytes, kind: int, target: int, offset: int = 0, buffer_va: int = VA
) -> bytes | None:
    """The rewritten code, or None when refused (and then the code is untouched)."""
    data = bytearray(code)
    try:
        apply_fixups(data, buffer_va, BASE, [FixupRecord(offset, kind, target)])
    except FixupError as error:
        assert error.index == 0 and data == code
        return None
    return bytes(data)


@pytest.mark.parametrize("kind", REL32_KINDS, ids=lambda k: Fixup(k).name)
def test_rel32_edges(kind: int) -> None:
    n = kind - Fixup.X64_REL32
    end = VA + 2 + 4 + n  # field at offset 2
    code = bytes(16)
    for target, reaches in [
        (end + INT32_MAX, True),
        (end + INT32_MAX + 1, False),
        (end + INT32_MIN, True),
        (end + INT32_MIN - 1, False),
    ]:
        result = _passes(code, kind, target, offset=2)
        assert (result is not None) == reaches, hex(target - end)
        if result is not None:
            assert end + struct.unpack_from("<i", result, 2)[0] == target
    lea = b"\x48\x8d\x05" + bytes(4)  # capstone agrees at both ends
    for delta in (INT32_MAX, INT32_MIN):
        result = _passes(lea, Fixup.X64_REL32, VA + 7 + delta, offset=3)
        assert result is not None
        assert _x64_target(next(_CS_X64.disasm(result, VA))) == VA + 7 + delta


@pytest.mark.parametrize("kind", [Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB], ids=lambda k: k.name)
def test_addr32nb_edges(kind: Fixup) -> None:
    assert _passes(bytes(4), kind, BASE) == bytes(4)
    assert _passes(bytes(4), kind, BASE - 1) is None
    assert _passes(bytes(4), kind, BASE + 0xFFFFFFFF) == b"\xff" * 4
    assert _passes(bytes(4), kind, BASE + (1 << 32)) is None


@pytest.mark.parametrize("kind", [*Fixup], ids=lambda k: k.name)
def test_fields_must_lie_inside_the_buffer(kind: Fixup) -> None:
    size = kind.field_size
    word = TEMPLATES.get(kind, [0])[0]
    code = bytes(8) + struct.pack("<I", word) + bytes(size - 4)
    target = BASE + 0x1000 if "ADDR32NB" in kind.name else VA + 8
    assert _passes(code, kind, target, offset=8) is not None
    assert _passes(code[:-1], kind, target, offset=8) is None
    assert _passes(code, kind, target, offset=len(code) + 4) is None


@pytest.mark.parametrize("kind", BRANCH_KINDS, ids=lambda k: k.name)
def test_arm64_branch_edges(kind: Fixup) -> None:
    lo, hi = _arm64_reach(kind)
    step = 1 if kind == Fixup.ARM64_REL21 else 4
    code = struct.pack("<I", TEMPLATES[kind][0])
    for delta, reaches in [(hi, True), (hi + step, False), (lo, True), (lo - step, False)]:
        result = _passes(code, kind, VA + delta)
        assert (result is not None) == reaches, (kind.name, delta)
        if result is not None:
            assert _arm64_branch_target(struct.unpack("<I", result)[0], VA) == VA + delta
    if kind != Fixup.ARM64_REL21:
        assert _passes(code, kind, VA + 6) is None  # not a multiple of 4
    assert _passes(struct.pack("<I", TEMPLATES[kind][0]), kind, VA, buffer_va=VA + 2) is None


def test_adrp_edges() -> None:
    code = struct.pack("<I", TEMPLATES[Fixup.ARM64_PAGEBASE_REL21][0])
    page = VA & ~0xFFF
    for target, reaches in [
        (page + ((1 << 20) - 1) * 4096 + 0xFFF, True),  # last byte of the farthest page
        (page + (1 << 20) * 4096, False),
        (page - (1 << 20) * 4096, True),
        (page - (1 << 20) * 4096 - 1, False),
    ]:
        result = _passes(code, Fixup.ARM64_PAGEBASE_REL21, target)
        assert (result is not None) == reaches, hex(target - page)
        if result is not None:
            word = struct.unpack("<I", result)[0]
            assert _arm64_decode(word, VA).operands[1].imm == target & ~0xFFF


@pytest.mark.parametrize("form", LDST_FORMS, ids=lambda f: f[0])
def test_page_offset_edges(form: tuple[str, int]) -> None:
    source, scale = form
    code = struct.pack("<I", _arm64(source))
    highest = 0x1000 - (1 << scale)
    result = _passes(code, Fixup.ARM64_PAGEOFFSET_12L, VA + 0x10000 + highest)
    assert result is not None
    (memory,) = [
        o
        for o in _arm64_decode(struct.unpack("<I", result)[0], 0).operands
        if o.type == arm64_const.ARM64_OP_MEM
    ]
    assert memory.mem.disp == highest
    if scale:
        assert _passes(code, Fixup.ARM64_PAGEOFFSET_12L, VA + 0x10000 + highest + 1) is None
        assert _passes(code, Fixup.ARM64_PAGEOFFSET_12L, VA + (1 << (scale - 1))) is None
    add = struct.pack("<I", TEMPLATES[Fixup.ARM64_PAGEOFFSET_12A][0])
    result = _passes(add, Fixup.ARM64_PAGEOFFSET_12A, VA + 0xFFF)
    assert result is not None
    assert _arm64_decode(struct.unpack("<I", result)[0], 0).operands[2].imm == 0xFFF


@pytest.mark.parametrize("word", NOT_FIXABLE, ids=hex)
def test_instructions_of_another_class_are_refused(word: int) -> None:
    code = struct.pack("<I", word)
    for kind in ARM64_INSTRUCTION_KINDS:
        assert _passes(code, kind, VA) is None, kind.name


def test_a_refused_batch_writes_nothing() -> None:
    code = bytearray(struct.pack("<4I", *TEMPLATES[Fixup.ARM64_BRANCH26], 0, 0))
    original = bytes(code)
    records = [FixupRecord(i * 4, Fixup.ARM64_BRANCH26, VA + 64) for i in range(2)]
    records.append(FixupRecord(8, Fixup.ARM64_ADDR64, 1))
    records.append(FixupRecord(0, Fixup.ARM64_BRANCH26, VA + (1 << 27)))
    with pytest.raises(FixupError) as raised:
        apply_fixups(code, VA, BASE, records)
    assert raised.value.index == 3 and raised.value.reason == "target out of reach"
    assert str(raised.value) == "fixup 3: target out of reach"
    assert code == original
    apply_fixups(code, VA, BASE, records[:3])
    assert code != original


def test_pack_fixups() -> None:
    records = [FixupRecord(4, Fixup.X64_REL32, VA), FixupRecord(0, Fixup.ARM64_ADDR64, U64 - 1)]
    packed = pack_fixups(records)
    assert list(struct.iter_unpack("<IHHQ", packed)) == [(4, 0x104, 0, VA), (0, 0x20E, 0, U64 - 1)]
    with pytest.raises(FixupError) as raised:
        pack_fixups([*records, FixupRecord(0, Fixup.X64_ADDR64, -1)])
    assert raised.value.index == 2
    with pytest.raises(ValueError, match="read-only"):
        apply_fixups(b"\0" * 8, VA, BASE, records)


# --- redirect oracles: keystone assembles the same bytes ------------------------------


def _ks_x64(source: str, address: int) -> bytes:
    encoding, _ = _KS_X64.asm(source, address)
    return bytes(encoding)


@settings(max_examples=200, deadline=None)
@given(
    entry=st.integers(1 << 32, 1 << 40),
    delta=st.one_of(st.integers(INT32_MIN + 5, -200), st.integers(200, INT32_MAX)),
)
def test_x64_redirects_match_keystone(entry: int, delta: int) -> None:
    # far enough that keystone picks the rel32 form rather than a short jump
    target = entry + delta
    assert encode_redirect(Redirect.X64_JMP_REL32, entry, target) == _ks_x64(
        f"jmp {target:#x}", entry
    )
    two_stage = encode_redirect(Redirect.X64_TWO_STAGE, entry, target)
    assert two_stage[:5] == _ks_x64(f"jmp {target:#x}", entry - 5)
    assert two_stage[5:] == _ks_x64(f"jmp {entry - 5:#x}", entry)
    absolute = encode_redirect(Redirect.X64_JMP_ABS64, entry, target)
    assert absolute[:6] == _ks_x64("jmp qword ptr [rip]", entry)
    assert absolute[6:] == struct.pack("<Q", target)


@settings(max_examples=200, deadline=None)
@given(
    entry=st.integers(1 << 30, 1 << 40).map(lambda v: v & ~3),
    delta=st.integers(-(1 << 25), (1 << 25) - 1).map(lambda v: 4 * v),
)
def test_arm64_redirects_match_keystone(entry: int, delta: int) -> None:
    target = entry + delta
    encoding, _ = _KS_ARM64.asm(f"b #{target:#x}", entry)
    assert encode_redirect(Redirect.ARM64_B, entry, target) == bytes(encoding)
    stub = encode_redirect(Redirect.ARM64_LDR_BR, entry, target)
    encoding, _ = _KS_ARM64.asm(f"ldr x16, #{entry + 8:#x}; br x16", entry)
    assert stub[:8] == bytes(encoding)
    assert stub[8:] == struct.pack("<Q", target)


@pytest.mark.parametrize("strategy", [Redirect.X64_JMP_REL32, Redirect.X64_TWO_STAGE])
def test_x64_redirect_edges(strategy: Redirect) -> None:
    entry = VA
    end = entry + 5 if strategy == Redirect.X64_JMP_REL32 else entry
    start = entry + strategy.span[0]
    for target, reaches in [
        (end + INT32_MAX, True),
        (end + INT32_MAX + 1, False),
        (end + INT32_MIN, True),
        (end + INT32_MIN - 1, False),
        (end + 3, True),  # near: keystone would pick a short jump; capstone decodes it
    ]:
        try:
            encoding = encode_redirect(strategy, entry, target)
        except ApplyError:
            assert not reaches
            continue
        assert reaches
        jump = next(_CS_X64.disasm(encoding, start))
        assert (jump.mnemonic, jump.size, jump.operands[0].imm) == ("jmp", 5, target)
        if strategy == Redirect.X64_TWO_STAGE:
            back = next(_CS_X64.disasm(encoding[5:], entry))
            assert (back.mnemonic, back.operands[0].imm) == ("jmp", start)
    # the two-stage span starts 5 bytes before the entry
    assert encode_redirect(Redirect.X64_TWO_STAGE, 5, 0x100)[:1] == b"\xe9"
    with pytest.raises(ApplyError):
        encode_redirect(Redirect.X64_TWO_STAGE, 4, 0x100)


def test_arm64_b_redirect_edges() -> None:
    for delta, reaches in [
        ((1 << 27) - 4, True),
        (1 << 27, False),
        (-(1 << 27), True),
        (-(1 << 27) - 4, False),
    ]:
        try:
            encoding = encode_redirect(Redirect.ARM64_B, VA, VA + delta)
        except ApplyError:
            assert not reaches
            continue
        assert reaches
        assert _arm64_branch_target(struct.unpack("<I", encoding)[0], VA) == VA + delta


def test_absolute_redirects_reach_anywhere_up_to_the_top_of_memory() -> None:
    top = U64 - 1
    assert encode_redirect(Redirect.X64_JMP_ABS64, U64 - 14, 0)[6:] == bytes(8)
    assert encode_redirect(Redirect.X64_JMP_ABS64, 0, top)[6:] == b"\xff" * 8
    with pytest.raises(ApplyError):
        encode_redirect(Redirect.X64_JMP_ABS64, U64 - 13, 0)
    stub = encode_redirect(Redirect.ARM64_LDR_BR, U64 - 16, 0x1000)
    ldr, br = _CS_ARM64.disasm(stub[:8], U64 - 16)
    assert (ldr.mnemonic, ldr.operands[1].imm % U64, br.mnemonic) == ("ldr", U64 - 8, "br")
    with pytest.raises(ApplyError):
        encode_redirect(Redirect.ARM64_LDR_BR, U64 - 12, 0x1000)
