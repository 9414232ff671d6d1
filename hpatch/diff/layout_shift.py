"""A structure that live objects already have changes layout.

When a fix adds a field to a structure, every function that touches a field after it
changes the same way: the same instructions, the field offsets past the new field
shifted by its size (or by more, past a second one). Patching them would make the new
code read every object the old code allocated at the wrong offsets. Functions whose
only difference is such a shift (with at least one load or store moved, not only an
address computed), one shift shared by several of them, are that signature (kpatch
calls for a shadow variable there; a hotpatch cannot carry it).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from hpatch.diff.classify import FunctionChange, Status
from hpatch.image import PEImage

#: Functions sharing one shift before it counts as a structure's layout.
MIN_FUNCTIONS = 3
#: Functions larger than this are not decoded for it.
_MAX_FUNCTION = 0x10000
#: Bytes of variable-width code decoded at a time: the first piece, and at most (each
#: piece twice the last). Far longer than any instruction.
_FIRST_STEP = 0x80
_LAST_STEP = 0x1000


@dataclass(frozen=True, slots=True)
class LayoutShift:
    """Field offsets from ``first_offset`` on moved by ``shift`` bytes in ``functions``."""

    shift: int
    first_offset: int
    functions: tuple[FunctionChange, ...]


_Field = tuple[str, tuple[int, ...]]
_Fields = list[_Field]


class _Words:
    """One build's fixed-width instruction words, each decoded once: the functions a
    structure's change touches share most of their differing words. A word's fields do
    not depend on where it is decoded; its text may only for a PC-relative target that
    capstone writes in decimal (below 10), and such a word's fields hold no offset and
    the same shape in both builds, so whether it is compared changes no verdict."""

    def __init__(self, image: PEImage) -> None:
        self.arch = image.arch
        self.step = image.arch.instruction_alignment
        self._texts: dict[bytes, str] = {}
        self._fields: dict[bytes, _Field] = {}

    def texts(self, words: list[bytes]) -> list[str] | None:
        """The text of each word; None if one is not an instruction."""
        known = self._texts
        missing = [word for word in dict.fromkeys(words) if word not in known]
        if missing:
            decoded = self.arch.instruction_texts(b"".join(missing), 0)
            for index, (at, size, text) in enumerate(decoded):
                if at != index * self.step or size != self.step:
                    return None  # not one instruction a word: cannot happen
                known[missing[index]] = text
            if len(decoded) != len(missing):
                return None  # a word that is not an instruction (data)
        return [known[word] for word in words]

    def fields(self, words: list[bytes]) -> _Fields:
        """The field shapes and offsets of the words, as one call on them would give."""
        known = self._fields
        missing = [word for word in dict.fromkeys(words) if word not in known]
        if missing:
            decoded = self.arch.field_offsets(b"".join(missing), 0)
            if len(decoded) != len(missing):
                return self.arch.field_offsets(b"".join(words), 0)  # as it always did
            known.update(zip(missing, decoded, strict=True))
        return [known[word] for word in words]


def _words_fields(
    old: _Words, new: _Words, old_code: bytes, new_code: bytes
) -> tuple[_Fields, _Fields] | None:
    """Fixed-width instructions, one count of them: the field shapes and offsets of the
    instructions whose text differs. Only the words whose bytes differ can differ in
    text, so only those are decoded: the text leaves out what depends on an
    instruction's address (a branch or literal's target), so where a word sits does
    not change its text or its fields."""
    step = old.step
    differing = [
        at
        for at in range(0, len(old_code), step)
        if old_code[at : at + step] != new_code[at : at + step]
    ]
    if not differing:
        return None
    old_words = [old_code[at : at + step] for at in differing]
    new_words = [new_code[at : at + step] for at in differing]
    old_texts = old.texts(old_words)
    new_texts = new.texts(new_words) if old_texts is not None else None
    if old_texts is None or new_texts is None:
        return None  # a word that is not an instruction (data) differs
    keep = []
    for index, (old_text, new_text) in enumerate(zip(old_texts, new_texts, strict=True)):
        if old_text == new_text:
            continue
        if old_text.split(" ", 1)[0] != new_text.split(" ", 1)[0]:
            return None
        keep.append(index)
    old_fields = old.fields([old_words[i] for i in keep])
    new_fields = new.fields([new_words[i] for i in keep])
    return old_fields, new_fields


def _texts_in_steps(image: PEImage, code: bytes, code_rva: int) -> Iterator[tuple[int, int, str]]:
    """``image.arch.instruction_texts(code, code_rva)``, one item at a time, decoded a
    piece of the code at a time (the first pieces small): a comparison that fails early
    decodes little. A decode stops at the first byte that does not start an
    instruction, or at one cut off by the piece's end, so each piece starts where the
    last instruction ended; a piece of which nothing decodes ends the stream."""
    at, step = 0, _FIRST_STEP
    while at < len(code):
        texts = image.arch.instruction_texts(code[at : at + step], code_rva + at)
        if not texts:
            return
        for offset, size, text in texts:
            yield at + offset, size, text
        last_offset, last_size, _ = texts[-1]
        at += last_offset + last_size
        step = min(step * 2, _LAST_STEP)


def _stream_fields(
    old: PEImage,
    new: PEImage,
    old_part: tuple[int, bytes],
    new_part: tuple[int, bytes],
    bases: tuple[frozenset[int], frozenset[int]],
) -> tuple[_Fields, _Fields] | None:
    """Variable-width instructions of one part (RVA, code) of each build: paired in order
    as they are decoded, the field shapes and offsets of those whose text differs (None
    at the first pair whose mnemonics differ, or if the counts do). ``bases``: the
    registers each build's function loads with the image base."""
    (old_rva, old_code), (new_rva, new_code) = old_part, new_part
    differing = []
    paired = 0
    for old_item, new_item in itertools.zip_longest(
        _texts_in_steps(old, old_code, old_rva), _texts_in_steps(new, new_code, new_rva)
    ):
        if old_item is None or new_item is None:
            return None
        paired += 1
        if old_item[2] == new_item[2]:
            continue
        if old_item[2].split(" ", 1)[0] != new_item[2].split(" ", 1)[0]:
            return None
        differing.append((old_item, new_item))
    if not paired:
        return None  # not one instruction
    a: _Fields = []
    b: _Fields = []
    old_bases, new_bases = bases
    # Only the instructions whose text differs are decoded in detail.
    for (old_at, old_size, _), (new_at, new_size, _) in differing:
        a += old.arch.field_offsets(
            old_code[old_at : old_at + old_size], old_rva + old_at, old_bases
        )
        b += new.arch.field_offsets(
            new_code[new_at : new_at + new_size], new_rva + new_at, new_bases
        )
    return a, b


