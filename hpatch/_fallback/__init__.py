"""Pure-Python twins of every function in ``hpatch._native``, one module per C file.

Same signatures, same results, same errors; the parity tests hold them to it. Only
``hpatch._backend`` imports this package for use (tests import it to compare).
"""

from __future__ import annotations

from hpatch._fallback.discovery import (
    gap_evidence,
    gap_leaves,
    reference_evidence,
    x64_code_extent,
    x64_padding_length,
)
from hpatch._fallback.lzma2 import lzma2_compress, lzma2_compress_settings
from hpatch._fallback.rewrite import apply_fixups, encode_redirect
from hpatch._fallback.scan import normalise_arm64, normalise_x64, scan_arm64_sites, scan_x64_sites

__all__ = [
    "apply_fixups",
    "encode_redirect",
    "gap_evidence",
    "gap_leaves",
    "lzma2_compress",
    "lzma2_compress_settings",
    "normalise_arm64",
    "normalise_x64",
    "reference_evidence",
    "scan_arm64_sites",
    "scan_x64_sites",
    "x64_code_extent",
    "x64_padding_length",
]
