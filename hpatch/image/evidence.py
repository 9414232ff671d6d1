"""Function starts the image states outright, and pointers it relocates into code."""

from __future__ import annotations

import struct
from collections import defaultdict
from typing import TYPE_CHECKING

from hpatch.image.model import BaseRelocationType, Evidence

if TYPE_CHECKING:
    from hpatch.image.reader import PEImage

#: Evidence that names a function start exactly.
EXACT = frozenset(
    {Evidence.PDATA, Evidence.EXPORT, Evidence.SYMBOL, Evidence.ENTRY, Evidence.GUARD_CF}
)
#: Evidence that a start is real wherever it lands: exact starts, and pointers the
#: loader relocates (an address stored in data is an address the program uses).
STRONG = EXACT | {Evidence.RELOC}


def exact_starts(image: PEImage) -> tuple[dict[int, set[Evidence]], dict[int, str]]:
    """Starts named by exports, COFF symbols, the entry point and the CFG table."""
    evidence: dict[int, set[Evidence]] = defaultdict(set)
    names: dict[int, str] = {}

    def is_code(rva: int) -> bool:
        section = image.section_at(rva)
        return section is not None and section.is_executable

    for symbol in image.symbols:
        if symbol.is_function and is_code(symbol.rva):
            evidence[symbol.rva].add(Evidence.SYMBOL)
            names.setdefault(symbol.rva, symbol.name)
    for export in image.exports:
        if export.forwarder is None and is_code(export.rva):
            evidence[export.rva].add(Evidence.EXPORT)
            if export.name:
                names[export.rva] = export.name
    if image.entry_rva and is_code(image.entry_rva):
        evidence[image.entry_rva].add(Evidence.ENTRY)
    if image.load_config is not None:
        for rva in image.load_config.guard_cf_function_rvas:
            if is_code(rva):
                evidence[rva].add(Evidence.GUARD_CF)
    return evidence, names


def relocated_pointers(image: PEImage, lo: int, hi: int) -> list[int]:
    """Targets of base-relocated pointers that land in executable code."""
    targets = []
    for relocation in image.relocations:
        if relocation.type == BaseRelocationType.DIR64:
            (value,) = struct.unpack("<Q", image.read(relocation.rva, 8))
        elif relocation.type == BaseRelocationType.HIGHLOW:
            (value,) = struct.unpack("<I", image.read(relocation.rva, 4))
        else:
            continue
        rva = value - image.image_base
        if lo <= rva < hi:
            targets.append(rva)
    return targets
