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

from collections import defaultdict
from dataclasses import dataclass

from hpatch.diff.classify import FunctionChange, Status
from hpatch.image import PEImage

#: Functions sharing one shift before it counts as a structure's layout.
MIN_FUNCTIONS = 3
#: Functions larger than this are not decoded for it.
_MAX_FUNCTION = 0x10000


@dataclass(frozen=True, slots=True)
class LayoutShift:
    """Field offsets from ``first_offset`` on moved by ``shift`` bytes in ``functions``."""

    shift: int
    first_offset: int
    functions: tuple[FunctionChange, ...]


_Field = tuple[str, tuple[int, ...]]
_Fields = list[_Field]


class _Words:
    """One build's fixed-width instruction words, each decoded once: the text and the
    fields of a word do not depend on where it sits (see ``_words_fields``), and the
    functions a structure's change touches share most of their differing words."""

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


def _stream_fields(
    old: PEImage, new: PEImage, change: FunctionChange, old_code: bytes, new_code: bytes
) -> tuple[_Fields, _Fields] | None:
    """Variable-width instructions: decoded whole, paired in order, the field shapes and
    offsets of those whose text differs."""
    assert change.old is not None and change.new is not None
    old_texts = old.arch.instruction_texts(old_code, change.old.rva)
    new_texts = new.arch.instruction_texts(new_code, change.new.rva)
    if not old_texts or len(old_texts) != len(new_texts):
        return None
    a: _Fields = []
    b: _Fields = []
    # Only the instructions whose text differs are decoded in detail.
    for (old_at, old_size, old_text), (new_at, new_size, new_text) in zip(
        old_texts, new_texts, strict=True
    ):
        if old_text == new_text:
            continue
        if old_text.split(" ", 1)[0] != new_text.split(" ", 1)[0]:
            return None
        a += old.arch.field_offsets(old_code[old_at : old_at + old_size], change.old.rva + old_at)
        b += new.arch.field_offsets(new_code[new_at : new_at + new_size], change.new.rva + new_at)
    return a, b


def _only_shift(
    old: PEImage, new: PEImage, change: FunctionChange, words: tuple[_Words, _Words]
) -> tuple[int, int] | None:
    """(shift, lowest old offset shifted) if the function's two builds differ only in
    field offsets, all moved the same way (the smallest shift names it); else None."""
    assert change.old is not None and change.new is not None
    if max(change.old.size, change.new.size) > _MAX_FUNCTION:
        return None
    old_code = old.read(change.old.rva, change.old.size)
    new_code = new.read(change.new.rva, change.new.size)
    if old.arch.instruction_alignment > 1:
        if change.old.size != change.new.size:
            return None  # fixed-width instructions: another count of them
        fields = _words_fields(words[0], words[1], old_code, new_code)
    else:
        fields = _stream_fields(old, new, change, old_code, new_code)
    if fields is None:
        return None
    a, b = fields
    if len(a) != len(b):
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
