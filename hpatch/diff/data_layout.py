"""Writable data layout: where each global of the old image sits in the new one, and
which bytes only the new build has.

A fix that adds a global (a counter, a quota, a table) inserts its bytes into a
writable section, and every global after it moves by as much. Without symbols the
globals are known by the places that name them (labels) and by the code that names
them: functions with identical code that name a global in both builds anchor it.
Between two anchors the shift is constant, or it grows by exactly the size of the
bytes inserted there; the insertion starts at a label of the new build, and the bytes
before and after it must be the old ones. A gap that admits no such insertion, or
more than one equally good, has no layout: the section is then compared offset by
offset (and a size change is a hazard).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hpatch.diff.match import Side
from hpatch.image import Section

#: same_bytes(old_rva, new_rva, size): the bytes are the same (pointers by meaning).
SameBytes = Callable[[int, int, int], bool]


@dataclass(frozen=True, slots=True)
class Segment:
    """New bytes [new_rva, new_rva + size) are the old bytes at old_rva."""

    old_rva: int
    new_rva: int
    size: int


@dataclass(frozen=True, slots=True)
class WritableLayout:
    """One writable section of both builds: its segments and the bytes only the new
    build has (``inserted``, [start, end) RVAs of the new image)."""

    name: str
    segments: tuple[Segment, ...]
    inserted: tuple[tuple[int, int], ...]

    def old_of(self, new_rva: int) -> int | None:
        """The old RVA of the new byte at ``new_rva``; None if only the new build has it."""
        starts = [s.new_rva for s in self.segments]
        index = bisect.bisect_right(starts, new_rva) - 1
        if index >= 0:
            segment = self.segments[index]
            if new_rva < segment.new_rva + segment.size:
                return segment.old_rva + new_rva - segment.new_rva
        return None

    def new_of(self, old_rva: int) -> int | None:
        """The new RVA of the old byte at ``old_rva``; None if the new build dropped it."""
        for segment in self.segments:
            if segment.old_rva <= old_rva < segment.old_rva + segment.size:
                return segment.new_rva + old_rva - segment.old_rva
        return None

    def insertion_at(self, new_rva: int) -> tuple[int, int] | None:
        """The inserted range holding ``new_rva``, if it is in one."""
        for start, end in self.inserted:
            if start <= new_rva < end:
                return start, end
        return None

    @property
    def moves(self) -> bool:
        return bool(self.inserted) or any(s.old_rva != s.new_rva for s in self.segments)


def unique_anchors(votes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(old, new) pairs named one way only, in either direction, sorted."""
    forward: dict[int, set[int]] = defaultdict(set)
    backward: dict[int, set[int]] = defaultdict(set)
    for old_rva, new_rva in votes:
        forward[old_rva].add(new_rva)
        backward[new_rva].add(old_rva)
    return sorted(
        (old_rva, next(iter(news)))
        for old_rva, news in forward.items()
        if len(news) == 1 and len(backward[next(iter(news))]) == 1
    )


