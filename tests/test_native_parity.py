"""The C extension and its Python twin give identical results and errors."""

from __future__ import annotations

import random
import struct
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpatch import _fallback, _native
from hpatch.image import load_image

from .conftest import SAMPLES, corpus_binaries

SCANNERS = ("scan_x64_sites", "scan_arm64_sites")
RVA = st.integers(min_value=0, max_value=0x7FFFFFFF)


def _both(name: str, *args: object) -> tuple[object, object]:
    outcomes = []
    for module in (_native, _fallback):
        try:
            outcomes.append(("ok", getattr(module, name)(*args)))
        except Exception as exc:  # parity of the error is what is tested
            outcomes.append((type(exc).__name__, str(exc)))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("name", SCANNERS)
@settings(max_examples=300, deadline=None)
@given(code=st.binary(max_size=512), base=RVA, lo=RVA, span=st.integers(0, 1 << 31))
def test_scanners_agree_on_random_code(
    name: str, code: bytes, base: int, lo: int, span: int
) -> None:
    base -= base % 4
    native, twin = _both(name, code, base, lo, lo + span)
    assert native == twin


@pytest.mark.parametrize("name", SCANNERS)
@settings(max_examples=200, deadline=None)
@given(code=st.binary(max_size=64), base=st.integers(-5, (1 << 33)), lo=st.integers(-5, 1 << 33))
def test_scanners_agree_on_bad_arguments(name: str, code: bytes, base: int, lo: int) -> None:
    native, twin = _both(name, code, base, lo, lo + 100)
    assert native == twin


def test_scanners_reject_bad_arguments_the_same_way() -> None:
    for name in SCANNERS:
        assert _both(name, b"\xe8\0\0\0\0", -1, 0, 10)[0] == ("ValueError", "rva out of range")
        assert _both(name, b"\xe8\0\0\0\0", -1, 0, 10)[1] == ("ValueError", "rva out of range")
        native, twin = _both(name, b"\0" * 8, 0xFFFFFFFC, 0, 10)
        assert native == twin and native[0] == "ValueError"
    native, twin = _both("scan_arm64_sites", b"\0" * 8, 2, 0, 10)
    assert native == twin == ("ValueError", "code_rva must be 4-aligned")


def test_scanners_accept_any_buffer() -> None:
    code = bytearray(b"\x90\xe8\x00\x00\x00\x00")
    for module in (_native, _fallback):
        assert module.scan_x64_sites(memoryview(code), 0x1000, 0, 0x2000) == (
            array("I", [0x1001]),
            array("I", [0x1006]),
            array("B", [1]),
        )


@pytest.mark.parametrize(
    "path",
    sorted(SAMPLES.glob("*/*/sample.dll")),
    ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}",
)
def test_scanners_agree_on_sample_code(path) -> None:  # type: ignore[no-untyped-def]
    image = load_image(path)
    name = "scan_x64_sites" if image.arch.name == "x64" else "scan_arm64_sites"
    for section in image.executable_sections:
        native = getattr(_native, name)(section.data, section.rva, 0, image.size_of_image)
        assert native[0], "a code section without a single reference site"
        assert native == getattr(_fallback, name)(section.data, section.rva, 0, image.size_of_image)


def _function_parts(
    path: Path, limit: int | None = None
) -> list[tuple[bytes, int, int, bytes, int]]:
    image = load_image(path)
    relocated = array("I", sorted(r.rva for r in image.relocations)).tobytes()
    parts = [
        (image.read(a, b - a), a, b, relocated, image.image_base)
        for f in image.functions
        for a, b in [(f.rva, f.end_rva)] + [(p.rva, p.rva + p.size) for p in f.fragments]
        if b > a
    ]
    if limit is not None and len(parts) > limit:
        parts = random.Random(str(path)).sample(parts, limit)
    return parts


X64_SAMPLES = sorted(SAMPLES.glob("x64*/*/sample.dll"))
X64_CORPUS = [p for _, arch, p in corpus_binaries() if arch == "x64"]


@pytest.mark.parametrize("path", X64_SAMPLES, ids=lambda p: "/".join(p.parts[-3:-1]))
def test_x64_normalisation_agrees_on_every_sample_function(path: Path) -> None:
    parts = _function_parts(path)
    assert len(parts) > 90
    for code, start, end, relocated, base in parts:
        native = _native.normalise_x64(code, start, start, end, relocated, base)
        twin = _fallback.normalise_x64(code, start, start, end, relocated, base)
        assert native == twin, hex(start)
        assert native[2] > 0


@pytest.mark.parametrize("path", X64_CORPUS, ids=lambda p: "/".join(p.parts[-2:]))
def test_x64_normalisation_agrees_on_corpus_functions(path: Path) -> None:
    for code, start, end, relocated, base in _function_parts(path, limit=300):
        native = _native.normalise_x64(code, start, start, end, relocated, base)
        assert native == _fallback.normalise_x64(code, start, start, end, relocated, base), hex(
            start
        )


