"""Shared shapes for relocating code: what must be rebound when code is copied elsewhere."""

from __future__ import annotations

from typing import NamedTuple

from hpatch.arch.rewrite import Fixup


class CodeFixup(NamedTuple):
    """A field of copied code that must be rebound.

    The field at ``field_rva`` (of the image the code was copied from) belongs to the
    instruction or table at ``site_rva`` and names ``target_rva``. Fixups sharing a
    ``page_group`` other than -1 (an ARM64 ADRP and the page offsets completing it)
    must bind to targets in one 4 KiB page.
    """

    field_rva: int
    kind: Fixup
    target_rva: int
    site_rva: int
    page_group: int = -1


class RelocationError(Exception):
    """The code cannot be copied with certainty; the message says why and where."""
