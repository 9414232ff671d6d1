"""Matching the functions of two builds without trusting addresses.

Rules, in confidence order, each re-run after the call graph spreads new matches
(BinDiff's loop): equal names (exports, COFF symbols, import thunks) and the entry
points, unique equal fingerprints, unique equal structural signatures, callees paired
by position from matched callers, then the unmatched functions between two matched
neighbours paired in order. A candidate that is not unique on both sides is never taken.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

from hpatch.arch import RefKind
from hpatch.diff.fingerprint import FunctionFingerprint
from hpatch.diff.references import reference_rows
from hpatch.image import PEImage


class MatchRule(Enum):
    """Why two functions were paired."""

    NAME = "name"
    ENTRY_POINT = "entry_point"
    FINGERPRINT = "fingerprint"
    STRUCTURE = "structure"
    CALL_GRAPH = "call_graph"
    DATA_SLOT = "data_slot"
    NEIGHBOURHOOD = "neighbourhood"


CONFIDENCE = {
    MatchRule.NAME: 1.0,
    MatchRule.ENTRY_POINT: 1.0,
    MatchRule.FINGERPRINT: 0.95,
    MatchRule.STRUCTURE: 0.8,
    MatchRule.CALL_GRAPH: 0.7,
    MatchRule.DATA_SLOT: 0.65,
    MatchRule.NEIGHBOURHOOD: 0.5,
}
#: Neighbours are paired only if their sizes in instructions are this close.
_SIZE_RATIO = 2.0
_CONSTANT_BYTES = 64
_MAX_OBJECT = 4096
#: Bytes a C string may run past a label inside it before its NUL.
_MAX_STRING = 1024
_CONTROL = bytes(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)) + b"\x7f"


def _is_text(data: bytes) -> bool:
    """Valid UTF-8 without control characters (but tabs and line breaks)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(data.translate(None, _CONTROL)) == len(data)


def c_string(image: PEImage, rva: int) -> bytes | None:
    """The text of the C string at ``rva`` in read-only data (without its NUL), or None
    if the bytes there are not text ending in a NUL within _MAX_STRING bytes."""
    section = image.section_at(rva)
    if section is None or section.is_executable or section.is_writable:
        return None
    text = bytes(section.data[rva - section.rva : rva - section.rva + _MAX_STRING])
    end = text.find(b"\0")
    if end < 0 or not _is_text(bytes(text[:end])):
        return None
    return bytes(text[:end])


@dataclass(frozen=True, slots=True)
class Match:
    """An old function paired with a new one, by ``rule``."""

    old_rva: int
    new_rva: int
    rule: MatchRule
    confidence: float


