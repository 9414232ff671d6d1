"""A tiny sparse image for feeding synthetic tables to the architecture decoders."""

from __future__ import annotations

from hpatch.errors import ImageFormatError


class FakeImage:
    """Bytes placed at RVAs; reads outside what was placed fail like a real image."""

    def __init__(self, size: int = 0x10000) -> None:
        self.data = bytearray(size)

    def put(self, rva: int, blob: bytes) -> None:
        self.data[rva : rva + len(blob)] = blob

    def read(self, rva: int, size: int) -> bytes:
        if rva < 0 or size < 0 or rva + size > len(self.data):
            raise ImageFormatError(f"read at 0x{rva:x} outside the fake image")
        return bytes(self.data[rva : rva + size])
