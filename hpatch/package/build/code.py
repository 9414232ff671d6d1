"""The carried code: each function's fields to rebind (checked against the diff's own
decode), its runs copied into the region, and range-extension veneers for the short
branches that leave it."""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from functools import cached_property

from hpatch.arch import Reference, RefKind
from hpatch.arch.relocate import CodeFixup, RelocationError, ShortBranch
from hpatch.arch.rewrite import Fixup
from hpatch.blockers import BlockerCause, BlockerKind, function_label
from hpatch.diff.classify import FunctionChange, Status
from hpatch.image import DataKind
from hpatch.package.build.binding import Binder
from hpatch.package.build.context import Context, Stage, runs
from hpatch.package.build.region import PAGE
from hpatch.package.model import (
    NO_RVA,
    Blob,
    BlobKind,
    FixupEntry,
    FunctionStatus,
    Part,
    PatchFunction,
)

_PART_ALIGNMENT = 16
#: The entry width of each compressed jump table kind.
_PACKED_WIDTH = {DataKind.JUMP_TABLE_BYTES: 1, DataKind.JUMP_TABLE_HALVES: 2}

Branch = ShortBranch | CodeFixup


@dataclass(frozen=True, slots=True)
class Veneer:
    """A range-extension veneer in the region: an unconditional jump to ``target_rva``
    of the new image, at region ``offset``, for the short branches beside it that
    cannot reach their target from the patch region (``site_rva``: the first of them)."""

    offset: int
    target_rva: int
    site_rva: int
    field_rva: int


