"""Targeted corruptions of a real PE file, for the malformed-input tests."""

from __future__ import annotations

import struct


def pe_offset(data: bytes) -> int:
    return struct.unpack_from("<I", data, 0x3C)[0]


def optional_offset(data: bytes) -> int:
    return pe_offset(data) + 24


def directory_offset(data: bytes, index: int) -> int:
    """File offset of data directory ``index`` (PE32+)."""
    return optional_offset(data) + 112 + 8 * index


def directory(data: bytes, index: int) -> tuple[int, int]:
    return struct.unpack_from("<II", data, directory_offset(data, index))


def sections(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, rva, virtual size, raw offset, raw size) of each section header."""
    count = struct.unpack_from("<H", data, pe_offset(data) + 6)[0]
    optional_size = struct.unpack_from("<H", data, pe_offset(data) + 20)[0]
    table = optional_offset(data) + optional_size
    found = []
    for index in range(count):
        at = table + 40 * index
        name = data[at : at + 8].rstrip(b"\0").decode()
        vsize, rva, raw_size, raw_offset = struct.unpack_from("<IIII", data, at + 8)
        found.append((name, rva, vsize, raw_offset, raw_size))
    return found


def rva_to_offset(data: bytes, rva: int) -> int:
    for _, start, vsize, raw_offset, raw_size in sections(data):
        if start <= rva < start + max(vsize, raw_size):
            return raw_offset + rva - start
    raise ValueError(f"rva 0x{rva:x} is not in a section")


def patch(data: bytes, offset: int, blob: bytes) -> bytes:
    return data[:offset] + blob + data[offset + len(blob) :]


def set_u16(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<H", value))


def set_u32(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<I", value))


def set_u64(data: bytes, offset: int, value: int) -> bytes:
    return patch(data, offset, struct.pack("<Q", value))
