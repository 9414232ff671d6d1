"""The wire primitives of the ``.hpk`` format: little-endian fields, LEB128 varints
(zigzag for signed ones), scaled numbers, and the sizes and limits both directions
share."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import TypeVar

from hpatch.arch import Arch, Machine, arch_for
from hpatch.errors import PackageFormatError

MAGIC = b"\x89HPK"
HEADER = struct.Struct("<4sBB")  # magic, version, flags
DIGEST_SIZE = 32
KEY_ID_SIZE = 8
SIGNATURE_SIZE = 64
MAX_PACKAGE_SIZE = 64 << 20
MAX_REGION_SIZE = 64 << 20
MAX_METADATA = 4 << 20  # hpatch's largest packages hold a few KiB
MAX_DICTIONARY = 64 << 20
MAX_STRING = 4096
MAX_ALIGNMENT = 1 << 16
MAX_VARINT = 10  # bytes: every value below 2**70
# A stream decoded before the signature is trusted may expand at most this much over
# its coded size (plus the floor): hpatch's metadata codes at under 2x, while LZMA lets
# a few hundred bytes claim megabytes of repeated records (a package bomb).
MAX_EXPANSION = 16
EXPANSION_FLOOR = 4 << 10

T = TypeVar("T")


@functools.cache
def arch_of(machine: Machine) -> Arch:
    """The Arch of ``machine``, made once: the format asks it for sizes and field layouts
    instead of branching on the machine."""
    return arch_for(machine)


class Writer:
    """Little-endian fields and LEB128 varints (zigzag for signed values)."""

    def __init__(self) -> None:
        self.out = bytearray()

    def u8(self, value: int) -> None:
        self.out.append(value)

    def u32(self, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise PackageFormatError(f"{value} does not fit 32 bits")
        self.out += struct.pack("<I", value)

    def uv(self, value: int) -> None:
        if not 0 <= value < 1 << 70:
            raise PackageFormatError(f"{value} cannot be stored as a varint")
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def sv(self, value: int) -> None:
        self.uv(value << 1 if value >= 0 else ((-value) << 1) - 1)

    def raw(self, data: bytes) -> None:
        self.out += data

    def string(self, text: str) -> None:
        raw = text.encode("utf-8")
        if len(raw) > MAX_STRING:
            raise PackageFormatError(f"string of {len(raw)} bytes exceeds {MAX_STRING}")
        self.uv(len(raw))
        self.out += raw


class Reader:
    """Reads fields from ``data``, never past its end."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.position, self.what = data, 0, what

    def left(self) -> int:
        return len(self.data) - self.position

    def take(self, size: int) -> bytes:
        if size < 0 or size > self.left():
            raise PackageFormatError(
                f"{self.what}: truncated at byte {self.position} (needs {size} more bytes)"
            )
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk

    def u8(self) -> int:
        # indexed, not through take(): records are mostly one-byte fields
        position = self.position
        if position >= len(self.data):
            raise PackageFormatError(
                f"{self.what}: truncated at byte {position} (needs 1 more bytes)"
            )
        self.position = position + 1
        return self.data[position]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def uv(self, limit: int = 1 << 64) -> int:
        data, position = self.data, self.position
        if position < len(data) and data[position] < 0x80:  # the common one-byte varint
            value = data[position]
            if value >= limit:
                raise PackageFormatError(f"{self.what}: value {value} out of range")
            self.position = position + 1
            return value
        value = shift = 0
        for _ in range(MAX_VARINT):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if not byte and shift:
                    raise PackageFormatError(f"{self.what}: a varint is not in its shortest form")
                if value >= limit:
                    raise PackageFormatError(f"{self.what}: value {value} out of range")
                return value
            shift += 7
        raise PackageFormatError(f"{self.what}: a varint runs past {MAX_VARINT} bytes")

    def sv(self) -> int:
        value = self.uv(1 << 70)
        return value >> 1 if not value & 1 else -((value + 1) >> 1)

    def string(self, field: str) -> str:
        size = self.uv()
        if size > MAX_STRING:
            raise PackageFormatError(f"{self.what}: {field} is {size} bytes (limit {MAX_STRING})")
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PackageFormatError(f"{self.what}: {field} is not UTF-8") from exc

    def count(self, minimum_record: int, what: str) -> int:
        """A record count, refused unless that many minimal records fit in what is left."""
        count = self.uv()
        if count * minimum_record > self.left():
            raise PackageFormatError(
                f"{self.what}: {count} {what} cannot fit in {self.left()} bytes"
            )
        return count

    def finish(self) -> None:
        if self.position != len(self.data):
            raise PackageFormatError(
                f"{self.what}: {len(self.data) - self.position} unexpected bytes at its end"
            )


def enum_value(kind: Callable[[int], T], value: int, what: str) -> T:
    try:
        return kind(value)
    except ValueError:
        raise PackageFormatError(f"unknown {what} {value}") from None


def write_scaled(out: Writer, value: int, bits: int) -> None:
    """``value``, shorter when a multiple of ``2**bits`` (page sizes, 64 KiB bases)."""
    if value & ((1 << bits) - 1):
        out.uv(value << 1 | 1)
    else:
        out.uv(value >> bits << 1)


def read_scaled(data: Reader, bits: int, limit: int) -> int:
    value = data.uv(limit << (bits + 1))
    value = value >> 1 if value & 1 else value >> 1 << bits
    if value >= limit:
        raise PackageFormatError(f"{data.what}: value {value} out of range")
    return value
