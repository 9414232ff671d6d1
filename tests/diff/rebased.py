"""Copies of an image rebased with its own base relocations (pefile as the loader)."""

from __future__ import annotations

from pathlib import Path

import pefile

#: Far enough that every relocated pointer changes in its upper bytes.
REBASE_DELTA = 0x10000000


def rebased_copy(source: Path, destination: Path) -> Path:
    """``source`` with every base-relocated field moved by REBASE_DELTA and ImageBase to
    match, as a loader would map it at that base. Only the relocation directory is
    parsed: pefile rewrites the import lookup table of an image whose imports it
    parsed, which the loader never does."""
    image = pefile.PE(str(source), fast_load=True)
    try:
        image.relocate_image(image.OPTIONAL_HEADER.ImageBase + REBASE_DELTA)
        image.write(str(destination))
    finally:
        image.close()
    return destination
