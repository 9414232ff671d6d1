"""Hostile PE images made from real ones, aimed where a reader or loader can go wrong:
the section table, base relocations, ``.pdata`` and unwind data, the import table, the
data directories and headers; then plain bit flips, byte runs and truncation."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from ..image import corrupt

IMPORTS, EXCEPTIONS, RELOCATIONS = 1, 3, 5
_SECTION_HEADER = 40
_DESCRIPTOR = 20  # IMAGE_IMPORT_DESCRIPTOR
_MEM_WRITE_EXECUTE = 0x80000000 | 0x20000000
_UNW_FLAG_CHAININFO = 4


def _edges(value: int, *related: int) -> list[int]:
    return [
        0,
        1,
        value - 1,
        value + 1,
        value + 0x1000,
        value - 0x1000,
        0x7FFF_FFFF,
        0x8000_0000,
        0xFFFF_F000,
        0xFFFF_FFFF,
        *related,
    ]


def _u32(data: bytes | bytearray, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def _put(data: bytearray, offset: int, value: int, size: int = 4) -> None:
    if offset >= 0 and offset + size <= len(data):
        data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _size_of_image(data: bytes) -> int:
    return _u32(data, corrupt.optional_offset(data) + 56)


def _section_table(data: bytes) -> int:
    optional_size = struct.unpack_from("<H", data, corrupt.pe_offset(data) + 20)[0]
    return corrupt.optional_offset(data) + optional_size


def _file_offset(data: bytes, rva: int) -> int | None:
    """File offset of ``rva``, or None when no section's raw data holds it."""
    try:
        return corrupt.rva_to_offset(data, rva)
    except ValueError:
        return None


def _directory_offset(data: bytes, index: int) -> int | None:
    """File offset of directory ``index``'s content, or None when it is absent."""
    rva, size = corrupt.directory(data, index)
    return _file_offset(data, rva) if rva and size else None


