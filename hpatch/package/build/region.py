"""The patch region as the builder lays it out: its bytes, blobs and fixups, and where
each copied piece of the new image landed."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from hpatch.package.model import Blob, BlobKind, FixupEntry

PAGE = 4096


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes of the new image at ``new_rva`` copied to region ``offset``."""

    new_rva: int
    size: int
    offset: int


class Layout:
    """Where each copied piece of the new image lies in the region."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self._starts: list[int] = []

    def add(self, piece: Piece) -> None:
        index = bisect.bisect_left(self._starts, piece.new_rva)
        self._starts.insert(index, piece.new_rva)
        self.pieces.insert(index, piece)

    def locate(self, new_rva: int, *, end_ok: bool = False) -> int | None:
        """Region offset of ``new_rva`` if it was copied (``end_ok``: or ends a piece)."""
        index = bisect.bisect_right(self._starts, new_rva) - 1
        if index < 0:
            return None
        piece = self.pieces[index]
        inside = new_rva - piece.new_rva
        if inside < piece.size or (end_ok and inside == piece.size):
            return piece.offset + inside
        return None


class Region:
    """The region under construction."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.blobs: list[Blob] = []
        self.layout = Layout()
        #: Region offset -> the fixup of the field there.
        self.fixups: dict[int, FixupEntry] = {}
        #: The region offset of the veneer each short branch (by field RVA) goes through.
        self.veneer_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.data)

    def place(self, data: bytes, new_rva: int | None, alignment: int, kind: BlobKind) -> int:
        """Append ``data`` to the region; a copy of new-image bytes keeps ``new_rva``'s
        offset modulo ``alignment``. Returns its region offset."""
        offset = len(self.data)
        phase = new_rva % alignment if new_rva is not None else 0
        offset += (phase - offset) % alignment
        self.data.extend(bytes(offset - len(self.data)))
        self.data.extend(data)
        if (
            self.blobs
            and self.blobs[-1].kind == kind
            and self.blobs[-1].offset + len(self.blobs[-1].data) == offset
            and kind != BlobKind.CODE
        ):
            last = self.blobs.pop()
            self.blobs.append(Blob(kind, last.offset, last.data + data))
        else:
            self.blobs.append(Blob(kind, offset, bytes(data)))
        if new_rva is not None:
            self.layout.add(Piece(new_rva, len(data), offset))
        return offset

    def pad_to_page(self) -> None:
        self.data.extend(bytes(-len(self.data) % PAGE))

    def locate(self, new_rva: int, *, end_ok: bool = False) -> int | None:
        return self.layout.locate(new_rva, end_ok=end_ok)
