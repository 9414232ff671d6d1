"""The C core's discovery loops without the GIL: a long walk, run of padding or scan
(past what runs with the GIL held) gives the twin's result, and two threads walking at
once give what one gives walking alone."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from hpatch import _fallback, _native
from hpatch.arch.x64 import X64

ARCH = X64()
#: The padding the core skips with the GIL held before it lets go (PADDING_WITH_GIL),
#: and the code it scans with it held (SCAN_WITH_GIL).
HELD_BYTES = 65536


def _filler(size: int, seed: int) -> bytes:
    """``size`` bytes of x64 padding of every kind, multi-byte nops across any boundary."""
    pieces = [b"\xcc", b"\x90", b"\x00", b"\x66\x90", b"\x2e\x66\x90", b"\x0f\x1f\x00"]
    pieces += [b"\x0f\x1f\x44\x00\x00", b"\x66\x0f\x1f\x84\x00\x00\x00\x00\x00"]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(pieces)
    return bytes(out)


@pytest.mark.parametrize("seed", range(6))
def test_long_padding_agrees_with_the_twin(seed: int) -> None:
    filler = _filler(HELD_BYTES + 4096 * seed + 7, seed)
    for tail in (b"\xc3", b"\x0f\x1f", b"\x66", b""):
        data = filler + tail
        for offset in (0, 1, 5, len(data) - 1):
            native = _native.x64_padding_length(data, offset)
            assert native == _fallback.x64_padding_length(data, offset), (tail, offset)


def test_long_padding_runs_to_its_end() -> None:
    data = b"\xcc" * (3 * HELD_BYTES) + b"\xc3"
    assert _native.x64_padding_length(data, 0) == 3 * HELD_BYTES


def _long_function(blocks: int, seed: int) -> bytes:
    """A function of ``blocks`` blocks of straight-line code joined by forward
    conditional branches (thousands of instructions: a walk past the GIL's share)."""
    rng = random.Random(seed)
    body = [b"\x48\x89\xe5", b"\x90", b"\x48\x8d\x05\x00\x10\x00\x00", b"\xc5\xfc\x28\xc1"]
    body += [b"\x66\x0f\x1f\x44\x00\x00", b"\x48\x83\xc0\x01"]
    code = bytearray()
    for _ in range(blocks):
        for _ in range(rng.randrange(4, 12)):
            code += rng.choice(body)
        code += b"\x74\x02\x90\x90"  # je over two nops
    return bytes(code + b"\xc3" + b"\xcc" * 16)


@pytest.mark.parametrize("blocks", [10, 400, 1500])
def test_long_walks_agree_with_the_twin(blocks: int) -> None:
    code = _long_function(blocks, blocks)
    decoder = ARCH._extent_decoder
    native = _native.x64_code_extent(code, 0x1000, [], decoder)
    assert native == _fallback.x64_code_extent(code, 0x1000, [], decoder)
    assert native == 0x1000 + len(code) - 16


@pytest.mark.parametrize("name", ["scan_x64_sites", "scan_arm64_sites"])
def test_long_scans_agree_with_the_twin(name: str) -> None:
    rng = random.Random(name)
    code = bytes(rng.randrange(256) for _ in range(HELD_BYTES + 4096))
    assert getattr(_native, name)(code, 0x1000, 0, 1 << 32) == getattr(_fallback, name)(
        code, 0x1000, 0, 1 << 32
    )


def _at_once(work: Callable[[int], object], count: int) -> list[object]:
    """work(0..count-1), each in a thread of its own, all started together."""
    results: list[object] = [None] * count
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = work(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _extents(arch: X64, codes: list[tuple[bytes, int]]) -> list[int | None]:
    extents = []
    for code, start in codes:

        def read(rva: int, size: int, code: bytes = code, start: int = start) -> bytes:
            return code[rva - start : rva - start + size]

        extents.append(arch.code_extent(read, start, start + len(code)))
    return extents


@pytest.mark.parametrize("shared", [False, True], ids=["an arch each", "one arch"])
def test_walks_in_two_threads_give_what_one_gives(shared: bool) -> None:
    """Each thread decodes through a capstone handle of its own, the arch shared or not."""
    codes = [(_long_function(blocks, blocks), 0x1000 + blocks) for blocks in range(200, 260)]
    alone = _extents(X64(), codes)
    arches = [ARCH, ARCH] if shared else [X64(), X64()]
    assert _at_once(lambda index: _extents(arches[index], codes), 2) == [alone, alone]


def test_the_walks_handles_are_one_per_thread() -> None:
    here = ARCH._extent_decoder
    assert ARCH._extent_decoder == here
    there = _at_once(lambda _: ARCH._extent_decoder, 2)
    assert here[0] not in (there[0][0], there[1][0])  # type: ignore[index]
    assert there[0][0] != there[1][0]  # type: ignore[index]


def _round(seed: int) -> tuple[Any, ...]:
    """gap_evidence's arguments for a round over 20,000 references in 300 ranges, its
    entry references checked by a Python function (which needs the GIL back)."""
    rng = random.Random(seed)
    edges = sorted(rng.sample(range(0, 1 << 22, 16), 600))
    starts, ends = edges[0::2], edges[1::2]
    rows = sorted(
        (rng.randrange(1 << 22), rng.randrange(1 << 22), rng.choice([1, 2, 4, 8]))
        for _ in range(20000)
    )
    static = sorted(set(rng.sample(range(1 << 22), 3000)))
    return (
        static,
        [rng.choice([1, 16, 32]) for _ in static],
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        starts,
        ends,
        (1, 64, 128, 1 | 8),
        lambda start, end, site: (start ^ end ^ site) % 3 == 0,
    )


@pytest.mark.parametrize("seed", range(3))
def test_gap_evidence_in_two_threads_gives_what_one_gives(seed: int) -> None:
    args = _round(seed)
    alone = _native.gap_evidence(*args)
    assert alone == _fallback.gap_evidence(*args)
    assert _at_once(lambda _: _native.gap_evidence(*args), 2) == [alone, alone]