class SectionAligner:
    """Aligns one writable section of the old build with its namesake in the new."""

    def __init__(
        self,
        old: Side,
        new: Side,
        old_section: Section,
        new_section: Section,
        same_bytes: SameBytes,
    ) -> None:
        self.old_section, self.new_section = old_section, new_section
        self.same_bytes = same_bytes
        self.old_labels = _labels_in(old.labels, old_section)
        self.new_labels = _labels_in(new.labels, new_section)
        self.new_label_set = set(self.new_labels)
        self.segments: list[Segment] = []
        self.inserted: list[tuple[int, int]] = []

    def align(self, anchors: list[tuple[int, int]]) -> WritableLayout | None:
        start = (self.old_section.rva, self.new_section.rva)
        if anchors and anchors[0] == start:
            anchors = anchors[1:]
        points = [start, *anchors]
        if any(b[0] < a[0] or b[1] <= a[1] for a, b in itertools.pairwise(points)):
            return None  # globals reordered
        for index, (a, b) in enumerate(itertools.pairwise(points)):
            if b[0] == a[0] and index:
                return None
            if not self.gap(a, b, first=not index):
                return None
        last_old, last_new = points[-1]
        old_end = self.old_section.rva + self.old_section.virtual_size
        new_end = self.new_section.rva + self.new_section.virtual_size
        if not self.gap((last_old, last_new), (old_end, new_end), tail=True):
            return None
        return WritableLayout(self.new_section.name, tuple(self.segments), tuple(self.inserted))

    def gap(
        self, a: tuple[int, int], b: tuple[int, int], *, tail: bool = False, first: bool = False
    ) -> bool:
        """Explain the bytes between two anchors (or the last one and the section end);
        only in the ``first`` gap, from the section start, may new bytes come first."""
        (a_old, a_new), (b_old, b_new) = a, b
        grown = (b_new - a_new) - (b_old - a_old)
        if grown == 0 or (tail and grown < 0):
            # The same bytes, or a section that ends earlier (alignment at its end).
            self.add(a_old, a_new, min(b_old - a_old, b_new - a_new))
            return True
        if grown < 0:
            return self.padding_dropped(a, b, -grown)
        best: list[int] = []
        best_score = -1
        low = (bisect.bisect_left if first else bisect.bisect_right)(self.new_labels, a_new)
        high = bisect.bisect_right(self.new_labels, b_new - grown)
        for start in self.new_labels[low:high]:
            score = self.score(a_old, a_new, b_old, b_new, start, grown)
            if score is None or score < best_score:
                continue
            if score > best_score:
                best, best_score = [], score
            best.append(start)
        if not best:
            return self.padding_added(a, b, grown)
        if len(best) != 1:
            return False
        start = best[0]
        before = start - a_new
        self.add(a_old, a_new, before)
        self.inserted.append((start, start + grown))
        self.add(a_old + before, start + grown, b_old - a_old - before)
        return True

    def padding_added(self, a: tuple[int, int], b: tuple[int, int], grown: int) -> bool:
        """Explain a gap that grew by alignment padding only: zero bytes no label names,
        right before a new label, the rest the old bytes."""
        (a_old, a_new), (b_old, b_new) = a, b
        found = []
        for label in _padded_labels(self.new_labels, self.new_section, a_new, b_new, grown):
            before = label - grown - a_new
            if before and not self.same_bytes(a_old, a_new, before):
                continue
            after = b_old - a_old - before
            if after and not self.same_bytes(a_old + before, label, after):
                continue
            found.append(label)
        if len(found) != 1:
            return False
        before = found[0] - grown - a_new
        self.add(a_old, a_new, before)
        self.add(a_old + before, found[0], b_old - a_old - before)
        return True

    def padding_dropped(self, a: tuple[int, int], b: tuple[int, int], dropped: int) -> bool:
        """Explain a gap that shrank by alignment padding the new build no longer needs:
        zero bytes no label names, right before an old label."""
        (a_old, a_new), (b_old, _) = a, b
        found = []
        for label in _padded_labels(self.old_labels, self.old_section, a_old, b_old, dropped):
            before = label - dropped - a_old
            if not self.same_bytes(a_old, a_new, before):
                continue
            if b_old - label and not self.same_bytes(label, a_new + before, b_old - label):
                continue
            found.append(label)
        if len(found) != 1:
            return False
        before = found[0] - dropped - a_old
        self.add(a_old, a_new, before)
        self.add(found[0], a_new + before, b_old - found[0])
        return True

    def score(
        self, a_old: int, a_new: int, b_old: int, b_new: int, start: int, grown: int
    ) -> int | None:
        """How many old labels of the gap land on new labels if the new bytes are
        inserted at ``start``; None if the bytes around the insertion differ."""
        before = start - a_new
        after = b_old - a_old - before
        if before and not self.same_bytes(a_old, a_new, before):
            return None
        if after and not self.same_bytes(a_old + before, start + grown, after):
            return None
        low = bisect.bisect_right(self.old_labels, a_old)
        high = bisect.bisect_left(self.old_labels, b_old)
        new_labels = self.new_label_set
        landed = 0
        for label in self.old_labels[low:high]:
            offset = label - a_old
            landed += (a_new + offset if offset < before else start + grown + offset - before) in (
                new_labels
            )
        return landed

    def add(self, old_rva: int, new_rva: int, size: int) -> None:
        if size > 0:
            self.segments.append(Segment(old_rva, new_rva, size))


def _padded_labels(
    labels: list[int], section: Section, start: int, end: int, size: int
) -> list[int]:
    """The labels in (start, end] that ``size`` zero bytes no label names come right
    before, those bytes after ``start``: where a gap's alignment padding can lie."""
    found = []
    for label in labels[bisect.bisect_right(labels, start) : bisect.bisect_right(labels, end)]:
        padding = label - size
        if padding <= start or labels[bisect.bisect_left(labels, padding)] != label:
            continue  # the padding would hold a label or start the gap
        if bytes(section.data[padding - section.rva : label - section.rva]).strip(b"\0"):
            continue
        found.append(label)
    return found


def _labels_in(labels: list[int], section: Section) -> list[int]:
    end = section.rva + section.virtual_size
    return labels[bisect.bisect_left(labels, section.rva) : bisect.bisect_left(labels, end)]


def learn_layouts(
    old: Side, new: Side, votes: Iterable[tuple[int, int]], same_bytes: SameBytes
) -> dict[str, WritableLayout]:
    """The layout of every writable section both builds have, by name, where one exists.

    ``votes`` are (old, new) pairs of writable addresses that code with the same
    meaning names in each build.
    """
    old_sections = {s.name: s for s in old.image.sections if s.is_writable}
    new_sections = {s.name: s for s in new.image.sections if s.is_writable}
    by_section: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for old_rva, new_rva in unique_anchors(votes):
        old_section = old.image.section_at(old_rva)
        new_section = new.image.section_at(new_rva)
        if old_section is None or new_section is None or old_section.name != new_section.name:
            continue
        if old_section.name in old_sections and new_section.name in new_sections:
            by_section[old_section.name].append((old_rva, new_rva))
    layouts = {}
    for name in sorted(set(old_sections) & set(new_sections)):
        aligner = SectionAligner(old, new, old_sections[name], new_sections[name], same_bytes)
        layout = aligner.align(by_section.get(name, []))
        if layout is not None:
            layouts[name] = layout
    return layouts
