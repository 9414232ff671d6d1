"""The C extension and its Python twin give identical results and errors."""

from __future__ import annotations

import random
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
        assert module.scan_x64_sites(memoryview(code), 0x1000, 0, 0x2000) == [(0x1001, 0x1006, 1)]


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
        assert native, "a code section without a single reference site"
        assert native == getattr(_fallback, name)(section.data, section.rva, 0, image.size_of_image)


def _x64_parts(path: Path, limit: int | None = None) -> list[tuple[bytes, int, int, bytes, int]]:
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
    parts = _x64_parts(path)
    assert len(parts) > 90
    for code, start, end, relocated, base in parts:
        native = _native.normalise_x64(code, start, start, end, relocated, base)
        twin = _fallback.normalise_x64(code, start, start, end, relocated, base)
        assert native == twin, hex(start)
        assert native[2] > 0


@pytest.mark.parametrize("path", X64_CORPUS, ids=lambda p: "/".join(p.parts[-2:]))
def test_x64_normalisation_agrees_on_corpus_functions(path: Path) -> None:
    for code, start, end, relocated, base in _x64_parts(path, limit=300):
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