class Side:
    """One build's functions, indexed the ways matching needs."""

    def __init__(self, image: PEImage, fingerprints: Iterable[FunctionFingerprint]) -> None:
        self.image = image
        self.fingerprints = {f.rva: f for f in fingerprints}
        # Each entry as the one int object the fingerprints hold: the indexes below
        # share it instead of holding an int per reference.
        entries = {rva: rva for rva in self.fingerprints}
        call = RefKind.CALL
        #: Every function entry each function names, in order: calls, tail jumps and
        #: addresses taken (callbacks handed on); and the kind of each reference.
        self.named_targets: dict[int, tuple[int, ...]] = {}
        self.named_kinds: dict[int, bytes] = {}
        #: The functions that name each function entry (the reverse of named_targets).
        self.namers: dict[int, list[int]] = defaultdict(list)
        #: How many calls each function entry receives.
        self.calls_in: Counter[int] = Counter()
        for rva, fingerprint in self.fingerprints.items():
            named = [
                (kind, entry)
                for _, kind, target in reference_rows(fingerprint.references)
                if (entry := entries.get(target)) is not None
            ]
            if not named:
                self.named_targets[rva], self.named_kinds[rva] = (), b""
                continue
            targets = self.named_targets[rva] = tuple([entry for _, entry in named])
            self.named_kinds[rva] = bytes([kind for kind, _ in named])
            self.calls_in.update([entry for kind, entry in named if kind == call])
            for target in set(targets):
                if target != rva:
                    self.namers[target].append(rva)
        self._signatures: dict[int, Hashable] = {}
        #: target RVA -> digest of the read-only constant there, or None if none is.
        self._constant_digests: dict[int, bytes | None] = {}
        self._extents: dict[int, int] = {}

    def names(self) -> dict[int, str]:
        return {rva: f.function.name for rva, f in self.fingerprints.items() if f.function.name}

    @cached_property
    def labels(self) -> list[int]:
        """Sorted places where some object starts: every address code references, every
        relocated field and the address it holds, and each section's bounds."""
        found: set[int] = set()
        for fingerprint in self.fingerprints.values():
            found.update([target for _, _, target in reference_rows(fingerprint.references)])
        image = self.image
        for field in self.relocated:
            found.add(field)
            found.add(int.from_bytes(image.read(field, 8), "little") - image.image_base)
        for section in image.sections:
            found.update((section.rva, section.rva + section.virtual_size))
        found.update(image.structure_bounds)
        return sorted(found)

    @cached_property
    def relocated(self) -> list[int]:
        """Sorted RVAs of the image's relocated (DIR64) fields."""
        return sorted(r.rva for r in self.image.relocations)

    def pointer_at(self, field: int) -> int:
        """The RVA the relocated 8-byte field at ``field`` holds."""
        return int.from_bytes(self.image.read(field, 8), "little") - self.image.image_base

    def data_extent(self, rva: int) -> int:
        """End of the object at ``rva``: the next label, within its section and 4 KiB."""
        end = self._extents.get(rva)
        if end is None:
            end = self._extents[rva] = self._data_extent(rva)
        return end

    def _data_extent(self, rva: int) -> int:
        section = self.image.section_at(rva)
        if section is None:
            return rva
        index = bisect.bisect_right(self.labels, rva)
        end = self.labels[index] if index < len(self.labels) else section.end_rva
        end = min(end, section.rva + section.virtual_size, rva + _MAX_OBJECT)
        if section.is_executable or section.is_writable:
            return end
        # A C string runs to its NUL, whatever points into it: code may name a
        # place inside one (sqlite3's 20+sqlite3_sourceid()), and that label must
        # not cut off the rest of the text the function returns.
        head = bytes(section.data[rva - section.rva : end - section.rva])
        if not head or b"\0" in head or not _is_text(bytes(head)):
            return end
        tail = bytes(section.data[end - section.rva : end - section.rva + _MAX_STRING])
        nul = tail.find(b"\0")
        if nul < 0 or not _is_text(bytes(tail[:nul])):
            return end
        return end + nul + 1

    def constant(self, rva: int) -> bytes | None:
        """Bytes of the read-only data at ``rva`` (up to a NUL), or None if not read-only."""
        section = self.image.section_at(rva)
        if section is None or section.is_writable or section.is_executable:
            return None
        content = bytes(section.data[rva - section.rva : rva - section.rva + _CONSTANT_BYTES])
        return content.split(b"\0", 1)[0] if b"\0" in content else content

    def signature(self, rva: int) -> Hashable:
        """Structure that survives moves: size in instructions, reference kinds, the
        read-only constants referenced, and the number of calls in and out."""
        if rva not in self._signatures:
            self._signatures[rva] = self._signature(rva)
        return self._signatures[rva]

    def _signature(self, rva: int) -> Hashable:
        fingerprint = self.fingerprints[rva]
        digests = self._constant_digests
        constants = []
        kinds: dict[int, int] = {}
        for _, kind, target in reference_rows(fingerprint.references):
            kinds[kind] = kinds.get(kind, 0) + 1
            if target in digests:
                digest = digests[target]
            else:
                # A callee or a global is referenced by many functions: read it once.
                content = self.constant(target)
                digest = digests[target] = (
                    hashlib.blake2b(content, digest_size=8).digest() if content else None
                )
            if digest is not None:
                constants.append(digest)
        constants.sort()
        return (
            fingerprint.instruction_count,
            tuple(sorted(kinds.items())),
            tuple(constants),
            self.named_kinds[rva].count(RefKind.CALL),
            self.calls_in[rva],
            len(fingerprint.function.fragments),
        )


KeyOf = Callable[[int], Hashable | None]