def _image_bases(
    image: PEImage, parts: list[tuple[int, int]], codes: list[bytes]
) -> frozenset[int]:
    """The registers a function's parts load with the image base."""
    found: set[int] = set()
    for (rva, _), code in zip(parts, codes, strict=True):
        found |= image.arch.image_base_registers(code, rva)
    return frozenset(found)


def _only_shift(
    old: PEImage, new: PEImage, change: FunctionChange, words: tuple[_Words, _Words]
) -> tuple[int, int] | None:
    """(shift, lowest old offset shifted) if the function's two builds differ only in
    field offsets, all moved the same way (the smallest shift names it); else None."""
    assert change.old is not None and change.new is not None
    # Every part of the function, the entry first: a difference in any part that is not
    # an offset's is a change of the code, not of a layout.
    old_parts = [(change.old.rva, change.old.size)] + [
        (f.rva, f.size) for f in change.old.fragments
    ]
    new_parts = [(change.new.rva, change.new.size)] + [
        (f.rva, f.size) for f in change.new.fragments
    ]
    if len(old_parts) != len(new_parts):
        return None
    if max(sum(s for _, s in old_parts), sum(s for _, s in new_parts)) > _MAX_FUNCTION:
        return None
    a: _Fields = []
    b: _Fields = []
    changed = False
    old_codes = [old.read(rva, size) for rva, size in old_parts]
    new_codes = [new.read(rva, size) for rva, size in new_parts]
    # The image base may be loaded in one part and indexed from in another.
    bases = (_image_bases(old, old_parts, old_codes), _image_bases(new, new_parts, new_codes))
    for (old_rva, old_size), (new_rva, new_size), old_code, new_code in zip(
        old_parts, new_parts, old_codes, new_codes, strict=True
    ):
        if old.arch.instruction_alignment > 1:
            if old_size != new_size:
                return None  # fixed-width instructions: another count of them
            if old_code == new_code:
                continue
            fields = _words_fields(words[0], words[1], old_code, new_code)
        else:
            fields = _stream_fields(old, new, (old_rva, old_code), (new_rva, new_code), bases)
        if fields is None:
            return None
        changed = True
        a += fields[0]
        b += fields[1]
    if not changed or len(a) != len(b):
        return None
    shifts: set[int] = set()
    lowest: int | None = None
    accessed = False  # a load or store moved, not only an address computed
    for (old_shape, old_offsets), (new_shape, new_offsets) in zip(a, b, strict=True):
        if old_shape != new_shape or len(old_offsets) != len(new_offsets):
            return None
        for x, y in zip(old_offsets, new_offsets, strict=True):
            if x != y:
                shifts.add(y - x)
                lowest = x if lowest is None else min(lowest, x)
                accessed = accessed or "[" in new_shape
    if not accessed or lowest is None or (min(shifts) < 0 < max(shifts)):
        return None
    # Offsets past two inserted fields (or an embedded structure that grew, inside
    # another) move by more: the function belongs with the smallest shift.
    return min(shifts, key=abs), lowest


def layout_shifts(
    old: PEImage, new: PEImage, changes: tuple[FunctionChange, ...]
) -> list[LayoutShift]:
    """Every shift of field offsets that at least MIN_FUNCTIONS modified functions share
    as their only difference, largest group first."""
    groups: dict[int, list[tuple[int, FunctionChange]]] = defaultdict(list)
    words = (_Words(old), _Words(new))
    for change in changes:
        if change.status != Status.MODIFIED or change.old is None or change.new is None:
            continue
        if change.differing_references is not None or change.reason != "code differs":
            continue  # the same code, naming something else: no offset moved
        found = _only_shift(old, new, change, words)
        if found is not None:
            groups[found[0]].append((found[1], change))
    return sorted(
        (
            LayoutShift(shift, min(o for o, _ in members), tuple(c for _, c in members))
            for shift, members in groups.items()
            if len(members) >= MIN_FUNCTIONS
        ),
        key=lambda s: (-len(s.functions), s.shift),
    )
