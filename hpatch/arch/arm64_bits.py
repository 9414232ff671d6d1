"""ARM64 immediate fields, written once: sign extension, the ``ADR``/``ADRP``
``immhi:immlo`` immediate, and the access size that scales an ``LDR``/``STR`` offset.

Plain functions over instruction words, importing nothing, so the arch code, the
relocator, the package format and the C core's twin (``hpatch._fallback.scan``) share
them; the C core has its own, which the parity tests hold the twin to.
"""

from __future__ import annotations


def sign_extend(value: int, bits: int) -> int:
    """``value``'s low ``bits`` bits read as a two's-complement number."""
    sign = 1 << (bits - 1)
    return (value ^ sign) - sign


def adr_immediate(word: int) -> int:
    """The signed 21-bit ``immhi:immlo`` of an ``ADR``/``ADRP`` word (bytes for ADR,
    4 KiB pages for ADRP)."""
    return sign_extend(((word >> 29) & 3) | (((word >> 5) & 0x7FFFF) << 2), 21)


def with_adr_immediate(word: int, value: int) -> int:
    """``word`` (an ``ADR``/``ADRP``) with its ``immhi:immlo`` set to ``value`` (low 21
    bits)."""
    value &= 0x1FFFFF
    return (word & 0x9F00001F) | ((value & 3) << 29) | ((value >> 2) << 5)


def ldst_scale(word: int) -> int:
    """log2 of the access size of an LDR/STR (unsigned offset) instruction."""
    scale = word >> 30
    if (word >> 26) & 1 and (word >> 23) & 1 and scale == 0:
        scale = 4  # 128-bit SIMD&FP register
    return scale