class _KeyPass:
    """One matching rule by key: the unmatched functions of each side grouped by key,
    kept up to date as matches are taken instead of regrouped every round.

    A pair is proposed when its key is present exactly once among the unmatched
    functions of each side. Every such pair is taken when proposed, so a key can only
    propose again once its groups lose members: only those keys are checked again.
    """

    def __init__(self, old: Iterable[int], new: Iterable[int], old_key: KeyOf, new_key: KeyOf):
        self.old_groups, self.old_values = self._group(old, old_key)
        self.new_groups, self.new_values = self._group(new, new_key)
        #: Keys whose groups changed since they were last checked (at first, all).
        self.dirty: set[Hashable] = set(self.old_groups)
        #: How much of the matcher's log of taken pairs is reflected in the groups.
        self.seen = 0

    @staticmethod
    def _group(
        rvas: Iterable[int], key: KeyOf
    ) -> tuple[dict[Hashable, set[int]], dict[int, Hashable]]:
        groups: dict[Hashable, set[int]] = defaultdict(set)
        values: dict[int, Hashable] = {}
        for rva in rvas:
            value = key(rva)
            if value is not None:
                groups[value].add(rva)
                values[rva] = value
        return groups, values

    def pairs(self, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Pairs whose key is present exactly once on each side, once ``taken`` (the
        log of every pair matched so far) is no longer among the unmatched."""
        for old_rva, new_rva in taken[self.seen :]:
            for groups, values, rva in (
                (self.old_groups, self.old_values, old_rva),
                (self.new_groups, self.new_values, new_rva),
            ):
                value = values.pop(rva, None)
                if value is not None:
                    groups[value].discard(rva)
                    self.dirty.add(value)
        self.seen = len(taken)
        found = []
        for value in self.dirty:
            olds, news = self.old_groups.get(value), self.new_groups.get(value)
            if olds is not None and news is not None and len(olds) == 1 and len(news) == 1:
                found.append((next(iter(olds)), next(iter(news))))
        self.dirty = set()
        return found


class _Matcher:
    def __init__(self, old: Side, new: Side) -> None:
        self.old, self.new = old, new
        self.forward: dict[int, Match] = {}
        self.backward: dict[int, int] = {}
        #: Every pair taken, in order: what the incremental passes catch up on.
        self.taken: list[tuple[int, int]] = []
        self.key_passes: dict[MatchRule, _KeyPass] = {}
        #: (old callee, new callee) at the same call position of matched callers,
        #: both unmatched when last looked at; and how many pairs of ``taken`` were
        #: already looked at as callers.
        self.callee_pairs: list[tuple[int, int]] = []
        self.callers_seen = 0
        #: Matched pairs that name different numbers of functions (see between_anchors).
        self.uneven_callers: list[tuple[int, int]] = []
        #: Functions held at the same data slot in both builds (computed on first use).
        self.slot_pairs: list[tuple[int, int, int, int]] | None = None
        self.slot_at: dict[tuple[int, int], tuple[int, int]] = {}

    def take(self, pairs: Iterable[tuple[int, int]], rule: MatchRule) -> int:
        taken = 0
        for old_rva, new_rva in pairs:
            if old_rva in self.forward or new_rva in self.backward:
                continue
            self.forward[old_rva] = Match(old_rva, new_rva, rule, CONFIDENCE[rule])
            self.backward[new_rva] = old_rva
            self.taken.append((old_rva, new_rva))
            taken += 1
        return taken

    def unmatched(self) -> tuple[list[int], list[int]]:
        return (
            [rva for rva in self.old.fingerprints if rva not in self.forward],
            [rva for rva in self.new.fingerprints if rva not in self.backward],
        )

    def by_key(self, keys: tuple[KeyOf, KeyOf], rule: MatchRule) -> int:
        key_pass = self.key_passes.get(rule)
        if key_pass is None:
            # Built from the functions unmatched now: matches are never undone, so
            # the others can never be proposed by this rule.
            old, new = self.unmatched()
            key_pass = self.key_passes[rule] = _KeyPass(old, new, keys[0], keys[1])
            key_pass.seen = len(self.taken)
        return self.take(sorted(key_pass.pairs(self.taken)), rule)

    def by_call_graph(self) -> int:
        """Functions named at the same position by matched functions (called, jumped to
        or taken as an address), where no pair disagrees."""
        for old_rva, new_rva in self.taken[self.callers_seen :]:
            old_named, new_named = self.old.named_targets[old_rva], self.new.named_targets[new_rva]
            if len(old_named) == len(new_named):
                self.callee_pairs.extend(
                    (a, b)
                    for a_kind, a, b_kind, b in zip(
                        self.old.named_kinds[old_rva],
                        old_named,
                        self.new.named_kinds[new_rva],
                        new_named,
                        strict=True,
                    )
                    if a_kind == b_kind
                )
            else:
                self.uneven_callers.append((old_rva, new_rva))
        self.callers_seen = len(self.taken)
        for old_rva, new_rva in self.uneven_callers:
            self.callee_pairs.extend(self.between_anchors(old_rva, new_rva))
        # A pair with either callee matched can never be proposed again.
        self.callee_pairs = [
            (old_callee, new_callee)
            for old_callee, new_callee in self.callee_pairs
            if old_callee not in self.forward and new_callee not in self.backward
        ]
        proposals: dict[int, set[int]] = defaultdict(set)
        reverse: dict[int, set[int]] = defaultdict(set)
        for old_callee, new_callee in self.callee_pairs:
            proposals[old_callee].add(new_callee)
            reverse[new_callee].add(old_callee)
        pairs = [
            (old_callee, next(iter(news)))
            for old_callee, news in proposals.items()
            if len(news) == 1 and len(reverse[next(iter(news))]) == 1
        ]
        return self.take(pairs, MatchRule.CALL_GRAPH)

    def between_anchors(self, old_rva: int, new_rva: int) -> list[tuple[int, int]]:
        """For a matched pair naming different numbers of functions: the functions each
        names between two it names in the same order (already matched to each other),
        where exactly one unmatched function lies there on each side. A rewritten
        callee next to a new helper is still the one callee between the same two."""
        old_named = self.old.named_targets[old_rva]
        new_named = self.new.named_targets[new_rva]
        found = []
        old_from = new_from = 0
        for old_index in range(len(old_named) + 1):
            if old_index < len(old_named):
                match = self.forward.get(old_named[old_index])
                if match is None or match.new_rva not in new_named[new_from:]:
                    continue
                new_index = new_named.index(match.new_rva, new_from)
            else:
                new_index = len(new_named)
            olds = {t for t in old_named[old_from:old_index] if t not in self.forward}
            news = {t for t in new_named[new_from:new_index] if t not in self.backward}
            if len(olds) == 1 and len(news) == 1:
                found.append((olds.pop(), news.pop()))
            old_from, new_from = old_index + 1, new_index + 1
        return found

    def data_slots(self) -> list[tuple[int, int, int, int]]:
        """(old function, new function, old slot, new slot) for every pair of base-
        relocated pointers to function entries at the same offset of same-named data
        sections in both builds: method tables, vtables, callback arrays."""
        old, new = self.old.image, self.new.image

        def slots(image: PEImage, starts: Mapping[int, object]) -> dict[tuple[str, int], int]:
            found = {}
            for rva, target in image.pointers.items():
                section = image.section_at(rva)
                if section is not None and not section.is_executable and target in starts:
                    found[(section.name, rva - section.rva)] = target
            return found

        old_slots = slots(old, self.old.fingerprints)
        new_slots = slots(new, self.new.fingerprints)
        old_sections = {s.name: s for s in old.sections}
        new_sections = {s.name: s for s in new.sections}
        return [
            (
                old_target,
                new_slots[key],
                old_sections[key[0]].rva + key[1],
                new_sections[key[0]].rva + key[1],
            )
            for key, old_target in sorted(old_slots.items())
            if key in new_slots
        ]

    def by_data_slot(self) -> int:
        """Functions held at the same slot of the same data in both builds.

        Writable data keeps its layout in any hotpatchable update (the verdict refuses
        the rest), so a slot there is taken as it is; in read-only data, whose objects
        may move, a slot counts only next to a slot whose functions are matched to each
        other already.
        """
        if self.slot_pairs is None:
            self.slot_pairs = self.data_slots()
            self.slot_at = {(o, n): (a, b) for a, b, o, n in self.slot_pairs}
        proposals: dict[int, set[int]] = defaultdict(set)
        reverse: dict[int, set[int]] = defaultdict(set)
        for old_target, new_target, old_slot, new_slot in self.slot_pairs:
            if old_target in self.forward or new_target in self.backward:
                continue
            section = self.new.image.section_at(new_slot)
            if section is None or not section.is_writable:
                neighbours = (
                    self.slot_at.get((old_slot + step, new_slot + step)) for step in (-8, 8)
                )
                if not any(
                    pair is not None
                    and self.forward.get(pair[0]) is not None
                    and self.forward[pair[0]].new_rva == pair[1]
                    for pair in neighbours
                ):
                    continue
            proposals[old_target].add(new_target)
            reverse[new_target].add(old_target)
        pairs = [
            (old_target, next(iter(news)))
            for old_target, news in proposals.items()
            if len(news) == 1 and len(reverse[next(iter(news))]) == 1
        ]
        return self.take(pairs, MatchRule.DATA_SLOT)

    def by_counterparts(
        self,
        key_of: Callable[[Side, int, Callable[[int], int | None]], Hashable | None],
        unmatched: tuple[list[int], list[int]] | None = None,
    ) -> int:
        """Pair the unmatched functions whose keys agree once each side's matched
        functions are named alike (the old by their counterparts, the new as they are),
        where the key is unique on both sides. ``key_of(side, rva, counterpart)`` is
        None for a function it cannot key (one naming something unmatched).
        ``unmatched``: the functions worth keying, when the caller knows that the
        others' keys can have no counterpart (by default every unmatched function)."""

        def keys(
            side: Side, rvas: list[int], counterpart: Callable[[int], int | None]
        ) -> dict[Hashable, list[int]]:
            found: dict[Hashable, list[int]] = defaultdict(list)
            for rva in rvas:
                key = key_of(side, rva, counterpart)
                if key is not None:
                    found[key].append(rva)
            return found

        old_unmatched, new_unmatched = self.unmatched() if unmatched is None else unmatched
        old_keys = keys(
            self.old,
            old_unmatched,
            lambda rva: self.forward[rva].new_rva if rva in self.forward else None,
        )
        new_keys = keys(self.new, new_unmatched, lambda rva: rva if rva in self.backward else None)
        pairs = [
            (olds[0], new_keys[key][0])
            for key, olds in old_keys.items()
            if len(olds) == 1 and len(new_keys.get(key, ())) == 1
        ]
        return self.take(sorted(pairs), MatchRule.CALL_GRAPH)

    def by_callers(self) -> int:
        """Unmatched functions named by the same matched functions: when every function
        that names an old function is matched, and their counterparts are exactly
        the functions that name one new function, the pair is taken where no other
        pair shares that set. A callee rewritten beyond recognition keeps its callers."""

        def callers(
            side: Side, rva: int, counterpart: Callable[[int], int | None]
        ) -> Hashable | None:
            namers = side.namers.get(rva)
            if not namers:
                return None
            mapped = frozenset(counterpart(c) for c in namers)
            return None if None in mapped else mapped

        return self.by_counterparts(callers)

    def by_callees(self) -> int:
        """Unmatched functions with the same code that name the same matched functions in
        the same order: two wrappers identical but for the function each tail-calls
        (sqlite3's UTF-8 converters) are told apart by what they call, not by where they
        lie."""

        def callees(
            side: Side, rva: int, counterpart: Callable[[int], int | None]
        ) -> Hashable | None:
            named = side.named_targets[rva]
            if not named:
                return None
            mapped = tuple([counterpart(target) for target in named])
            if None in mapped:
                return None
            return side.fingerprints[rva].digest, side.named_kinds[rva], mapped

        # A key starts with the code's digest: only code that both sides' unmatched
        # functions have can pair, and keying the rest could not change which keys
        # are unique.
        old_unmatched, new_unmatched = self.unmatched()
        old_prints, new_prints = self.old.fingerprints, self.new.fingerprints
        shared = {old_prints[rva].digest for rva in old_unmatched} & {
            new_prints[rva].digest for rva in new_unmatched
        }
        return self.by_counterparts(
            callees,
            (
                [rva for rva in old_unmatched if old_prints[rva].digest in shared],
                [rva for rva in new_unmatched if new_prints[rva].digest in shared],
            ),
        )

    def anchors(self) -> list[tuple[int, int]]:
        """Matched pairs in an order both builds agree on (longest increasing run)."""
        pairs = sorted((m.old_rva, m.new_rva) for m in self.forward.values())
        tails: list[int] = []
        tail_index: list[int] = []
        previous = [-1] * len(pairs)
        for index, (_, new_rva) in enumerate(pairs):
            position = bisect.bisect_left(tails, new_rva)
            if position == len(tails):
                tails.append(new_rva)
                tail_index.append(index)
            else:
                tails[position] = new_rva
                tail_index[position] = index
            previous[index] = tail_index[position - 1] if position else -1
        chain = []
        index = tail_index[-1] if tail_index else -1
        while index >= 0:
            chain.append(pairs[index])
            index = previous[index]
        return chain[::-1]

    def similar(self, old_rva: int, new_rva: int) -> bool:
        a = self.old.fingerprints[old_rva].instruction_count
        b = self.new.fingerprints[new_rva].instruction_count
        return max(a, b) <= _SIZE_RATIO * max(min(a, b), 1)

    def by_neighbourhood(self) -> int:
        """Between two anchors, as many unmatched functions on each side: pair them in order."""
        old_unmatched, new_unmatched = self.unmatched()
        old_order, new_order = sorted(old_unmatched), sorted(new_unmatched)
        bounds = [(-1, -1), *self.anchors(), (1 << 40, 1 << 40)]
        pairs = []
        for (old_lo, new_lo), (old_hi, new_hi) in itertools.pairwise(bounds):
            olds = old_order[
                bisect.bisect_right(old_order, old_lo) : bisect.bisect_left(old_order, old_hi)
            ]
            news = new_order[
                bisect.bisect_right(new_order, new_lo) : bisect.bisect_left(new_order, new_hi)
            ]
            if olds and len(olds) == len(news):
                pairs += [(a, b) for a, b in zip(olds, news, strict=True) if self.similar(a, b)]
        return self.take(pairs, MatchRule.NEIGHBOURHOOD)

    def run(self) -> tuple[Match, ...]:
        self.by_key((self.old.names().get, self.new.names().get), MatchRule.NAME)
        if side_has_entry(self.old, self.new):
            old_entry = self.old.image.function_at(self.old.image.entry_rva)
            new_entry = self.new.image.function_at(self.new.image.entry_rva)
            if old_entry is not None and new_entry is not None:
                self.take([(old_entry.rva, new_entry.rva)], MatchRule.ENTRY_POINT)
        old_digests = {rva: f.digest for rva, f in self.old.fingerprints.items()}
        new_digests = {rva: f.digest for rva, f in self.new.fingerprints.items()}
        digests = (old_digests.__getitem__, new_digests.__getitem__)
        signatures = (self.old.signature, self.new.signature)
        # Every round but the last takes a pair, so there are at most as many rounds as
        # functions; a long call chain takes one link a round, and the weaker rules
        # run only once the stronger ones find nothing more (a fixed number of rounds
        # ended large images before they ever ran).
        for _ in range(min(len(self.old.fingerprints), len(self.new.fingerprints)) + 1):
            taken = self.by_key(digests, MatchRule.FINGERPRINT)
            taken += self.by_key(signatures, MatchRule.STRUCTURE)
            taken += self.by_call_graph()
            if not taken:
                taken = self.by_data_slot()
            if not taken:
                taken = self.by_callees() + self.by_callers()
            if not taken:
                taken = self.by_neighbourhood()
            if not taken:
                break
        return tuple(sorted(self.forward.values(), key=lambda m: m.old_rva))


def side_has_entry(*sides: Side) -> bool:
    """True if every image names an entry point (DLLs may have none)."""
    return all(side.image.entry_rva for side in sides)


def match_functions(old: Side, new: Side) -> tuple[Match, ...]:
    """Pair the functions of two builds; functions left out are added or removed."""
    return _Matcher(old, new).run()
