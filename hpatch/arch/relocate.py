"""Shared shapes for relocating code: what must be rebound when code is copied elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from hpatch.arch.rewrite import Fixup


class CodeFixup(NamedTuple):
    """A field of copied code that must be rebound.

    The field at ``field_rva`` (of the image the code was copied from) belongs to the
    instruction or table at ``site_rva`` and names ``target_rva``. Fixups sharing a
    ``page_group`` other than -1 (an ARM64 ADRP and the page offsets completing it)
    must bind to targets in one 4 KiB page. ``passed_on`` (in such a group) is the RVA
    of a call, return or branch where the page may still be live in a register handed
    on beyond the code (-1: nowhere): what completes it there is out of sight, so every
    target of the group must keep its page offset once bound.
    """

    field_rva: int
    kind: Fixup
    target_rva: int
    site_rva: int
    page_group: int = -1
    passed_on: int = -1


#: callee_reads(callee_rva, registers): whether the function at ``callee_rva`` may read
#: one of ``registers`` (numbers) before it writes it.
CalleeReads = Callable[[int, frozenset[int]], bool]


class ShortBranch(NamedTuple):
    """A direct branch leaving the code whose displacement no fixup kind writes (x64
    rel8: ``jmp``, ``jcc``, ``loop``, ``jrcxz``): the signed ``field_size``-byte field at
    ``field_rva``, counted from the field's end, names ``target_rva``. From the patch
    region it reaches no farther than it did, so the builder sends it through a
    range-extension veneer beside the copy (see docs/FORMAT.md)."""

    field_rva: int
    field_size: int
    target_rva: int
    site_rva: int


class RelocationError(Exception):
    """The code cannot be copied with certainty; the message says why and where."""
