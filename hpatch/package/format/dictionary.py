"""What a region stream is coded against: the dictionary of baseline ranges and the
replaced functions' old code, the ranges worth searching, and the compression calls."""

from __future__ import annotations

import bisect
import functools
import hashlib

from hpatch.errors import PackageFormatError
from hpatch.package import lzma2
from hpatch.package.format.wire import MAX_DICTIONARY
from hpatch.package.model import (
    BlobKind,
    FunctionStatus,
    Package,
)

# LZMA literal/position settings the encoder tries, smallest output kept
_SETTINGS = ((0, 0, 0), (3, 0, 0), (0, 0, 1))
_TRY_ALL_SETTINGS = 64 << 10  # above this many bytes, code once with the first setting
# dictionary search: 8-byte pieces of blobs found in the baseline, within a scan budget
_GRAM = 8
_SCAN_BUDGET = 256 << 20
_WHOLE_IMAGE = 4 << 20  # a baseline up to this size is the dictionary whole
_RANGE_MARGIN = 64


def replaced_extents(package: Package) -> list[tuple[int, int]]:
    """The old code (RVA, size) of every replaced function, in function order."""
    return [
        (f.old_rva, f.old_size)
        for f in package.functions
        if f.status == FunctionStatus.MODIFIED and f.old_size
    ]


def dictionary_data(
    package: Package,
    dictionary: tuple[tuple[int, int], ...],
    extents: bool,
    baseline: bytes,
) -> bytes:
    ranges = list(dictionary) + (replaced_extents(package) if extents else [])
    if sum(size for _, size in ranges) > MAX_DICTIONARY:
        raise PackageFormatError(f"the dictionary exceeds {MAX_DICTIONARY} bytes")
    for rva, size in ranges:
        if not (rva >= 0 and size > 0 and rva + size <= len(baseline)):
            raise PackageFormatError(f"dictionary range 0x{rva:x}+0x{size:x} is outside the image")
    return b"".join(baseline[rva : rva + size] for rva, size in ranges)


def dictionary_spec(
    package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool
) -> bytes:
    """What the dictionary is made of, as a digest (a coded region stays valid while it
    is unchanged)."""
    spec = repr(
        (
            package.baseline.mapped_sha256,
            dictionary,
            extents,
            replaced_extents(package) if extents else [],
        )
    )
    return hashlib.sha256(spec.encode()).digest()


def choose_dictionary(
    package: Package, baseline: bytes, hints: tuple[tuple[int, int], ...]
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The baseline ranges the dictionary starts with, and the ones worth searching for
    matches: ``hints`` (the builder's: the old code around the replaced functions) and
    where pieces of the blobs that are not replaced code (new data, unwind records, added
    functions) occur in the baseline. A small baseline is taken whole (one range)."""
    hints = tuple(
        (rva, min(size, len(baseline) - rva))
        for rva, size in hints
        if 0 <= rva < len(baseline) and size > 0
    )
    covered = sorted((rva, rva + size) for rva, size in [*replaced_extents(package), *hints])
    replaced = {
        min(p.offset for p in f.parts)
        for f in package.functions
        if f.status == FunctionStatus.MODIFIED
    }
    pieces = [b.data for b in package.blobs if b.offset not in replaced or b.kind != BlobKind.CODE]
    searchable = sum(len(p) for p in pieces)
    hits = []
    if searchable and baseline:
        stride = max(4, -(-searchable * len(baseline) // _SCAN_BUDGET))
        for piece in pieces:
            for start in range(0, len(piece) - _GRAM + 1, stride):
                gram = piece[start : start + _GRAM]
                if len(set(gram)) < 3:
                    continue
                at = baseline.find(gram)
                if at < 0:
                    continue
                index = bisect.bisect_right(covered, (at, 1 << 62)) - 1
                if index >= 0 and at < covered[index][1]:
                    continue
                low, high = at - _RANGE_MARGIN, at + _GRAM + _RANGE_MARGIN
                hits.append((max(0, low), min(len(baseline), high)))
    ranges: list[list[int]] = []
    for low, high in sorted(hits):
        if ranges and low <= ranges[-1][1]:
            ranges[-1][1] = max(ranges[-1][1], high)
        else:
            ranges.append([low, high])
    searched = list(hints) + [(low, high - low) for low, high in ranges]
    if len(baseline) <= _WHOLE_IMAGE:
        return ((0, len(baseline)),), tuple(searched)
    total = 0
    chosen = []
    for rva, size in searched:
        if total + size > _WHOLE_IMAGE:
            break
        chosen.append((rva, size))
        total += size
    return tuple(chosen), tuple(chosen)


def searched_positions(
    package: Package,
    dictionary: tuple[tuple[int, int], ...],
    extents: bool,
    searched: tuple[tuple[int, int], ...],
) -> list[tuple[int, int]]:
    """Where in the dictionary the ``searched`` baseline ranges lie, and the extents."""
    found = []
    at = 0
    for rva, size in dictionary:
        for low, length in searched:
            start, end = max(low, rva), min(low + length, rva + size)
            if start < end:
                found.append((at + start - rva, at + end - rva))
        at += size
    tail = sum(size for _, size in replaced_extents(package)) if extents else 0
    found.append((at, at + tail))
    return found


def compress(
    plain: bytes, dictionary: bytes, searched: list[tuple[int, int]] | None = None
) -> bytes:
    settings = _SETTINGS if len(plain) <= _TRY_ALL_SETTINGS else _SETTINGS[:1]
    return lzma2.compress_best(plain, dictionary, settings, searched=searched)


@functools.lru_cache(maxsize=64)
def compress_metadata(metadata: bytes) -> bytes:
    return compress(metadata, b"")
