"""The C core's LZMA2 encoder writes the bytes of its pure-Python twin, for the same
arguments, and what it writes decodes (through the stdlib) to its input."""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpatch import _backend, _fallback, _native
from hpatch.package import build_package, encode_package, lzma2
from hpatch.package.format.dictionary import compress_metadata

from ..conftest import SAMPLES
from ..diff.samples import sample_diff
from .packages import HOTPATCHABLE_PAIRS, OPTIONS

DEFAULTS = {"nice": 128, "depth": 48, "window": 2048}
LIMITS = (lzma2.CHUNK_UNPACKED, lzma2.CHUNK_PACKED, lzma2._PACKED_RESERVE)
BUILDS = sorted(path.name for path in SAMPLES.iterdir() if (path / "v1").is_dir())


def _call(module: object, *args: object, name: str = "lzma2_compress") -> tuple[str, object]:
    try:
        return "ok", getattr(module, name)(*args)
    except Exception as exc:  # the error's parity is what is tested
        return type(exc).__name__, str(exc)


def both(
    data: bytes,
    dictionary: bytes = b"",
    lc: int = 3,
    lp: int = 0,
    pb: int = 2,
    searched: list[tuple[int, int]] | None = None,
    nice: int = 128,
    depth: int = 48,
    window: int = 2048,
    limits: tuple[int, int, int] = LIMITS,
) -> bytes:
    """The native output, after checking the twin gives the same and that it decodes."""
    args = (data, dictionary, lc, lp, pb, searched, nice, depth, window, *limits)
    native, twin = _call(_native, *args), _call(_fallback, *args)
    assert native == twin
    assert native[0] == "ok", native
    stream = native[1]
    assert isinstance(stream, bytes)
    assert lzma2.unpacked_size(stream) == len(data)
    assert lzma2.decompress(stream, dictionary, len(data)) == data
    return stream


def both_settings(
    data: bytes,
    dictionary: bytes,
    chosen: list[tuple[int, int, int]],
    searched: list[tuple[int, int]] | None = None,
    nice: int = 128,
    depth: int = 48,
    window: int = 2048,
    limits: tuple[int, int, int] = LIMITS,
) -> list[bytes]:
    """The native streams of ``lzma2_compress_settings``, after checking the twin gives
    the same, and that they are the streams of one ``lzma2_compress`` call a setting."""
    args = (data, dictionary, chosen, searched, nice, depth, window, *limits)
    name = "lzma2_compress_settings"
    native, twin = _call(_native, *args, name=name), _call(_fallback, *args, name=name)
    assert native == twin
    assert native[0] == "ok", native
    streams = native[1]
    assert isinstance(streams, list) and len(streams) == len(chosen)
    for (lc, lp, pb), stream in zip(chosen, streams, strict=True):
        assert stream == both(data, dictionary, lc, lp, pb, searched, nice, depth, window, limits)
    return streams


def repetitive(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randrange(1, 12)) for _ in range(rng.randrange(1, 40))]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


SETTING = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)).filter(
    lambda s: s[0] + s[1] <= 4
)


def generated(
    rng: random.Random, size: int, kind: str, dictionary_size: int
) -> tuple[bytes, bytes]:
    """Data of ``kind`` and a dictionary sharing pieces of it (far and rep matches)."""
    if kind == "random":
        data = rng.randbytes(size)
    elif kind == "repetitive":
        data = repetitive(rng, size)
    else:
        data = bytes(rng.choice(b"\0\0\0\1\xff") for _ in range(size))
    return data, (rng.randbytes(dictionary_size // 2) + data)[:dictionary_size]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1 << 32),
    size=st.integers(0, 3000),
    kind=st.sampled_from(["random", "repetitive", "sparse"]),
    dictionary_size=st.sampled_from([0, 1, 2, 3, 100, 5000]),
    setting=SETTING,
    nice=st.sampled_from([2, 3, 16, 128, 273, 400]),
    depth=st.sampled_from([0, 1, 4, 48]),
    window=st.sampled_from([1, 2, 16, 2048]),
    ranges=st.none() | st.lists(st.tuples(st.integers(-20, 6000), st.integers(-20, 6000))),
)
def test_the_cores_agree_on_any_input(
    seed: int,
    size: int,
    kind: str,
    dictionary_size: int,
    setting: tuple[int, int, int],
    nice: int,
    depth: int,
    window: int,
    ranges: list[tuple[int, int]] | None,
) -> None:
    data, dictionary = generated(random.Random(seed), size, kind, dictionary_size)
    lc, lp, pb = setting
    both(data, dictionary, lc, lp, pb, ranges, nice, depth, window)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1 << 32),
    size=st.integers(0, 3000),
    kind=st.sampled_from(["random", "repetitive", "sparse"]),
    dictionary_size=st.sampled_from([0, 1, 3, 100, 5000]),
    chosen=st.lists(SETTING, min_size=1, max_size=4),
    nice=st.sampled_from([2, 3, 16, 128, 273]),
    depth=st.sampled_from([0, 1, 4, 48]),
    window=st.sampled_from([1, 16, 2048]),
    ranges=st.none() | st.lists(st.tuples(st.integers(-20, 6000), st.integers(-20, 6000))),
    small_chunks=st.booleans(),
)
def test_several_settings_code_as_one_call_each_on_any_input(
    seed: int,
    size: int,
    kind: str,
    dictionary_size: int,
    chosen: list[tuple[int, int, int]],
    nice: int,
    depth: int,
    window: int,
    ranges: list[tuple[int, int]] | None,
    small_chunks: bool,
) -> None:
    rng = random.Random(seed)
    data, dictionary = generated(rng, size, kind, dictionary_size)
    limits = (window + 300 + rng.randrange(1000), 300 + rng.randrange(700), rng.randrange(250))
    both_settings(
        data, dictionary, chosen, ranges, nice, depth, window, limits if small_chunks else LIMITS
    )


