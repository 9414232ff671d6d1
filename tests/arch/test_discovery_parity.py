"""Discovery's C loops and their Python twins give identical results and errors."""

from __future__ import annotations

import inspect
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpatch import _fallback, _native
from hpatch.arch.x64 import X64
from hpatch.image import PEImage, load_image

from ..conftest import SAMPLES, corpus_binaries

#: The decoder's capstone handle lives as long as the X64 object that opened it.
ARCH = X64()
DECODER = ARCH._extent_decoder
RVA = st.integers(min_value=0, max_value=0xFFFF0000)
#: Instructions the walk turns on, and prefixes that change what a byte means.
PIECES = [
    b"\xc3",
    b"\xcc",
    b"\xf3\xc3",
    b"\xc2\x08\x00",
    b"\x0f\x0b",
    b"\xf4",
    b"\xeb\x02",
    b"\xeb\xfe",
    b"\x74\x03",
    b"\xe3\x01",
    b"\xe2\xfa",
    b"\xe9\x01\x00\x00\x00",
    b"\x0f\x84\x02\x00\x00\x00",
    b"\xff\xe0",
    b"\xff\x25\x00\x00\x00\x00",
    b"\x3e\xff\xe0",
    b"\xf2\xe9\x00\x00\x00\x00",
    b"\x66\xe9\x00\x00\x00\x00",
    b"\x48\x8d\x05\x00\x10\x00\x00",
    b"\x48\x89\xe5",
    b"\xc5\xfc\x28\xc1",
    b"\xc4\xe2\x7d\x18\x05\x00\x00\x00\x00",
    b"\x62\xf1\x7c\x48\x28\xc1",
    b"\x66\x0f\x1f\x44\x00\x00",
    b"\x90",
    b"\x66",
    b"\xf3",
    b"\x48",
    b"\x0f",
]
CODE = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.lists(
        st.one_of(st.sampled_from(PIECES), st.binary(min_size=1, max_size=16)),
        min_size=1,
        max_size=40,
    ).map(b"".join),
)


def _both(name: str, *args: object) -> tuple[object, object]:
    outcomes = []
    for module in (_native, _fallback):
        try:
            outcomes.append(("ok", getattr(module, name)(*args)))
        except Exception as exc:  # parity of the error is what is tested
            outcomes.append((type(exc).__name__, str(exc)))
    return outcomes[0], outcomes[1]


def test_signature_is_the_twins() -> None:
    def shape(function: object) -> list[tuple[str, object]]:
        parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        return [(p.name, p.kind) for p in parameters]

    assert shape(_native.x64_code_extent) == shape(_fallback.x64_code_extent)


@settings(max_examples=400, deadline=None)
@given(code=CODE, start=RVA, roots=st.lists(st.integers(0, 320), max_size=6))
def test_code_extents_agree_on_random_code(code: bytes, start: int, roots: list[int]) -> None:
    native, twin = _both("x64_code_extent", code, start, [start + r for r in roots], DECODER)
    assert native == twin


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"\x66", b"\xf3", b"\xf2"]),
    rex=st.sampled_from([b""] + [bytes([0x40 | r]) for r in range(16)]),
    escape=st.sampled_from([b"", b"\x0f", b"\x0f\x38", b"\x0f\x3a", b"\xc5", b"\xc4"]),
    rest=st.binary(min_size=15, max_size=15),
    start=st.sampled_from([0, 3, 0x1000, 0x7FFFF000]),
)
def test_code_extents_agree_on_every_opcode_shape(
    prefix: bytes, rex: bytes, escape: bytes, rest: bytes, start: int
) -> None:
    """One instruction of any shape the C core lays out itself, then a return."""
    code = prefix + rex + escape + rest + b"\xc3"
    native, twin = _both("x64_code_extent", code, start, [], DECODER)
    assert native == twin


def _starts(path: Path, limit: int) -> tuple[PEImage, list[tuple[int, int]]]:
    """(image, [(start, bound)]): each function's start, and the next one's."""
    image = load_image(path)
    starts = sorted({f.rva for f in image.functions})
    pairs = [(a, b) for a, b in itertools.pairwise(starts) if image.section_at(a) is not None]
    if len(pairs) > limit:
        pairs = random.Random(str(path)).sample(pairs, limit)
    return image, pairs


