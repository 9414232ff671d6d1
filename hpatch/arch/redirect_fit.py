"""Whether a redirect strategy fits a function's entry: the rule the differ uses to name
a blocker and the applier uses to refuse a package, in one place.

The redirect must fit in the function plus its trailing padding (or, two-stage, in the
padding before it and a first instruction long enough), and no branch of the function
may land inside the bytes it overwrites after the entry.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from hpatch.arch.base import SiteKind
from hpatch.arch.kinds import Redirect

if TYPE_CHECKING:
    from hpatch.image import Function, PEImage

#: Bytes that hold the first two instructions of any supported machine (x64: at most
#: 15 each).
_TWO_INSTRUCTIONS = 32


class Misfit(Enum):
    """Why a redirect does not fit (the differ's blocker causes of the same names)."""

    NO_REDIRECT_ROOM = "no_redirect_room"
    BRANCH_INTO_REDIRECT = "branch_into_redirect"


def entry_room(image: PEImage, function: Function) -> tuple[int, int, int]:
    """(bytes from the entry to the next function, padding bytes before the entry, size
    of the first instruction): what decides how the entry can be redirected."""
    room = function.extent_end - function.rva + function.padding_after
    before = 0
    section = image.section_at(function.rva)
    if section is not None:
        for length in range(1, min(16, function.rva - section.rva) + 1):
            data = image.read(function.rva - length, length)
            if image.arch.padding_length(data, 0) == length:
                before = length
    # Only the first two instructions matter, and two of any supported machine fit in
    # _TWO_INSTRUCTIONS bytes (x64: at most 15 each): decoding the whole function for
    # them made this the diff's slowest check.
    window_end = min(function.extent_end, function.rva + _TWO_INSTRUCTIONS)
    starts = sorted(image.arch.instruction_starts(image.read, function.rva, window_end))
    first = (starts[1] if len(starts) > 1 else function.extent_end) - function.rva
    return room, before, first


def redirect_problem(image: PEImage, function: Function, strategy: Redirect) -> str | None:
    """Why ``strategy`` cannot redirect ``function`` safely, or None when it can.

    The redirect must fit in the function plus its trailing padding (or, two-stage,
    in the padding before it and a first instruction of at least two bytes), and no
    branch of the function may land inside the bytes it overwrites after the entry.
    """
    problem = misfit(image, function, strategy, entry_room(image, function))
    return problem[1] if problem is not None else None


def misfit(
    image: PEImage, function: Function, strategy: Redirect, room_before_first: tuple[int, int, int]
) -> tuple[Misfit, str] | None:
    start, length = strategy.span
    room, before, first = room_before_first
    no_room = Misfit.NO_REDIRECT_ROOM
    if start < 0:
        if before < -start:
            return no_room, f"needs {-start} bytes of padding before the entry, has {before}"
        if first < start + length:
            return (
                no_room,
                f"its first instruction is {first} bytes, the redirect needs {start + length}",
            )
    elif start + length > room:
        return (
            no_room,
            f"the {length}-byte redirect is longer than the function and its padding ({room} "
            "bytes)",
        )
    lo, hi = function.rva + 1, function.rva + start + length
    if hi <= lo:
        return None
    parts = [(function.rva, function.end_rva)] + [
        (f.rva, f.rva + f.size) for f in function.fragments
    ]
    for part_start, part_end in parts:
        code = image.read(part_start, part_end - part_start)
        branches = [
            (site_rva, target_rva)
            for site_rva, target_rva, kind in zip(
                *image.arch.scan_sites(code, part_start, lo, hi), strict=True
            )
            if kind in (SiteKind.JUMP, SiteKind.COND_JUMP)
        ]
        if not branches:
            continue  # most parts have none: spare them a decode of every instruction
        starts = image.arch.instruction_starts(image.read, part_start, part_end)
        for site_rva, target_rva in branches:
            if site_rva in starts:
                return (
                    Misfit.BRANCH_INTO_REDIRECT,
                    f"the branch at RVA 0x{site_rva:x} lands at 0x{target_rva:x}, inside the "
                    "bytes the redirect overwrites",
                )
    return None
