"""The LZMA2 encoder with a preset dictionary: whatever it writes, liblzma (through the
stdlib) decodes to the input, after the dictionary."""

from __future__ import annotations

import lzma
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpatch.package import lzma2

from ..conftest import SAMPLES

SETTINGS = [(0, 0, 0), (3, 0, 2), (0, 2, 2), (1, 3, 4), (4, 0, 0)]


def round_trip(data: bytes, dictionary: bytes = b"", **options: int) -> bytes:
    stream = lzma2.compress(data, dictionary, **options)
    assert lzma2.unpacked_size(stream) == len(data)
    assert lzma2.decompress(stream, dictionary, len(data)) == data
    return stream


def text_like(rng: random.Random, size: int) -> bytes:
    words = [rng.randbytes(rng.randrange(1, 9)) for _ in range(40)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


@pytest.mark.parametrize("lc, lp, pb", SETTINGS)
def test_round_trips_for_every_setting(lc: int, lp: int, pb: int) -> None:
    rng = random.Random(lc * 100 + lp * 10 + pb)
    for size in (0, 1, 2, 3, 17, 300, 2000):
        round_trip(rng.randbytes(size), lc=lc, lp=lp, pb=pb)
        data = text_like(rng, size)
        round_trip(data, lc=lc, lp=lp, pb=pb)
        # the dictionary's length shifts every position-dependent context
        for extra in (1, 4097):
            dictionary = rng.randbytes(extra) + data[: size // 2]
            round_trip(data, dictionary, lc=lc, lp=lp, pb=pb)


def test_a_dictionary_is_used_and_its_chunks_follow_the_limits() -> None:
    rng = random.Random(7)
    old = text_like(rng, 150_000)  # several 64 KiB uncompressed chunks
    new = old[70_000:72_000] + rng.randbytes(50) + old[1000:3000]
    with_dictionary = round_trip(new, old)
    assert len(with_dictionary) < len(round_trip(new)) // 4
    assert lzma2.dictionary_chunks(old)[0] == 1  # the first one resets the dictionary
    assert with_dictionary[0] == 0xC0  # state reset and properties, dictionary kept
    assert round_trip(new)[0] == 0xE0


def test_only_the_searched_ranges_are_matched() -> None:
    rng = random.Random(8)
    old = rng.randbytes(4000)
    new = old[100:600] + old[3000:3500]
    everywhere = round_trip(new, old)
    narrow = lzma2.compress(new, old, searched=[(0, 700)])
    assert lzma2.decompress(narrow, old, len(new)) == new
    assert len(everywhere) < len(narrow) < len(round_trip(new))


def test_output_is_deterministic() -> None:
    data = (SAMPLES / "x64-clang" / "v2" / "sample.stripped.dll").read_bytes()[:6000]
    old = (SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll").read_bytes()
    first = round_trip(data, old, lc=0, lp=0, pb=0)
    assert lzma2.compress(data, old, lc=0, lp=0, pb=0) == first


def test_it_compresses_about_as_well_as_xz() -> None:
    data = (SAMPLES / "arm64-clang" / "v3" / "sample.stripped.dll").read_bytes()[:8000]
    ours = len(round_trip(data, lc=0, lp=2, pb=2))
    theirs = lzma.compress(
        data,
        format=lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA2, "preset": 9, "lc": 0, "lp": 2, "pb": 2}],
    )
    assert ours <= len(theirs) * 1.05


def test_small_chunk_limits_give_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lzma2, "CHUNK_UNPACKED", 600)
    monkeypatch.setattr(lzma2, "CHUNK_PACKED", 700)
    monkeypatch.setattr(lzma2, "_PACKED_RESERVE", 200)
    rng = random.Random(9)
    data = text_like(rng, 3000) + rng.randbytes(3000)
    stream = round_trip(data, window=16)
    chunks = lzma2._chunks(stream)
    assert len(chunks) > 5
    assert all(control == 0x80 for _, control, _ in chunks[1:])
    dictionary = rng.randbytes(100)
    stream = lzma2.compress(data, dictionary, window=16)
    assert lzma2.decompress(stream, dictionary, len(data)) == data


def test_split_finds_the_second_stream() -> None:
    first = round_trip(b"metadata " * 40)
    second = round_trip(b"region " * 30, b"dictionary")
    assert lzma2.split(first + second) == (first, second)
    assert lzma2.split(first) == (first, b"")


@pytest.mark.parametrize(
    "stream",
    [b"\x03", b"\x80\x00", b"\xe0\x00\x10\x00\x05\x5d\x00", b"\x01\x00\x10abc"],
)
def test_broken_framing_is_a_value_error(stream: bytes) -> None:
    with pytest.raises(ValueError):
        lzma2.unpacked_size(stream)
    with pytest.raises(ValueError):
        lzma2.split(stream)


def test_decoding_checks_size_and_content() -> None:
    data = b"some bytes to code, some bytes to code"
    stream = round_trip(data, b"the dictionary")
    for size in (len(data) - 1, len(data) + 1):
        with pytest.raises(ValueError):
            lzma2.decompress(stream, b"the dictionary", size)
    with pytest.raises(ValueError):
        lzma2.decompress(stream[:-3], b"the dictionary", len(data))
    with pytest.raises(ValueError):
        lzma2.decompress(stream + b"\x00", b"the dictionary", len(data))
    with pytest.raises(ValueError):
        lzma2.compress(data, lc=4, lp=1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=700),
    dictionary=st.binary(max_size=700),
    repeat=st.integers(min_value=0, max_value=4),
    setting=st.sampled_from(SETTINGS),
)
def test_any_input_round_trips(
    data: bytes, dictionary: bytes, repeat: int, setting: tuple[int, int, int]
) -> None:
    lc, lp, pb = setting
    round_trip(data * repeat + dictionary[:50], dictionary, lc=lc, lp=lp, pb=pb)


def test_several_settings_in_one_call_code_as_one_call_each() -> None:
    old = (SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll").read_bytes()
    new = (SAMPLES / "x64-clang" / "v3" / "sample.stripped.dll").read_bytes()
    data = new[2000:14000]
    for searched in (None, [(0, len(old) // 3), (len(old) // 2, len(old))]):
        for chosen in ([(0, 0, 0), (3, 0, 0), (0, 0, 1)], SETTINGS, [(3, 0, 2)] * 2):
            streams = lzma2.compress_settings(data, old, chosen, searched=searched)
            assert streams == [
                lzma2.compress(data, old, lc=lc, lp=lp, pb=pb, searched=searched)
                for lc, lp, pb in chosen
            ]
            assert lzma2.compress_best(data, old, chosen, searched=searched) == min(
                streams, key=len
            )


def test_the_best_setting_is_the_shortest_and_the_first_of_equals() -> None:
    # sizes alike for every setting: the first one wins, as min() over a list does
    assert lzma2.compress_best(b"", b"", [(3, 0, 0), (0, 0, 0)]) == b""
    data = bytes(range(256)) * 4
    streams = lzma2.compress_settings(data, b"", [(0, 0, 0), (0, 0, 0), (4, 0, 0)])
    assert streams[0] == streams[1]
    best = lzma2.compress_best(data, b"", [(0, 0, 0), (0, 0, 0), (4, 0, 0)])
    assert best == min(streams, key=len)
    assert lzma2.decompress(best, b"", len(data)) == data