def _agree_on(path: Path, limit: int) -> None:
    image, pairs = _starts(path, limit)
    for start, bound in pairs:
        code = image.read(start, min(bound - start, 1 << 20))
        native = _native.x64_code_extent(code, start, [], DECODER)
        assert native == _fallback.x64_code_extent(code, start, [], DECODER), hex(start)


@pytest.mark.parametrize(
    "path", sorted(SAMPLES.glob("x64*/*/sample.dll")), ids=lambda p: "/".join(p.parts[-3:-1])
)
def test_code_extents_agree_on_sample_functions(path: Path) -> None:
    _agree_on(path, 400)


@pytest.mark.parametrize(
    "path",
    [p for _, arch, p in corpus_binaries() if arch == "x64"],
    ids=lambda p: "/".join(p.parts[-2:]),
)
def test_code_extents_agree_on_corpus_functions(path: Path) -> None:
    _agree_on(path, 300)


def test_code_extents_reject_bad_arguments_the_same_way() -> None:
    for args in (
        (b"", 0x1000, [], DECODER),
        (b"\xc3", -1, [], DECODER),
        (b"\xc3", 1 << 32, [], DECODER),
        (b"\xc3", 0x1000, [], (1, 2, 3)),
        (b"\xc3", 0x1000, [], (0, 0, 0, 0, 0, 0, 0)),
        (b"\xc3", 0x1000, ["x"], DECODER),
        (b"\xc3", 0x1000, 5, DECODER),
        ("text", 0x1000, [], DECODER),
    ):
        native, twin = _both("x64_code_extent", *args)
        assert native[0] == twin[0] != "ok", args


ENTRY_BITS = (1 << 1, 1 << 9, 1 << 10, (1 << 1) | (1 << 3))


@st.composite
def _evidence_inputs(draw: st.DrawFn) -> tuple[object, ...]:
    """Sorted disjoint ranges, references into and around them, and a found map."""
    cuts = sorted(set(draw(st.lists(st.integers(0, 4000), max_size=24))))
    if len(cuts) % 2:
        cuts.pop()
    starts, ends = cuts[0::2], cuts[1::2]
    rva = st.integers(0, 4100)
    bit = st.sampled_from([1 << 1, 1 << 2, 1 << 3, 1 << 4])
    incoming = draw(st.lists(st.tuples(rva, rva, bit), max_size=60))
    found = draw(st.dictionaries(rva, st.integers(0, 1 << 12), max_size=8))
    entry_bits = draw(st.sampled_from([None, ENTRY_BITS]))
    return found, incoming, starts, ends, entry_bits


@settings(max_examples=400, deadline=None)
@given(inputs=_evidence_inputs())
def test_reference_evidence_agrees(inputs: tuple[object, ...]) -> None:
    found, incoming, starts, ends, entry_bits = inputs
    assert isinstance(found, dict)
    results = []
    for module in (_native, _fallback):
        mine = dict(found)
        unchecked = module.reference_evidence(mine, incoming, starts, ends, entry_bits)
        results.append((mine, list(unchecked.items())))
    assert results[0] == results[1]


def test_reference_evidence_rejects_bad_arguments_the_same_way() -> None:
    for args in (
        ([], [], [], [], None),
        ({}, [(1, 2)], [0], [4], None),
        ({}, [(1, 2, "x")], [0], [4], None),
        ({}, [], [0], [], None),
        ({}, [], [0], [4], (1, 2)),
        ({}, 5, [0], [4], None),
    ):
        native, twin = _both("reference_evidence", *args)
        assert native[0] == twin[0] != "ok", args


def test_reference_evidence_signature_is_the_twins() -> None:
    names = [
        [(p.name, p.kind) for p in inspect.signature(f).parameters.values()]
        for f in (_native.reference_evidence, _fallback.reference_evidence)
    ]
    assert names[0] == names[1]


PADDING = st.lists(
    st.sampled_from([0xCC, 0x90, 0x00, 0x66, 0x2E, 0x0F, 0x1F, 0x44, 0x84, 0x40, 0x80, 0x05, 0xC3]),
    max_size=24,
).map(bytes)


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(PADDING, st.binary(max_size=24)), offset=st.integers(-2, 30))
def test_padding_lengths_agree(data: bytes, offset: int) -> None:
    native, twin = _both("x64_padding_length", data, offset)
    assert native == twin


def test_padding_length_takes_any_buffer() -> None:
    for module in (_native, _fallback):
        assert module.x64_padding_length(memoryview(b"\xc3\x66\x90\x0f\x1f\x00\xcc")[1:], 0) == 6