def test_x64_normalisation_rejects_bad_arguments_the_same_way() -> None:
    for module in (_native, _fallback):
        with pytest.raises(ValueError, match="uint32"):
            module.normalise_x64(b"\xc3", 0x1000, 0x1000, 0x1001, b"\0\0\0", 0)
        with pytest.raises(ValueError, match="rva out of range"):
            module.normalise_x64(b"\xc3", -1, 0, 1, b"", 0)


# ARM64 normalisation -------------------------------------------------------------

# (fixed bits, their mask) of the word classes normalisation treats specially.
ARM64_CLASSES = (
    (0x14000000, 0xFC000000),  # B
    (0x94000000, 0xFC000000),  # BL
    (0x54000000, 0xFF000010),  # B.cond
    (0x34000000, 0x7E000000),  # CBZ / CBNZ
    (0x36000000, 0x7E000000),  # TBZ / TBNZ
    (0x10000000, 0x9F000000),  # ADR
    (0x90000000, 0x9F000000),  # ADRP
    (0x18000000, 0x3B000000),  # LDR (literal), PRFM
    (0x91000000, 0xFFC00000),  # ADD (immediate)
    (0x39000000, 0x3B000000),  # LDR / STR (unsigned immediate)
    (0x28000000, 0x3A000000),  # STP / LDP
    (0x38000000, 0x3A000000),  # loads and stores of one register, any addressing
    (0xAA0003E0, 0xFFE0FFE0),  # MOV (register), which copies a page
    (0xD61F0000, 0xFF9FFC1F),  # BR, BLR, RET
    (0xD4200000, 0xFFE0001F),  # BRK
)
# The classes whose immediate is a branch offset, and its field (shift, bits).
ARM64_BRANCHES = {
    0x14000000: (0, 26),
    0x94000000: (0, 26),
    0x54000000: (5, 19),
    0x34000000: (5, 19),
    0x36000000: (5, 14),
}


def _random_arm64_words(seed: int, chunks: int) -> list[int]:
    """Random words, mostly of a class normalisation handles, and ADRPs followed by
    words that use their register as a base; on few registers, so that the writes
    that end an ADRP chain meet it; branches that half the time land in the code, so
    that paths join. The bits come from a seeded generator: hypothesis' own integers
    lean to zero bits, which leave most of the decoding untried."""
    rng = random.Random(seed)
    words: list[int] = []
    for _ in range(chunks):
        chunk = []
        for _ in range(rng.randint(1, 4)):
            word = rng.getrandbits(32)
            fixed = None
            if rng.randrange(4):
                fixed, mask = rng.choice(ARM64_CLASSES)
                word = fixed | (word & ~mask & 0xFFFFFFFF)
            if rng.randrange(4):
                word = (word & ~0x3FF) | (rng.choice((1, 2, 31)) << 5) | rng.choice((1, 2, 31))
            if fixed in ARM64_BRANCHES and rng.randrange(2):  # into the code, mostly
                shift, bits = ARM64_BRANCHES[fixed]
                field = ((1 << bits) - 1) << shift
                word = word & ~field | (rng.randint(-chunks * 4, chunks * 4) << shift) & field
            chunk.append(word)
        if rng.randrange(2):
            base = rng.choice((1, 2, 31))
            adrp = 0x90000000 | (rng.getrandbits(32) & 0x60FFFFE0) | base
            chunk = [adrp] + [(w & ~(0x1F << 5)) | (base << 5) for w in chunk]
        words += chunk
    return words


def _assert_same_arm64(native: tuple, twin: tuple, code_rva: int) -> None:  # type: ignore[type-arg]
    """Equal results, or the first instruction (word or reference) where they part."""
    if native == twin:
        return
    assert native[2] == twin[2], "instruction counts differ"
    assert len(native[0]) == len(twin[0]), "lengths differ"
    for offset in range(0, len(native[0]), 4):
        a, b = native[0][offset : offset + 4], twin[0][offset : offset + 4]
        assert a == b, f"word at 0x{code_rva + offset:x}: {a.hex()} (C) != {b.hex()} (Python)"
    for a, b in zip(native[1], twin[1], strict=False):
        assert a == b, f"reference of 0x{a[0]:x}: {a} (C) != {b} (Python)"
    assert len(native[1]) == len(twin[1]), "reference counts differ"


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 1 << 64),
    chunks=st.integers(0, 48),
    tail=st.binary(max_size=3),
    base=RVA,
    lo=st.integers(-0x4000, 0x4000),
    span=st.integers(0, 0x8000),
    relocated=st.lists(st.integers(0, 0xFFFFFFFF), max_size=8),
    image_base=st.integers(0, (1 << 64) - 1),
    whole=st.booleans(),
)
def test_arm64_normalisation_agrees_on_random_code(
    seed: int,
    chunks: int,
    tail: bytes,
    base: int,
    lo: int,
    span: int,
    relocated: list[int],
    image_base: int,
    whole: bool,
) -> None:
    base -= base % 4
    words = _random_arm64_words(seed, chunks)
    code = struct.pack(f"<{len(words)}I", *words) + tail
    lo = max(0, base + lo)  # ranges around the code, so branches land on both sides
    if whole:  # the code is the part, as the fingerprint normalises it
        lo, span = base, len(code)
    fields = array("I", sorted(relocated)).tobytes()
    native, twin = _both("normalise_arm64", code, base, lo, lo + span, fields, image_base)
    assert native[0] == twin[0] == "ok", (native, twin)
    _assert_same_arm64(native[1], twin[1], base)  # type: ignore[arg-type]
    assert native[1][2] == len(words)  # type: ignore[index]


