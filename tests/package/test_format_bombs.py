"""Package bombs: a few hundred bytes that claim a million records cost a reader next
to nothing, the signature is checked over the raw bytes before any decoding, and what a
package may make a reader decode follows from the bytes it holds."""

from __future__ import annotations

import hashlib
import lzma
import random
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.errors import PackageFormatError
from hpatch.package import decode_package, encode_package, lzma2
from hpatch.package import envelope as envelope_module
from hpatch.package.envelope import SignatureRefused, check_signature, read_trusted
from hpatch.package.format import (
    EXPANSION_FLOOR,
    HEADER,
    MAGIC,
    MAX_EXPANSION,
    open_envelope,
    signed_message,
)
from hpatch.package.format.wire import Writer
from hpatch.package.model import FORMAT_VERSION, Flag, FunctionStatus
from hpatch.package.signing import SignatureStatus, TrustStore, key_id

from ..conftest import BUILDS
from .packages import HOTPATCHABLE_PAIRS, sample_package, signing_key

T = TypeVar("T")

_ADDED_AT_ENTRY_ONE_PART = 2 | 0x20 | 0x40  # function head: ADDED, entry at new RVA, one part


def _metadata(
    count: int, name: Callable[[int], str], size: int = 1, whole_image: bool = False
) -> bytes:
    """Metadata of an AMD64 package of ``count`` added functions of ``size`` bytes, each
    named ``name(index)``, canonical, with nothing else in it; its region is coded
    against nothing, or with ``whole_image`` against the whole 64 KiB baseline."""
    out = Writer()
    out.u8(1)  # AMD64
    out.string("bomb.dll")
    out.u32(0)
    out.uv(0x10 << 1)  # SizeOfImage 64 KiB, scaled by 4 KiB
    out.uv(0)
    out.uv(0x18000 << 1)  # image base 0x180000000, scaled by 64 KiB
    out.raw(bytes(32 + 8))  # baseline and target digests
    out.uv(1)  # sequence
    out.uv(0)  # no supersedes
    for _ in range(3):
        out.string("")
    out.uv(0)  # no prerequisites
    out.uv(0)
    out.uv(((count * size + 0xFFF) >> 12) << 1)  # region size
    out.u8(4)  # alignment 16
    if whole_image:
        out.u8(0x3 | 0x8)  # code blobs and tables implied, the whole image the dictionary
    else:
        out.u8(0x3)
        out.uv(0)  # no dictionary range
    out.uv(0)  # no listed blob
    out.uv(count)
    for index in range(count):
        out.u8(_ADDED_AT_ENTRY_ONE_PART)
        out.uv(1)
        out.string(name(index))
        out.sv(0)
        out.uv(size)
        out.uv(0)
    for _ in range(4):  # imports, new imports, other fixups, unwind records
        out.uv(0)
    return bytes(out.out)


def _seal(body: bytes, key: Ed25519PrivateKey | None = None) -> bytes:
    flags = Flag.SIGNED if key is not None else 0
    message = HEADER.pack(MAGIC, FORMAT_VERSION, flags) + body
    data = message + hashlib.sha256(message).digest()
    if key is not None:
        data += key_id(key.public_key()) + key.sign(message)
    return data


