"""Code recognised by its exact bytes, some of them free (a call's displacement, an
operand that varies): how a runtime routine without a name is told apart."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpatch.arch.base import ReadRva
from hpatch.errors import ImageFormatError

_WORD = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class CodeShape:
    """Code that must match ``pattern`` wherever ``mask`` has bits set."""

    pattern: bytes
    mask: bytes

    @classmethod
    def of_bytes(cls, spec: str) -> CodeShape:
        """Hex bytes, ``??`` for a byte that may be anything (a call displacement)."""
        digits = spec.replace(" ", "")
        tokens = [digits[i : i + 2] for i in range(0, len(digits), 2)]
        pattern = bytes(0 if t == "??" else int(t, 16) for t in tokens)
        mask = bytes(0 if t == "??" else 0xFF for t in tokens)
        return cls(pattern, mask)

    @classmethod
    def of_words(cls, words: tuple[tuple[int, int] | int, ...]) -> CodeShape:
        """32-bit instruction words, or (word, mask) for one with an operand that may vary."""
        pairs = [w if isinstance(w, tuple) else (w, 0xFFFFFFFF) for w in words]
        pattern = b"".join(_WORD.pack(w) for w, _ in pairs)
        mask = b"".join(_WORD.pack(m) for _, m in pairs)
        return cls(pattern, mask)

    def matches(self, read: ReadRva, rva: int) -> bool:
        """Whether the code at ``rva`` has this shape (False where it cannot be read)."""
        try:
            code = read(rva, len(self.pattern))
        except ImageFormatError:
            return False
        return all(c & m == p for c, m, p in zip(code, self.mask, self.pattern, strict=True))
