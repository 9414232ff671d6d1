"""LZMA2 with a preset dictionary: an encoder, and decoding through the stdlib.

The stdlib's ``lzma`` decodes LZMA2 but cannot prime its encoder with a dictionary
(liblzma's ``preset_dict`` is not exposed), and a package codes new functions against
the baseline's old ones. ``compress(data, dictionary)`` returns LZMA2 chunks coding
``data`` as if ``dictionary`` had just been decoded; ``decompress`` feeds the dictionary
to the stdlib decoder as uncompressed chunks, then those chunks, so decoding is
liblzma's. The encoder is LZMA's (range coder, adaptive bit models, rep matches) with a
price-driven optimal parse over hash-chain matches, in integer arithmetic only: the C
core's ``lzma2_compress`` and its pure-Python twin (``hpatch/_fallback/lzma2.py``) give
the same bytes for the same arguments on every platform. ``compress_best`` codes under
several (lc, lp, pb) settings in one call (``lzma2_compress_settings``), the matches
found once for all, and keeps the shortest. It is meant for the kilobytes
and megabytes a package holds, not for bulk data.
"""

from __future__ import annotations

import lzma
from collections.abc import Sequence

from hpatch import _backend

# LZMA2 limits: a chunk codes at most 2 MiB and stores at most 64 KiB.
CHUNK_UNPACKED = 1 << 21
CHUNK_PACKED = 1 << 16
_PACKED_RESERVE = 1 << 12  # room left in a chunk for one parse window's symbols


def compress(
    data: bytes,
    dictionary: bytes = b"",
    *,
    lc: int = 3,
    lp: int = 0,
    pb: int = 2,
    nice: int = 128,
    depth: int = 48,
    window: int = 2048,
    searched: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """LZMA2 chunks (no end marker) coding ``data`` after ``dictionary``. ``searched``:
    the (start, end) ranges of the dictionary worth searching for matches (default all)."""
    # the limits are read here, not bound, so that a test can make chunks small
    return _backend.core.lzma2_compress(
        data,
        dictionary,
        lc,
        lp,
        pb,
        searched,
        nice,
        depth,
        window,
        CHUNK_UNPACKED,
        CHUNK_PACKED,
        _PACKED_RESERVE,
    )


def compress_settings(
    data: bytes,
    dictionary: bytes,
    settings: Sequence[tuple[int, int, int]],
    *,
    nice: int = 128,
    depth: int = 48,
    window: int = 2048,
    searched: Sequence[tuple[int, int]] | None = None,
) -> list[bytes]:
    """``compress(data, dictionary, lc=lc, lp=lp, pb=pb, ...)`` for each (lc, lp, pb) of
    ``settings``, in their order, in one call that searches each position for matches
    once (a position's matches do not depend on the setting)."""
    return _backend.core.lzma2_compress_settings(
        data,
        dictionary,
        settings,
        searched,
        nice,
        depth,
        window,
        CHUNK_UNPACKED,
        CHUNK_PACKED,
        _PACKED_RESERVE,
    )


def compress_best(
    data: bytes,
    dictionary: bytes,
    settings: Sequence[tuple[int, int, int]],
    *,
    searched: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """The shortest of ``compress_settings``' streams, the earliest setting's of equals."""
    return min(compress_settings(data, dictionary, settings, searched=searched), key=len)


def dictionary_chunks(dictionary: bytes) -> bytes:
    """``dictionary`` as LZMA2 uncompressed chunks, the first resetting the dictionary."""
    out = bytearray()
    for start in range(0, len(dictionary), 1 << 16):
        piece = dictionary[start : start + (1 << 16)]
        out.append(1 if start == 0 else 2)
        out += (len(piece) - 1).to_bytes(2, "big")
        out += piece
    return bytes(out)


def _chunks(stream: bytes) -> list[tuple[int, int, int]]:
    """(start, control, unpacked size) of every LZMA2 chunk of ``stream``; ValueError if
    the chunk framing is broken."""
    found = []
    position = 0
    while position < len(stream):
        control = stream[position]
        if control < 0x80:
            if control not in (1, 2) or position + 3 > len(stream):
                raise ValueError("a broken LZMA2 chunk header")
            size = int.from_bytes(stream[position + 1 : position + 3], "big") + 1
            found.append((position, control, size))
            position += 3 + size
            continue
        header = 6 if control >= 0xC0 else 5
        if position + header > len(stream):
            raise ValueError("a broken LZMA2 chunk header")
        size = ((control & 0x1F) << 16) + int.from_bytes(stream[position + 1 : position + 3], "big")
        found.append((position, control, size + 1))
        position += header + int.from_bytes(stream[position + 3 : position + 5], "big") + 1
    if position != len(stream):
        raise ValueError("an LZMA2 chunk runs past the end")
    return found


def split(stream: bytes) -> tuple[bytes, bytes]:
    """Two streams written back to back: the second starts at the first chunk after the
    first that sets properties (control byte 0xC0 and up)."""
    for start, control, _size in _chunks(stream)[1:]:
        if control >= 0xC0:
            return stream[:start], stream[start:]
    return stream, b""


def unpacked_size(stream: bytes) -> int:
    """The bytes the LZMA2 chunks of ``stream`` decode to, from their headers alone;
    ValueError if the chunk framing is broken."""
    return sum(size for _start, _control, size in _chunks(stream))


def decompress(stream: bytes, dictionary: bytes, size: int) -> bytes:
    """The ``size`` bytes ``stream`` codes after ``dictionary``; ValueError if it does not."""
    total = len(dictionary) + size
    decoder = lzma.LZMADecompressor(
        lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": max(total, 4096)}],
    )
    try:
        out = decoder.decompress(dictionary_chunks(dictionary) + stream + b"\0", total + 1)
    except lzma.LZMAError as error:
        raise ValueError(f"corrupt LZMA2 data ({error})") from None
    if len(out) != total or not decoder.eof or decoder.unused_data:
        raise ValueError("LZMA2 data does not code the expected number of bytes")
    return out[len(dictionary) :]