class CodeStage(Stage):
    """Decodes, places and veneers the carried functions."""

    def __init__(self, context: Context, binder: Binder) -> None:
        super().__init__(context, binder)
        self.veneers: list[Veneer] = []
        #: Where the last veneer placed after a function's runs ends, by new RVA.
        self.veneers_end: dict[int, int] = {}

    # fixups of the code ---------------------------------------------------------------

    def code_fixups(self, change: FunctionChange) -> tuple[list[CodeFixup], list[ShortBranch]]:
        """The fields of a carried function to rebind, and its short branches that leave
        the code with no fixup kind to write them (x64 rel8)."""
        function = change.new
        assert function is not None
        read = self.context.read
        found: list[CodeFixup] = []
        short: list[ShortBranch] = []
        indirect: set[int] = set()
        for data in function.inline_data:
            limit = data.rva + data.size
            if data.kind == DataKind.JUMP_TABLE:
                indirect.update(self.arch.jump_table_targets(read, data.rva, 0, 1 << 32, limit))
            elif data.kind in _PACKED_WIDTH:
                indirect.update(
                    self.arch.packed_table_targets(
                        read, data.rva, _PACKED_WIDTH[data.kind], 0, 1 << 32, limit
                    )
                )
        spans = [(part_start, code_end) for part_start, _, code_end in function.part_ranges]
        for run in runs(function):
            start, end = run[0][0], run[-1][1]
            inside = sorted(
                (d for d in function.inline_data if start <= d.rva < end), key=lambda d: d.rva
            )
            instructions = []
            for part_start, _part_end, code_end in run:
                position = part_start
                for data in inside:
                    if not part_start <= data.rva < code_end:
                        continue
                    if data.rva > position:
                        instructions.append((position, data.rva))
                    position = max(position, data.rva + data.size)
                if position < code_end:
                    instructions.append((position, code_end))
            last_start, last_end, last_code_end = run[-1]
            if last_code_end == last_end and self.arch.runs_on(
                read, last_start, last_code_end, spans, indirect
            ):
                # The next instruction (past any padding) is other code: a copy would run
                # on into whatever follows it in the region, and a jump back placed after
                # it would run in the function's frame outside every unwind record.
                raise RelocationError(
                    f"the code at 0x{last_start:x}..0x{last_end:x} runs on past its end, "
                    f"into 0x{last_end:x}, which is not copied with it"
                )
            found.extend(
                self.arch.code_fixups(
                    read(start, end - start),
                    start,
                    instructions,
                    (start, end),
                    self.context.relocated,
                    self.context.new.image_base,
                    indirect,
                    short,
                    self.callee_reads,
                )
            )
            for data in inside:
                if data.kind == DataKind.JUMP_TABLE_RVA:
                    content = read(data.rva, data.size)
                    for index, (value,) in enumerate(struct.iter_unpack("<I", content)):
                        found.append(
                            CodeFixup(data.rva + 4 * index, self.arch.rva_fixup, value, data.rva)
                        )
        return found, short

    def callee_reads(self, callee: int, registers: frozenset[int]) -> bool:
        """Whether the new build's function at ``callee`` may read one of ``registers``
        before writing it (what a page left in an argument register at a call needs)."""
        return self.arch.registers_read_first(self.context.read, callee, registers)

    def check_against_fingerprint(
        self, change: FunctionChange, fixups: list[CodeFixup], short: list[ShortBranch]
    ) -> bool:
        """The fixups and short branches (an independent decode) cover every reference
        the diff saw."""
        function = change.new
        assert function is not None
        fingerprint = self.context.diff.correspondence.new.fingerprints[function.rva]
        by_site: dict[int, set[int]] = {}
        kinds: dict[int, set[Fixup]] = {}
        for fixup in fixups:
            by_site.setdefault(fixup.site_rva, set()).add(fixup.target_rva)
            kinds.setdefault(fixup.site_rva, set()).add(fixup.kind)
        for branch in short:
            by_site.setdefault(branch.site_rva, set()).add(branch.target_rva)
        spans = [(run[0][0], run[-1][1]) for run in runs(function)]
        pages = [
            (fixup.site_rva, fixup.target_rva // PAGE)
            for fixup in fixups
            if fixup.kind == Fixup.ARM64_PAGEBASE_REL21
        ]
        for reference in fingerprint.references:
            targets = by_site.get(reference.site_rva, set())
            if reference.target_rva in targets:
                continue
            if reference.kind == RefKind.ADDRESS and any(
                t // PAGE == reference.target_rva // PAGE for t in targets
            ):
                continue
            if not targets and _own(spans, reference):
                continue  # site and target are copied together: the bytes stay right
            # The fingerprint takes a register for an ADRP's page until the next write
            # in address order; the relocator follows the page along the control flow.
            # Where they part at a site the relocator completes some other page, or
            # none, after an ADRP of the fingerprint's page, the scan went on along a
            # path the code does not take (the register is set anew on every path to
            # the site): the relocator's answer stands.
            start = next((lo for lo, hi in spans if lo <= reference.site_rva < hi), None)
            if (
                reference.kind == RefKind.ADDRESS
                and start is not None
                and kinds.get(reference.site_rva, set())
                <= {Fixup.ARM64_PAGEOFFSET_12A, Fixup.ARM64_PAGEOFFSET_12L}
                and any(
                    start <= site < reference.site_rva and page == reference.target_rva // PAGE
                    for site, page in pages
                )
            ):
                continue
            self.blockers.add(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.FIELD_NOT_LOCATED,
                f"{function_label(function)} at 0x{reference.site_rva:x}",
                f"the {reference.kind.name.lower()} reference to 0x{reference.target_rva:x} has "
                "no field hpatch can locate to rebind",
                function=function_label(function),
                rva=reference.site_rva,
                target_rva=reference.target_rva,
            )
            return False
        return True

    # branches that leave the carried code ----------------------------------------------

    def branch_out_of_reach(self, branch: ShortBranch, why: str) -> None:
        """Refuse a short branch leaving the carried code that no copy can serve."""
        self.blockers.reference(
            BlockerCause.SHORT_REFERENCE_OUT_OF_REACH,
            self.blockers.function_of(branch.site_rva) or f"0x{branch.site_rva:x}",
            f"the {8 * branch.field_size}-bit branch at 0x{branch.site_rva:x} leaves the "
            f"code for 0x{branch.target_rva:x}, {why}",
            site_rva=branch.site_rva,
            target_rva=branch.target_rva,
        )

    def far_branches(self, fixups: list[CodeFixup], short: list[ShortBranch]) -> list[Branch]:
        """The branches of a carried function that go through a veneer: each short branch
        no fixup kind writes (x64 rel8), and each conditional branch whose kind reaches
        less far than the region may lie from the image (ARM64 B.cond, CBZ/CBNZ,
        TBZ/TBNZ) to code the package does not carry, when it leads to a function's
        entry. That is a tail call, made with the caller's frame gone: the veneer, which
        no unwind record covers, runs where the stack is as a leaf's, which is how an
        unwinder takes code outside every record. A short branch into the middle of
        other code keeps its blocker."""
        far: list[Branch] = []
        for branch in short:
            if self.at_entry(branch.target_rva):
                far.append(branch)
                continue
            self.branch_out_of_reach(branch, "no function's entry, and cannot reach a copy")
        for fixup in fixups:
            if (
                self.arch.extends_through_veneer(self.context.read, fixup)
                and not self.is_carried(fixup.target_rva)
                and self.at_entry(fixup.target_rva)
            ):
                far.append(fixup)
        return far

    def at_entry(self, new_rva: int) -> bool:
        """Whether ``new_rva`` is the entry of one of the new build's functions."""
        function = self.context.new.function_at(new_rva)
        return function is not None and function.rva == new_rva

    @cached_property
    def carried_ranges(self) -> list[tuple[int, int]]:
        """The new RVA ranges of every carried function's parts, sorted."""
        return sorted(
            (start, end)
            for change in self.context.carried
            for start, end, _ in change.new.part_ranges  # type: ignore[union-attr]
        )

    def is_carried(self, new_rva: int) -> bool:
        """Whether ``new_rva`` lies in a part of a function the package carries."""
        index = bisect.bisect_right(self.carried_ranges, (new_rva, 1 << 62)) - 1
        return index >= 0 and new_rva < self.carried_ranges[index][1]

    # placing ---------------------------------------------------------------------------

    def place(self, far: dict[int, list[Branch]]) -> list[PatchFunction]:
        """Every carried function's runs, each followed by the veneers of the branches in
        it that ``far`` (by function new RVA) sends through one."""
        region = self.region
        functions = []
        for change in self.context.carried:
            function = change.new
            assert function is not None
            parts = []
            for run in runs(function):
                start, end = run[0][0], run[-1][1]
                offset = region.place(
                    self.context.read(start, end - start), start, _PART_ALIGNMENT, BlobKind.CODE
                )
                parts += [Part(offset + p[0] - start, p[1] - p[0], p[0]) for p in run]
                leaving = [b for b in far.get(function.rva, ()) if start <= b.site_rva < end]
                if leaving:
                    self.place_veneers(leaving, offset - start)
                    self.veneers_end[function.rva] = len(region)
            parts.sort(key=lambda p: p.new_rva != function.rva)
            old = change.old
            functions.append(
                PatchFunction(
                    status=FunctionStatus.MODIFIED
                    if change.status == Status.MODIFIED
                    else FunctionStatus.ADDED,
                    old_rva=old.rva if old is not None else NO_RVA,
                    old_size=old.extent_end - old.rva if old is not None else 0,
                    new_rva=function.rva,
                    name=function.name or (old.name if old is not None and old.name else ""),
                    parts=tuple(parts),
                )
            )
        # Each run was appended as its own CODE blob; join each function's runs into
        # one blob so the package holds one code blob per function.
        region.blobs = self._join_code_blobs(functions)
        return functions

    def _join_code_blobs(self, functions: list[PatchFunction]) -> list[Blob]:
        region = self.region
        joined = [b for b in region.blobs if b.kind == BlobKind.DATA]  # placed before the code
        for function in functions:
            start = min(p.offset for p in function.parts)
            end = max(p.offset + p.size for p in function.parts)
            end = max(end, self.veneers_end.get(function.new_rva, end))
            joined.append(Blob(BlobKind.CODE, start, bytes(region.data[start:end])))
        return joined

    def place_veneers(self, branches: list[Branch], delta: int) -> None:
        """Range-extension veneers right after the run just placed (``delta``: its region
        offset less its new RVA), one per target, for ``branches`` in it. A field no
        fixup kind writes (x64 rel8) is pointed at its veneer here; any other is bound
        to it as a REGION fixup (Binder.add_fixup)."""
        region = self.region
        code, _at, _kind = self.arch.veneer()
        placed: dict[int, int] = {}
        for branch in sorted(branches, key=lambda b: (b.target_rva, b.field_rva)):
            offset = placed.get(branch.target_rva)
            if offset is None:
                offset = region.place(code, None, self.arch.instruction_alignment, BlobKind.CODE)
                placed[branch.target_rva] = offset
                self.veneers.append(
                    Veneer(offset, branch.target_rva, branch.site_rva, branch.field_rva)
                )
            region.veneer_of[branch.field_rva] = offset
            if not isinstance(branch, ShortBranch):
                continue
            field = branch.field_rva + delta
            distance = offset - (field + branch.field_size)
            limit = 1 << (8 * branch.field_size - 1)
            if not -limit <= distance < limit:
                self.branch_out_of_reach(
                    branch, "and the veneer after its copy lies out of its reach"
                )
                continue
            region.data[field : field + branch.field_size] = distance.to_bytes(
                branch.field_size, "little", signed=True
            )

    def bind_veneers(self) -> None:
        """The fixup that sends each veneer to its target, bound as the branch's would be."""
        _code, at, kind = self.arch.veneer()
        for veneer in self.veneers:
            where = self.blockers.function_of(veneer.site_rva) or f"0x{veneer.site_rva:x}"
            bound = self.binder.bind(
                where, CodeFixup(veneer.field_rva, kind, veneer.target_rva, veneer.site_rva)
            )
            if bound is not None:
                offset = veneer.offset + at
                self.region.fixups[offset] = FixupEntry(offset, kind, bound[0], bound[1])


def _own(spans: list[tuple[int, int]], reference: Reference) -> bool:
    """Whether site and target of ``reference`` lie in one run of its function."""
    return any(
        start <= reference.site_rva < end and start <= reference.target_rva < end
        for start, end in spans
    )