def section_table(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    headers = corrupt.sections(data)
    table = _section_table(data)
    index = rng.randrange(len(headers))
    at = table + _SECTION_HEADER * index
    pick = rng.randrange(6)
    if pick == 0:
        field, name = rng.choice(
            ((8, "VirtualSize"), (12, "VirtualAddress"), (16, "SizeOfRawData"), (20, "RawPtr"))
        )
        related = [_size_of_image(data), len(data)] + [h[1] for h in headers]
        _put(out, at + field, rng.choice(_edges(_u32(data, at + field), *related)))
        return out, f"sections:{name}"
    if pick == 1 and index:
        previous = headers[index - 1][1]
        _put(out, at + 12, previous + rng.choice((0, 0x10, 0x1000)))
        return out, "sections:overlap"
    if pick == 2 and len(headers) > 1:
        other = table + _SECTION_HEADER * ((index + 1) % len(headers))
        out[at : at + 40], out[other : other + 40] = out[other : other + 40], out[at : at + 40]
        return out, "sections:out-of-order"
    if pick == 3:
        value = rng.choice((0, 1, len(headers) - 1, len(headers) + 1, 96, 0xFFFF))
        _put(out, corrupt.pe_offset(data) + 6, value, 2)
        return out, "sections:count"
    if pick == 4:
        value = rng.choice((0, 0xE0, 0xEF, 0xF8, 0x100, 0xFFFF))
        _put(out, corrupt.pe_offset(data) + 20, value, 2)
        return out, "sections:optional-header-size"
    _put(out, at + 36, rng.choice((0, 0xFFFF_FFFF, _u32(data, at + 36) | _MEM_WRITE_EXECUTE)))
    return out, "sections:characteristics"


def relocations(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    start = _directory_offset(data, RELOCATIONS)
    size_of_image = _size_of_image(data)
    if start is None:
        return directories(data, rng)
    _rva, size = corrupt.directory(data, RELOCATIONS)
    blocks = []
    at = start
    while at + 8 <= start + size and at + 8 <= len(data):
        block_size = _u32(data, at + 4)
        if block_size < 8:
            break
        blocks.append(at)
        at += block_size
    if not blocks:
        return directories(data, rng)
    block = rng.choice(blocks)
    pick = rng.randrange(4)
    if pick == 0:
        last_page = (size_of_image - 1) & ~0xFFF
        value = rng.choice((size_of_image, last_page, 0xFFFF_F000, size_of_image + 0x1000))
        _put(out, block, value)
        # An entry at the very end of the page: its field leaves the image.
        _put(out, block + 8, (0xA << 12) | rng.choice((0xFFF, 0xFFC, 0xFF9)), 2)
        return out, "relocations:outside-image"
    if pick == 1:
        value = rng.choice((0, 4, 8, 9, 0xFFFF_FFFF, size + 8, _u32(data, block + 4) + 2))
        _put(out, block + 4, value)
        return out, "relocations:block-size"
    if pick == 2:
        entries = (_u32(data, block + 4) - 8) // 2
        if entries:
            entry = block + 8 + 2 * rng.randrange(entries)
            _put(
                out,
                entry,
                (rng.choice((0xA, 0x3, 0x1, 0x2, 0x4, 0x5, 0x9, 0xB, 0xF)) << 12)
                | rng.randrange(0x1000),
                2,
            )
        return out, "relocations:entry"
    value = rng.choice((0, 1, 7, size - 2, size + 8, 0xFFFF_FFFF))
    _put(out, corrupt.directory_offset(data, RELOCATIONS) + 4, value)
    return out, "relocations:directory-size"


def pdata(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    start = _directory_offset(data, EXCEPTIONS)
    if start is None:
        return directories(data, rng)
    rva, size = corrupt.directory(data, EXCEPTIONS)
    machine = struct.unpack_from("<H", data, corrupt.pe_offset(data) + 4)[0]
    step = 12 if machine == 0x8664 else 8
    # The entries the file holds (an earlier mutation may have made the size huge).
    count = min(size, len(data) - start) // step
    if count < 2:
        return directories(data, rng)
    index = rng.randrange(count - 1)
    at = start + step * index
    pick = rng.randrange(6)
    if pick == 0:
        following = at + step
        out[at : at + step], out[following : following + step] = (
            out[following : following + step],
            out[at : at + step],
        )
        return out, "pdata:backwards"
    if pick == 1:
        entries = [out[start + step * i : start + step * (i + 1)] for i in range(count)]
        out[start : start + step * count] = b"".join(reversed(entries))
        return out, "pdata:reversed"
    if pick == 2:
        # The next entry starts inside this one (or exactly where this one starts).
        _put(out, at + step, _u32(data, at) + rng.choice((0, 1, 2, 4)))
        return out, "pdata:overlap"
    if pick == 3 and step == 12:
        begin, end = _u32(data, at), _u32(data, at + 4)
        _put(out, at, end)
        _put(out, at + 4, begin)
        return out, "pdata:begin-after-end"
    if pick == 4 and step == 12:
        how = rng.choice(("self", "entry"))
        return chain_loop(data, index, how), f"pdata:chain-loop-{how}"
    field = rng.randrange(step // 4)
    related = [_size_of_image(data), rva, rva + step * index]
    _put(out, at + 4 * field, rng.choice(_edges(_u32(data, at + 4 * field), *related)))
    return out, "pdata:field"


def chain_loop(data: bytes, index: int, how: str) -> bytearray:
    """x64: entry ``index``'s unwind info chained to a RUNTIME_FUNCTION that leads back
    to it (``how`` "self": its chained entry is the entry itself; "entry": the entry's
    unwind field names the entry, as a chained entry does)."""
    out = bytearray(data)
    start = _directory_offset(data, EXCEPTIONS)
    rva, _size = corrupt.directory(data, EXCEPTIONS)
    assert start is not None
    at = start + 12 * index
    if how == "entry":
        _put(out, at + 8, rva + 12 * index + 1)
        return out
    unwind_rva = _u32(data, at + 8) & ~1
    info = corrupt.rva_to_offset(data, unwind_rva)
    codes = out[info + 2]
    out[info] = (out[info] & 0x07) | (_UNW_FLAG_CHAININFO << 3)
    chained = info + 4 + 2 * (codes + (codes & 1))
    _put(out, chained, _u32(data, at))
    _put(out, chained + 4, _u32(data, at + 4))
    _put(out, chained + 8, unwind_rva)
    return out


def imports(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    start = _directory_offset(data, IMPORTS)
    if start is None:
        return directories(data, rng)
    rva, _size = corrupt.directory(data, IMPORTS)
    descriptors = []
    at = start
    while at + _DESCRIPTOR <= len(data) and any(data[at : at + _DESCRIPTOR]):
        descriptors.append(at)
        at += _DESCRIPTOR
    if not descriptors:
        return directories(data, rng)
    terminator = at
    first = descriptors[0]
    pick = rng.randrange(6)
    if pick == 0:
        # No terminating descriptor: the table runs on into what follows it.
        out[terminator : terminator + _DESCRIPTOR] = out[first : first + _DESCRIPTOR]
        return out, "imports:unterminated-descriptors"
    if pick == 1:
        # The lookup table is the descriptor table itself.
        _put(out, first, rva)
        if rng.random() < 0.5:
            _put(out, first + 16, rva)
        return out, "imports:thunks-are-descriptors"
    if pick == 2:
        thunks = _u32(data, first) or _u32(data, first + 16)
        thunk_at = _file_offset(data, thunks)
        if thunk_at is None:
            return out, "imports:thunk-loop"
        # A hint/name entry that points at the thunk itself, or an unterminated array.
        if rng.random() < 0.5:
            _put(out, thunk_at, thunks, 8)
            return out, "imports:thunk-names-itself"
        end = thunk_at
        while end + 8 <= len(data) and any(data[end : end + 8]):
            end += 8
        _put(out, end, struct.unpack_from("<Q", data, thunk_at)[0], 8)
        return out, "imports:unterminated-thunks"
    if pick == 3:
        value = rng.choice(_edges(_u32(data, first + 12), _size_of_image(data), rva))
        _put(out, first + 12, value)
        return out, "imports:name"
    if pick == 4:
        thunk_at = _file_offset(data, _u32(data, first) or _u32(data, first + 16))
        if thunk_at is None:
            return out, "imports:ordinal"
        _put(out, thunk_at, (1 << 63) | rng.choice((0, 1, 0xFFFF, 0x10000, 0xFFFF_FFFF)), 8)
        return out, "imports:ordinal"
    field = rng.choice((0, 4, 8, 16))
    value = rng.choice(_edges(_u32(data, first + field), _size_of_image(data), rva))
    _put(out, first + field, value)
    return out, "imports:descriptor-field"


def directories(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    index = rng.randrange(16)
    at = corrupt.directory_offset(data, index) + rng.choice((0, 4))
    related = [_size_of_image(data), len(data)]
    _put(out, at, rng.choice(_edges(_u32(data, at), *related)))
    return out, "directories"


_HEADER_FIELDS = {  # offset in the optional header (PE32+)
    "AddressOfEntryPoint": 16,
    "ImageBase": 24,
    "SectionAlignment": 32,
    "FileAlignment": 36,
    "SizeOfImage": 56,
    "SizeOfHeaders": 60,
    "NumberOfRvaAndSizes": 108,
}


def headers(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    if rng.random() < 0.15:
        _put(out, 0x3C, rng.choice((0, 4, 0x40, len(data) - 4, len(data), 0xFFFF_FFFF)))
        return out, "headers:e_lfanew"
    name, offset = rng.choice(sorted(_HEADER_FIELDS.items()))
    at = corrupt.optional_offset(data) + offset
    size = 8 if name == "ImageBase" else 4
    current = int.from_bytes(data[at : at + size], "little")
    values = _edges(current, _size_of_image(data), 0x200, 0x10000)
    if size == 8:
        values += [1 << 63, (1 << 64) - 0x10000, 0x7FFF_FFFF_0000]
    _put(out, at, rng.choice(values), size)
    return out, f"headers:{name}"


def noise(data: bytes, rng: random.Random) -> tuple[bytearray, str]:
    out = bytearray(data)
    pick = rng.randrange(4)
    if pick == 0:
        limit = rng.choice((0x400, len(data)))
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(min(limit, len(out)))] ^= 1 << rng.randrange(8)
        return out, "noise:bit-flips"
    if pick == 1:
        at = rng.randrange(len(out))
        out[at : at + 64] = rng.randbytes(len(out[at : at + 64]))
        return out, "noise:byte-run"
    if pick == 2:
        return out[: rng.randrange(len(out))], "noise:truncate"
    return out + rng.randbytes(rng.choice((1, 0x1000, 1 << 20))), "noise:appended"


MUTATORS: tuple[Callable[[bytes, random.Random], tuple[bytearray, str]], ...] = (
    section_table,
    relocations,
    pdata,
    imports,
    directories,
    headers,
    noise,
)


def mutate_image(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One to three targeted mutations of the PE file ``data``."""
    out, names = bytes(data), []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        try:
            mutated, how = rng.choice(MUTATORS)(out, rng)
        except (struct.error, ValueError, IndexError):
            # An earlier mutation left nothing to aim at (headers cut off): flip bits.
            mutated, how = noise(out, rng)
        out = bytes(mutated)
        names.append(how)
    return out, "+".join(names)