def _lzma2(plain: bytes) -> bytes:
    """LZMA2 chunks coding ``plain``, without the end marker, the first chunk resetting
    the dictionary and setting properties, as a stream's must: the stdlib's encoder,
    quick on megabytes, for what it compresses."""
    if len(plain) < 1 << 12:
        return lzma2.compress(plain, b"", lc=0, lp=0, pb=0)
    coded = lzma.compress(plain, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert coded[0] >= 0xE0 and coded[-1] == 0
    return coded[:-1]


def bomb(
    count: int, name: Callable[[int], str] = lambda _: "", size: int = 1, whole_image: bool = False
) -> bytes:
    """An unsigned package declaring ``count`` added functions of ``size`` zero bytes."""
    plain = bytes(count * size + 1)  # code, then no unpredicted fixup
    return _seal(_lzma2(_metadata(count, name, size, whole_image)) + _lzma2(plain))


def _peak(call: Callable[[], T]) -> tuple[T | BaseException, int]:
    """What ``call`` returns or raises, and the peak of the memory it allocated."""
    tracemalloc.start()
    try:
        try:
            result: T | BaseException = call()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_bomb_is_well_formed_below_the_limit() -> None:
    package = decode_package(bomb(3))
    assert [f.status for f in package.functions] == [FunctionStatus.ADDED] * 3
    assert encode_package(package) == bomb(3)


@pytest.mark.parametrize("count", [100_000, 1_000_000])
def test_a_million_declared_functions_are_refused_at_once(count: int) -> None:
    data = bomb(count)
    assert len(data) < 2000
    result, peak = _peak(lambda: decode_package(data))
    assert isinstance(result, PackageFormatError)
    assert "limit" in str(result)
    assert peak < 64 << 10


def test_decoding_costs_memory_in_proportion_to_the_bytes_held() -> None:
    # Names drawn at random keep the metadata within the expansion limit: a package of
    # this shape decodes, and its cost is bounded per byte it holds.
    rng = random.Random(16)
    names = ["".join(rng.choice("abcdefghijklmnop") for _ in range(4)) for _ in range(20_000)]
    # (coded against the baseline, whose bytes bound the region)
    data = bomb(len(names), names.__getitem__, whole_image=True)
    result, peak = _peak(lambda: decode_package(data))
    assert not isinstance(result, BaseException)
    assert len(result.functions) == len(names)
    assert peak < 1000 * len(data)
    assert peak < 1000 * len(names)


def test_a_count_past_what_the_records_can_fill_is_refused() -> None:
    metadata = bytearray(_metadata(3, lambda _: ""))
    # the function count: three one-byte records' worth of room is not room for 4
    at = metadata.index(bytes([3, _ADDED_AT_ENTRY_ONE_PART]))
    metadata[at] = 4
    body = lzma2.compress(bytes(metadata), b"", lc=0, lp=0, pb=0)
    data = _seal(body + lzma2.compress(bytes(4), b"", lc=0, lp=0, pb=0))
    with pytest.raises(PackageFormatError, match="4 functions cannot fit"):
        decode_package(data)


def test_a_region_stream_past_its_dictionary_and_expansion_is_refused() -> None:
    # 16 MiB of region from a few KiB of stream, coded against nothing: refused before
    # anything is decompressed (with or without the baseline)
    data = bomb(1, size=16 << 20)
    assert len(data) < 16 << 20 >> 8
    result, peak = _peak(lambda: decode_package(data))
    assert isinstance(result, PackageFormatError)
    assert "expansion limit" in str(result)
    assert peak < 1 << 20
    small = decode_package(bomb(1, size=EXPANSION_FLOOR // 2))
    assert small.resolved_region


def test_every_sample_region_is_within_its_limit() -> None:
    for build in BUILDS:
        for old, new in HOTPATCHABLE_PAIRS:
            package = decode_package(sample_package(build, old, new))
            coding = package.coding
            assert coding is not None
            assert coding.region_size <= MAX_EXPANSION * len(coding.region_stream)


def test_the_expansion_limit_holds_for_every_sample_package() -> None:
    for old, new in HOTPATCHABLE_PAIRS:
        data = sample_package("x64-clang", old, new)
        metadata, _region = lzma2.split(open_envelope(data).body)
        assert lzma2.unpacked_size(metadata) <= 2 * len(metadata) + 256
        assert MAX_EXPANSION >= 8


def _store() -> TrustStore:
    return TrustStore([signing_key().public_key()])


@pytest.mark.parametrize("pair", HOTPATCHABLE_PAIRS, ids="-".join)
def test_the_raw_check_agrees_with_the_check_of_the_decoded_package(
    pair: tuple[str, str],
) -> None:
    signed = sample_package("arm64-clang", *pair, signed=True)
    unsigned = sample_package("arm64-clang", *pair)
    other = TrustStore([Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()])
    forged = bytearray(signed)
    forged[-1] ^= 1  # the signature, which the SHA-256 does not cover
    for data in (signed, unsigned, bytes(forged)):
        for store in (_store(), other, TrustStore()):
            raw = check_signature(data, store)
            assert raw == store.check(decode_package(data))
    assert check_signature(signed, _store()).status == SignatureStatus.TRUSTED
    assert check_signature(bytes(forged), _store()).status == SignatureStatus.INVALID
    assert check_signature(unsigned, _store()).status == SignatureStatus.UNSIGNED
    assert check_signature(signed, other).status == SignatureStatus.UNTRUSTED


def test_a_signed_package_is_read_once_trusted() -> None:
    signed = sample_package("x64-gcc", "v1", "v2", signed=True)
    package, check = read_trusted(signed, _store())
    assert check.status == SignatureStatus.TRUSTED
    assert package == decode_package(signed)
    unsigned = sample_package("x64-gcc", "v1", "v2")
    package, check = read_trusted(unsigned, None, allow_unsigned=True)
    assert check.status == SignatureStatus.UNSIGNED
    assert package.functions == decode_package(unsigned).functions


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "untrusted"])
def test_an_untrusted_bomb_is_refused_before_any_decoding(
    signed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    body = open_envelope(bomb(1_000_000)).body
    data = _seal(body, key if signed else None)

    def never(*_args: object) -> None:
        raise AssertionError("decoded before the signature was checked")

    monkeypatch.setattr(envelope_module, "decode_package", never)
    result, peak = _peak(lambda: read_trusted(data, _store()))
    assert isinstance(result, SignatureRefused)
    assert ("unsigned" if not signed else "untrusted key") in str(result)
    assert result.check.status == (
        SignatureStatus.UNTRUSTED if signed else SignatureStatus.UNSIGNED
    )
    assert peak < 64 << 10


def test_a_tampered_signature_is_refused_even_when_unsigned_ones_are_allowed() -> None:
    signed = bytearray(sample_package("x64-clang", "v1", "v2", signed=True))
    signed[-5] ^= 0x40
    with pytest.raises(SignatureRefused, match="does not hold"):
        read_trusted(bytes(signed), _store(), allow_unsigned=True)


def test_a_broken_frame_is_a_format_error_before_the_signature() -> None:
    data = bytearray(sample_package("x64-clang", "v1", "v2", signed=True))
    data[HEADER.size + 3] ^= 1
    with pytest.raises(PackageFormatError, match="integrity"):
        check_signature(bytes(data), _store())
    with pytest.raises(PackageFormatError, match="bad magic"):
        read_trusted(b"PK\x03\x04", _store())


def test_the_envelope_is_what_the_signature_covers() -> None:
    data = sample_package("x64-clang-hotpatch", "v1", "v2", signed=True)
    package = decode_package(data)
    envelope = open_envelope(data)
    assert envelope.message == signed_message(package)
    assert envelope.signature == package.signature
    unsigned = replace(package, signature=None)
    assert open_envelope(encode_package(unsigned)).signature is None


def test_apply_refuses_an_unsigned_bomb_before_decoding_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the command line too: ``hpatch apply`` checks each package's signature over
    its raw bytes before it decodes anything (a refused check: exit 6)."""
    from hpatch.cli import main

    from ..conftest import SAMPLES

    path = tmp_path / "bomb.hpk"
    path.write_bytes(bomb(1_000_000))

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("decoded before the signature was checked")

    monkeypatch.setattr(envelope_module, "decode_package", never)
    image = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
    with pytest.raises(SystemExit) as exited:
        main(["apply", str(image), str(path)])
    captured = capsys.readouterr()
    assert exited.value.code == 6, captured
    assert "check 'signature' failed: the package is unsigned" in captured.err