EDGES = (0, 1, 2, 3, 0xFFFFFFFC, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 1 << 63, 1 << 64)
ANY_INT = st.one_of(
    st.sampled_from(EDGES),
    st.sampled_from(EDGES).map(lambda v: -v - 1),
    st.integers(-(1 << 66), 1 << 66),
)


@settings(max_examples=300, deadline=None)
@given(
    code=st.binary(max_size=16),
    base=ANY_INT,
    lo=ANY_INT,
    hi=ANY_INT,
    relocated=st.binary(max_size=9),
    image_base=ANY_INT,
)
def test_arm64_normalisation_agrees_on_bad_arguments(
    code: bytes, base: int, lo: int, hi: int, relocated: bytes, image_base: int
) -> None:
    native, twin = _both("normalise_arm64", code, base, lo, hi, relocated, image_base)
    assert native == twin


def test_arm64_normalisation_rejects_bad_arguments_the_same_way() -> None:
    word = b"\x00\x00\x00\x94"
    for args, message in (
        ((word, 0x1000, 0x1000, 0x1004, b"\0\0\0", 0), "relocated must hold uint32 values"),
        ((word, -4, 0, 1, b"", 0), "rva out of range"),
        ((word, 0, 0, 1 << 64, b"", 0), "rva out of range"),
        ((word, 1 << 32, 0, 1, b"", 0), "rva out of range"),
        ((word, 0xFFFFFFFC + 1, 0, 1, b"", 0), "code extends past the 32-bit rva space"),
    ):
        assert _both("normalise_arm64", *args) == (("ValueError", message),) * 2
    for args in (("text", 0, 0, 1, b"", 0), (word, 0.0, 0, 1, b"", 0), (word, 0, 0, 1, None, 0)):
        native, twin = _both("normalise_arm64", *args)
        assert native[0] == twin[0] == "TypeError"
    for module in (_native, _fallback):  # any buffer; the last word of the RVA space
        assert module.normalise_arm64(bytearray(word), 0xFFFFFFFC, 0, 1, memoryview(b""), 0) == (
            word,
            [(0xFFFFFFFC, 1, 0xFFFFFFFC)],
            1,
        )


def test_arm64_adrp_takes_the_target_of_its_first_completion() -> None:
    # adrp x1, +1 page; add x2, x1, #0x10; ldr x3, [x1, #8]; str x4, [x1]; mov x1, #0
    code = struct.pack("<5I", 0xB0000001, 0x91004022, 0xF9400423, 0xF9000024, 0xD2800001)
    for module in (_native, _fallback):
        masked, references, count = module.normalise_arm64(code, 0x1004, 0x1004, 0x1018, b"", 0)
        assert count == 5
        assert references == [
            (0x1004, 6, 0x2010),
            (0x1008, 6, 0x2010),
            (0x100C, 6, 0x2008),
            (0x1010, 6, 0x2000),
        ]
        assert masked == struct.pack(
            "<5I", 0x90000001, 0x91000022, 0xF9400023, 0xF9000024, 0xD2800001
        )


ARM64_SAMPLES = sorted(SAMPLES.glob("arm64*/*/sample.dll"))
ARM64_CORPUS = [p for _, arch, p in corpus_binaries() if arch == "arm64"]


@pytest.mark.parametrize("path", ARM64_SAMPLES, ids=lambda p: "/".join(p.parts[-3:-1]))
def test_arm64_normalisation_agrees_on_every_sample_function(path: Path) -> None:
    parts = _function_parts(path)
    assert len(parts) > 90
    references = 0
    for code, start, end, relocated, base in parts:
        native = _native.normalise_arm64(code, start, start, end, relocated, base)
        twin = _fallback.normalise_arm64(code, start, start, end, relocated, base)
        _assert_same_arm64(native, twin, start)
        assert native[2] > 0
        references += len(native[1])
    assert references > len(parts)


@pytest.mark.parametrize("path", ARM64_CORPUS, ids=lambda p: "/".join(p.parts[-2:]))
def test_arm64_normalisation_agrees_on_every_corpus_function(path: Path) -> None:
    for code, start, end, relocated, base in _function_parts(path):
        native = _native.normalise_arm64(code, start, start, end, relocated, base)
        twin = _fallback.normalise_arm64(code, start, start, end, relocated, base)
        _assert_same_arm64(native, twin, start)