def test_the_package_settings_code_the_samples_alike() -> None:
    for build in BUILDS:
        old = (SAMPLES / build / "v1" / "sample.stripped.dll").read_bytes()
        new = (SAMPLES / build / "v3" / "sample.stripped.dll").read_bytes()
        chosen = [(0, 0, 0), (3, 0, 0), (0, 0, 1)]
        streams = both_settings(new[:12000], old, chosen, [(0, len(old) // 2)])
        assert len(set(streams)) > 1  # the settings do code differently


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1 << 32),
    unpacked=st.integers(274 + 16, 2000),
    packed=st.integers(300, 3000),
    reserve=st.integers(0, 250),
)
def test_the_cores_cut_chunks_alike(seed: int, unpacked: int, packed: int, reserve: int) -> None:
    rng = random.Random(seed)
    data = repetitive(rng, 2500) + rng.randbytes(2500)
    stream = both(data, rng.randbytes(300), window=16, limits=(unpacked, packed, reserve))
    assert len(lzma2._chunks(stream)) > 2


def test_chunks_over_2_mib_unpacked_are_cut_alike() -> None:
    rng = random.Random(21)
    data = rng.randbytes(4096) * (2300 * 1024 // 4096) + b"tail"
    stream = both(data, b"", 0, 0, 0)
    chunks = lzma2._chunks(stream)
    assert len(chunks) == 2
    assert all(size <= lzma2.CHUNK_UNPACKED for _, _, size in chunks)


def test_chunks_over_64_kib_packed_are_cut_alike() -> None:
    rng = random.Random(22)
    data = rng.randbytes(68 * 1024)  # incompressible: more packed bytes than one chunk holds
    stream = both(data, rng.randbytes(1000), 0, 2, 2)
    assert len(lzma2._chunks(stream)) >= 2


def test_the_samples_code_alike_against_their_baselines() -> None:
    for build in BUILDS:
        old = (SAMPLES / build / "v1" / "sample.stripped.dll").read_bytes()
        new = (SAMPLES / build / "v3" / "sample.stripped.dll").read_bytes()
        ours = both(new[:20000], old, 0, 0, 0, [(0, len(old) // 2)])
        assert len(ours) < 20000 // 2


def _bad_arguments() -> Iterator[tuple[object, ...]]:
    data, dictionary = b"some bytes, some bytes", b"a dictionary"
    good = (data, dictionary, 3, 0, 2, None, 128, 48, 2048, *LIMITS)
    changes = {
        2: [-1, 5, 1 << 70, "3"],
        3: [-1, 5, 2.0],
        4: [-1, 5],
        6: [0, 1, -(1 << 70)],
        7: [-1],
        8: [0, -5, lzma2.CHUNK_UNPACKED],
        9: [lzma2.CHUNK_UNPACKED + 1, 2048 + 272, -(1 << 70)],
        10: [lzma2.CHUNK_PACKED + 1, 4, -1],
        11: [-1, lzma2.CHUNK_PACKED, 1 << 70],
    }
    for index, values in changes.items():
        for value in values:
            args = list(good)
            args[index] = value
            yield tuple(args)
    yield (data, dictionary, 4, 1, 0, None, 128, 48, 2048, *LIMITS)
    yield ("text", dictionary, 3, 0, 2, None, 128, 48, 2048, *LIMITS)
    yield (data, 7, 3, 0, 2, None, 128, 48, 2048, *LIMITS)
    yield (data, dictionary, 3, 0, 2, [(0, "x")], 128, 48, 2048, *LIMITS)


@pytest.mark.parametrize("args", list(_bad_arguments()), ids=repr)
def test_the_cores_refuse_bad_arguments_alike(args: tuple[object, ...]) -> None:
    native, twin = _call(_native, *args), _call(_fallback, *args)
    assert native[0] in ("ValueError", "TypeError")
    assert native[0] == twin[0]
    if native[0] == "ValueError":
        assert native == twin


def _bad_settings_arguments() -> Iterator[tuple[object, ...]]:
    # every bad argument of one setting, as the first, a later or the only setting
    for args in _bad_arguments():
        data, dictionary, lc, lp, pb, *rest = args
        for chosen in ([(lc, lp, pb)], [(0, 0, 0), (lc, lp, pb)]):
            yield (data, dictionary, chosen, *rest)
    good = ([(0, 0, 0)], None, 128, 48, 2048, *LIMITS)
    for chosen in ([], [(0, 0)], [(0, 0, 0, 0)], [(0, 0, 0), 5], [(0, "0", 0)], 7, None):
        yield (b"data", b"", chosen, *good[1:])
    yield (b"data", b"", [(0, 0, 0), (9, 0, 0)], [(0, 1, 2)], *good[2:])


@pytest.mark.parametrize("args", list(_bad_settings_arguments()), ids=repr)
def test_the_cores_refuse_bad_settings_arguments_alike(args: tuple[object, ...]) -> None:
    name = "lzma2_compress_settings"
    native, twin = _call(_native, *args, name=name), _call(_fallback, *args, name=name)
    assert native[0] in ("ValueError", "TypeError")
    assert native[0] == twin[0]
    if native[0] == "ValueError":
        assert native == twin


def test_any_buffer_and_any_sequence_of_ranges_are_taken() -> None:
    data = bytearray(b"abcabcabcabc" * 20)
    expected = both(bytes(data), b"abc" * 10, searched=[(0, 30)])
    for module in (_native, _fallback):
        out = module.lzma2_compress(
            memoryview(data),
            bytearray(b"abc" * 10),
            3,
            0,
            2,
            iter([[0, 30]]),
            128,
            48,
            2048,
            *LIMITS,
        )
        assert out == expected


def test_the_signatures_are_the_same() -> None:
    def shape(function: object) -> list[tuple[str, inspect._ParameterKind]]:
        return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]

    native = shape(_native.lzma2_compress)
    assert native == shape(_fallback.lzma2_compress)
    assert native[:6] == [
        (name, inspect.Parameter.POSITIONAL_ONLY)
        for name in ("data", "dictionary", "lc", "lp", "pb", "searched")
    ]
    several = shape(_native.lzma2_compress_settings)
    assert several == shape(_fallback.lzma2_compress_settings)
    assert several == [*native[:2], ("settings", inspect.Parameter.POSITIONAL_ONLY), *native[5:]]


def test_compress_uses_the_chosen_core(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def spy(*args: object) -> bytes:
        calls.append(len(args))
        return b"coded"

    monkeypatch.setattr(_backend.core, "lzma2_compress", spy)
    assert lzma2.compress(b"data", b"dictionary", lc=0, lp=0, pb=0) == b"coded"
    assert calls == [12]


def test_compress_settings_uses_the_chosen_core(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    def spy(*args: object) -> list[bytes]:
        calls.append(args)
        return [b"longer", b"short", b"equal"]

    monkeypatch.setattr(_backend.core, "lzma2_compress_settings", spy)
    chosen = [(0, 0, 0), (3, 0, 0), (0, 0, 1)]
    assert lzma2.compress_best(b"data", b"dictionary", chosen) == b"short"
    assert len(calls) == 1 and len(calls[0]) == 10 and calls[0][2] == chosen


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("pair", HOTPATCHABLE_PAIRS[:2], ids="->".join)
def test_both_cores_build_the_same_package(
    build: str, pair: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    diff = sample_diff(build, *pair)
    encoded = []
    for module in (_native, _fallback):
        monkeypatch.setattr(_backend.core, "lzma2_compress", module.lzma2_compress)
        several = module.lzma2_compress_settings
        monkeypatch.setattr(_backend.core, "lzma2_compress_settings", several)
        compress_metadata.cache_clear()
        encoded.append(encode_package(build_package(diff, OPTIONS)))
    compress_metadata.cache_clear()
    assert encoded[0] == encoded[1]
    assert len(encoded[0]) > 100


@pytest.mark.parametrize("several", [False, True])
def test_the_c_core_lets_other_threads_run_while_it_codes(several: bool) -> None:
    rng = random.Random(23)
    data = rng.randbytes(256 * 1024)  # incompressible: a long parse, some 100 ms
    span: list[float] = []

    def code() -> None:
        span.append(time.monotonic())
        if several:
            chosen = [(3, 0, 2), (0, 0, 0)]
            _native.lzma2_compress_settings(data, b"", chosen, None, 128, 48, 2048, *LIMITS)
        else:
            _native.lzma2_compress(data, b"", 3, 0, 2, None, 128, 48, 2048, *LIMITS)
        span.append(time.monotonic())

    worker = threading.Thread(target=code)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.monotonic())
        time.sleep(0.001)
    worker.join()
    start, end = span
    # while the GIL is held through the call, this thread cannot take a single stamp
    # in its middle half
    quarter = (end - start) / 4
    assert any(start + quarter < t < end - quarter for t in stamps)
