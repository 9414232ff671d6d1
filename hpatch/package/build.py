"""Build a hotpatch package from a diff: the changed code, its data, fixups and redirects.

Every field of carried code that names an address becomes a fixup against the old
image, the patch region, or an import; anything that cannot be bound with certainty
refuses the package with a blocker, never a guess.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from hpatch import __version__
from hpatch.arch import Reference, RefKind
from hpatch.arch.arm64 import Arm64
from hpatch.arch.relocate import CodeFixup, RelocationError, ShortBranch
from hpatch.arch.rewrite import Fixup
from hpatch.arch.x64 import X64
from hpatch.blockers import Blocker, BlockerCause, BlockerKind, Build, function_label
from hpatch.diff.api import DiffResult
from hpatch.diff.classify import FunctionChange, Status
from hpatch.diff.correlate import Correlator, Resolution
from hpatch.diff.verdict import entry_room, unresolved_cause
from hpatch.errors import NotHotpatchable
from hpatch.image import DataKind, Function, PEImage
from hpatch.package import new_data
from hpatch.package.format import code_region
from hpatch.package.model import (
    FORMAT_VERSION,
    NO_RVA,
    TARGET_DIGEST_SIZE,
    Baseline,
    Blob,
    BlobKind,
    FixupEntry,
    FunctionStatus,
    ImportRef,
    NewImport,
    Package,
    Part,
    PatchFunction,
    Prerequisite,
    RedirectEntry,
    Servicing,
    TargetKind,
    UnwindRecord,
)
from hpatch.package.unwind_copy import (
    HandlerDataError,
    HandlerIdentity,
    UnwindRecordLayout,
    identify_handler,
    record_fixups,
    unwind_record_layout,
)

PAGE = 4096
REGION_ALIGNMENT = PAGE
_PART_ALIGNMENT = 16
_MAX_CONSTANT = 1 << 16
#: New read-only data carried in all, with the new data its pointers name in turn.
_MAX_CONSTANT_CLOSURE = 1 << 22
#: How far the patch region may lie from the image, per machine (``Arch.region_reach``).
REGION_REACH = {arch.machine: arch.region_reach for arch in (X64, Arm64)}
_ADDR32NB = (Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB)
_PAGE_KINDS = (
    Fixup.ARM64_PAGEBASE_REL21,
    Fixup.ARM64_PAGEOFFSET_12A,
    Fixup.ARM64_PAGEOFFSET_12L,
)
_HINT_LIMIT = 1 << 20  # bytes of old code offered as the package's compression dictionary
_HINT_WINDOW = 64 << 10
_SHORT_REACH = {
    Fixup.ARM64_BRANCH19: 1 << 20,
    Fixup.ARM64_BRANCH14: 1 << 15,
    Fixup.ARM64_REL21: 1 << 20,
}


class PackageBlocked(NotHotpatchable):
    """The update cannot be packaged; ``blockers`` say why."""

    def __init__(self, blockers: tuple[Blocker, ...]) -> None:
        super().__init__(f"{len(blockers)} blocker(s): " + "; ".join(b.reason for b in blockers))
        self.blockers = blockers


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Servicing metadata a pipeline chooses."""

    sequence: int = 1
    supersedes: tuple[int, int] | None = None
    description: str = ""
    advisory: str = ""


def baseline_of(image: PEImage) -> Baseline:
    identity = image.identity
    return Baseline(
        file_name=image.name,
        machine=identity.machine,
        time_date_stamp=identity.time_date_stamp,
        size_of_image=identity.size_of_image,
        checksum=identity.checksum,
        image_base=identity.image_base,
        mapped_sha256=bytes.fromhex(identity.mapped_sha256),
    )


def target_digest(image: PEImage) -> bytes:
    """How a package that installs ``image`` names it (Servicing.target_sha256)."""
    return bytes.fromhex(image.identity.mapped_sha256)[:TARGET_DIGEST_SIZE]


@dataclass(frozen=True, slots=True)
class _Piece:
    """A range of the new image copied into the region."""

    new_rva: int
    size: int
    offset: int


class _Layout:
    """Where each copied range of the new image lands in the region."""

    def __init__(self) -> None:
        self.pieces: list[_Piece] = []
        self._starts: list[int] = []

    def add(self, piece: _Piece) -> None:
        index = bisect.bisect_left(self._starts, piece.new_rva)
        self._starts.insert(index, piece.new_rva)
        self.pieces.insert(index, piece)

    def locate(self, new_rva: int, *, end_ok: bool = False) -> int | None:
        """Region offset of ``new_rva`` if it was copied (``end_ok``: or is a piece's end)."""
        index = bisect.bisect_right(self._starts, new_rva) - 1
        if index < 0:
            return None
        piece = self.pieces[index]
        inside = new_rva - piece.new_rva
        if inside < piece.size or (end_ok and inside == piece.size):
            return piece.offset + inside
        return None


@dataclass(frozen=True, slots=True)
class _Veneer:
    """A range-extension veneer in the region: an unconditional jump to ``target_rva``
    of the new image, at region ``offset``, for the short branches beside it that
    cannot reach their target from the patch region (``site_rva``: the first of them)."""

    offset: int
    target_rva: int
    site_rva: int
    field_rva: int


class _Builder:
    def __init__(self, diff: DiffResult, options: BuildOptions) -> None:
        self.diff, self.options = diff, options
        self.old, self.new = diff.old, diff.new
        self.arch = self.new.arch
        self.correlator = Correlator(
            diff.correspondence.old, diff.correspondence.new, diff.correspondence, diff.changes
        )
        self.blockers: list[Blocker] = []
        self.layout = _Layout()
        self.region = bytearray()
        self.blobs: list[Blob] = []
        self.fixups: dict[int, FixupEntry] = {}
        self.imports: dict[tuple[str, str, int], ImportRef] = {}
        self.new_imports: list[NewImport] = []
        self.handler_identities: dict[tuple[bool, int], HandlerIdentity] = {}
        self.veneers: list[_Veneer] = []
        #: The region offset of the veneer each short branch (by field RVA) goes through.
        self.veneer_of: dict[int, int] = {}
        #: Where the last veneer placed after a function's runs ends, by new RVA.
        self.veneers_end: dict[int, int] = {}
        self.relocated = diff.correspondence.new.relocated
        self.carried = sorted(
            (
                c
                for c in diff.changes
                if c.new is not None and c.status in (Status.MODIFIED, Status.ADDED)
            ),
            key=lambda c: c.new.rva,  # type: ignore[union-attr]
        )
        self.reference_kinds = {
            (r.site_rva, r.target_rva): r.kind
            for change in self.carried
            for r in diff.correspondence.new.fingerprints[change.new.rva].references  # type: ignore[union-attr]
        }

    # blockers -------------------------------------------------------------------------

    def block(
        self,
        kind: BlockerKind,
        cause: BlockerCause,
        where: str,
        reason: str,
        *,
        function: str | None = None,
        rva: int | None = None,
        end_rva: int | None = None,
        section: str | None = None,
        target_rva: int | None = None,
    ) -> None:
        """A blocker whose places are in the new build (a redirect's alone is in the old)."""
        self.blockers.append(
            Blocker(
                kind=kind,
                cause=cause,
                where=where,
                reason=reason,
                function=function,
                rva=rva,
                end_rva=end_rva,
                section=section,
                target_rva=target_rva,
                build=Build.NEW if rva is not None else None,
            )
        )

    def function_of(self, new_rva: int) -> str | None:
        """The label of the new build's function holding ``new_rva``, if one does."""
        function = self.new.function_at(new_rva)
        return function_label(function) if function is not None else None

    # layout ---------------------------------------------------------------------------

    def place(self, data: bytes, new_rva: int | None, alignment: int, kind: BlobKind) -> int:
        """Append ``data`` to the region; a copy of new-image bytes keeps ``new_rva``'s
        offset modulo ``alignment``. Returns its region offset."""
        offset = len(self.region)
        phase = new_rva % alignment if new_rva is not None else 0
        offset += (phase - offset) % alignment
        self.region.extend(bytes(offset - len(self.region)))
        self.region.extend(data)
        if (
            self.blobs
            and self.blobs[-1].kind == kind
            and self.blobs[-1].offset + len(self.blobs[-1].data) == offset
            and kind != BlobKind.CODE
        ):
            last = self.blobs.pop()
            self.blobs.append(Blob(kind, last.offset, last.data + data))
        else:
            self.blobs.append(Blob(kind, offset, bytes(data)))
        if new_rva is not None:
            self.layout.add(_Piece(new_rva, len(data), offset))
        return offset

    def runs(self, function: Function) -> list[list[tuple[int, int, int]]]:
        """The parts grouped into runs that touch in the new image, the entry's run first.

        A run is copied whole, so references between its parts (MSVC splits functions
        into contiguous chained fragments) keep their bytes.
        """
        ordered = sorted(function.part_ranges)
        runs: list[list[tuple[int, int, int]]] = []
        for part in ordered:
            if runs and runs[-1][-1][1] == part[0]:
                runs[-1].append(part)
            else:
                runs.append([part])
        runs.sort(key=lambda run: not any(p[0] == function.rva for p in run))
        return runs

    def place_code(self, far: dict[int, list[ShortBranch | CodeFixup]]) -> list[PatchFunction]:
        """Every carried function's runs, each followed by the veneers of the branches in
        it that ``far`` (by function new RVA) sends through one."""
        functions = []
        for change in self.carried:
            function = change.new
            assert function is not None
            parts = []
            for run in self.runs(function):
                start, end = run[0][0], run[-1][1]
                offset = self.place(
                    self.new.read(start, end - start), start, _PART_ALIGNMENT, BlobKind.CODE
                )
                parts += [Part(offset + p[0] - start, p[1] - p[0], p[0]) for p in run]
                leaving = [b for b in far.get(function.rva, ()) if start <= b.site_rva < end]
                if leaving:
                    self.place_veneers(leaving, offset - start)
                    self.veneers_end[function.rva] = len(self.region)
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
        self.blobs = self._join_code_blobs(functions)
        return functions

    def _join_code_blobs(self, functions: list[PatchFunction]) -> list[Blob]:
        joined = [b for b in self.blobs if b.kind == BlobKind.DATA]  # placed before the code
        for function in functions:
            start = min(p.offset for p in function.parts)
            end = max(p.offset + p.size for p in function.parts)
            end = max(end, self.veneers_end.get(function.new_rva, end))
            joined.append(Blob(BlobKind.CODE, start, bytes(self.region[start:end])))
        return joined

    def branch_out_of_reach(self, branch: ShortBranch, why: str) -> None:
        """Refuse a short branch leaving the carried code that no copy can serve."""
        self.block(
            BlockerKind.UNRESOLVED_REFERENCE,
            BlockerCause.SHORT_REFERENCE_OUT_OF_REACH,
            self.function_of(branch.site_rva) or f"0x{branch.site_rva:x}",
            f"the {8 * branch.field_size}-bit branch at 0x{branch.site_rva:x} leaves the "
            f"code for 0x{branch.target_rva:x}, {why}",
            function=self.function_of(branch.site_rva),
            rva=branch.site_rva,
            target_rva=branch.target_rva,
        )

    def far_branches(
        self, fixups: list[CodeFixup], short: list[ShortBranch]
    ) -> list[ShortBranch | CodeFixup]:
        """The branches of a carried function that go through a veneer: each short branch
        no fixup kind writes (x64 rel8), and each conditional branch whose kind reaches
        less far than the region may lie from the image (ARM64 B.cond, CBZ/CBNZ,
        TBZ/TBNZ) to code the package does not carry, when it leads to a function's
        entry. That is a tail call, made with the caller's frame gone: the veneer, which
        no unwind record covers, runs where the stack is as a leaf's, which is how an
        unwinder takes code outside every record. A short branch into the middle of
        other code keeps its blocker."""
        far: list[ShortBranch | CodeFixup] = []
        for branch in short:
            if self.at_entry(branch.target_rva):
                far.append(branch)
                continue
            self.branch_out_of_reach(branch, "no function's entry, and cannot reach a copy")
        for fixup in fixups:
            if (
                self.arch.extends_through_veneer(self.new.read, fixup)
                and not self.is_carried(fixup.target_rva)
                and self.at_entry(fixup.target_rva)
            ):
                far.append(fixup)
        return far

    def at_entry(self, new_rva: int) -> bool:
        """Whether ``new_rva`` is the entry of one of the new build's functions."""
        function = self.new.function_at(new_rva)
        return function is not None and function.rva == new_rva

    @cached_property
    def carried_ranges(self) -> list[tuple[int, int]]:
        """The new RVA ranges of every carried function's parts, sorted."""
        return sorted(
            (start, end)
            for change in self.carried
            for start, end, _ in change.new.part_ranges  # type: ignore[union-attr]
        )

    def is_carried(self, new_rva: int) -> bool:
        """Whether ``new_rva`` lies in a part of a function the package carries."""
        index = bisect.bisect_right(self.carried_ranges, (new_rva, 1 << 62)) - 1
        return index >= 0 and new_rva < self.carried_ranges[index][1]

    def bind_veneer(self, veneer: _Veneer) -> None:
        """The fixup that sends a veneer to its target, bound as the branch's would be."""
        _code, at, kind = self.arch.veneer()
        where = self.function_of(veneer.site_rva) or f"0x{veneer.site_rva:x}"
        bound = self.bind(
            where, CodeFixup(veneer.field_rva, kind, veneer.target_rva, veneer.site_rva)
        )
        if bound is not None:
            offset = veneer.offset + at
            self.fixups[offset] = FixupEntry(offset, kind, bound[0], bound[1])

    def place_veneers(self, branches: list[ShortBranch | CodeFixup], delta: int) -> None:
        """Range-extension veneers right after the run just placed (``delta``: its region
        offset less its new RVA), one per target, for ``branches`` in it. A field no
        fixup kind writes (x64 rel8) is pointed at its veneer here; any other is bound
        to it as a REGION fixup (add_fixup)."""
        code, _at, _kind = self.arch.veneer()
        placed: dict[int, int] = {}
        for branch in sorted(branches, key=lambda b: (b.target_rva, b.field_rva)):
            offset = placed.get(branch.target_rva)
            if offset is None:
                offset = self.place(code, None, self.arch.instruction_alignment, BlobKind.CODE)
                placed[branch.target_rva] = offset
                self.veneers.append(
                    _Veneer(offset, branch.target_rva, branch.site_rva, branch.field_rva)
                )
            self.veneer_of[branch.field_rva] = offset
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
            self.region[field : field + branch.field_size] = distance.to_bytes(
                branch.field_size, "little", signed=True
            )

    # code fixups ----------------------------------------------------------------------

    def code_fixups(self, change: FunctionChange) -> tuple[list[CodeFixup], list[ShortBranch]]:
        """The fields of a carried function to rebind, and its short branches that leave
        the code with no fixup kind to write them (x64 rel8)."""
        function = change.new
        assert function is not None
        found: list[CodeFixup] = []
        short: list[ShortBranch] = []
        indirect: set[int] = set()
        for data in function.inline_data:
            if data.kind == DataKind.JUMP_TABLE:
                limit = data.rva + data.size
                indirect.update(
                    self.arch.jump_table_targets(self.new.read, data.rva, 0, 1 << 32, limit)
                )
        for run in self.runs(function):
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
            found.extend(
                self.arch.code_fixups(
                    self.new.read(start, end - start),
                    start,
                    instructions,
                    (start, end),
                    self.relocated,
                    self.new.image_base,
                    indirect,
                    short,
                )
            )
            for data in inside:
                if data.kind == DataKind.JUMP_TABLE_RVA:
                    content = self.new.read(data.rva, data.size)
                    for index, (value,) in enumerate(struct.iter_unpack("<I", content)):
                        found.append(
                            CodeFixup(data.rva + 4 * index, self._addr32nb(), value, data.rva)
                        )
        return found, short

    def _addr32nb(self) -> Fixup:
        return self.arch.rva_fixup

    def check_against_fingerprint(
        self, change: FunctionChange, fixups: list[CodeFixup], short: list[ShortBranch]
    ) -> bool:
        """The fixups and short branches (an independent decode) cover every reference
        the diff saw."""
        function = change.new
        assert function is not None
        fingerprint = self.diff.correspondence.new.fingerprints[function.rva]
        by_site: dict[int, set[int]] = {}
        kinds: dict[int, set[Fixup]] = {}
        for fixup in fixups:
            by_site.setdefault(fixup.site_rva, set()).add(fixup.target_rva)
            kinds.setdefault(fixup.site_rva, set()).add(fixup.kind)
        for branch in short:
            by_site.setdefault(branch.site_rva, set()).add(branch.target_rva)
        runs = [(run[0][0], run[-1][1]) for run in self.runs(function)]
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
            if not targets and self._own(function, reference):
                continue  # site and target are copied together: the bytes stay right
            # The fingerprint takes a register for an ADRP's page until the next write
            # in address order; the relocator follows the page along the control flow.
            # Where they part at a site the relocator completes some other page, or
            # none, after an ADRP of the fingerprint's page, the scan went on along a
            # path the code does not take (the register is set anew on every path to
            # the site): the relocator's answer stands.
            start = next((lo for lo, hi in runs if lo <= reference.site_rva < hi), None)
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
            self.block(
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

    def _own(self, function: Function, reference: Reference) -> bool:
        for run in self.runs(function):
            start, end = run[0][0], run[-1][1]
            if start <= reference.site_rva < end and start <= reference.target_rva < end:
                return True
        return False

    # binding --------------------------------------------------------------------------

    def bind(self, where: str, fixup: CodeFixup) -> tuple[TargetKind, int] | None:
        """What the target of ``fixup`` is, in package terms; None (and a blocker) if unknown."""
        located = self.layout.locate(fixup.target_rva)
        if located is not None:
            return TargetKind.REGION, located
        section = self.new.section_at(fixup.target_rva)
        if (
            section is not None
            and not section.is_executable
            and not section.is_writable
            and self.diff.correspondence.is_jump_table(fixup.target_rva)
        ):
            # Its entries are offsets from the table to code: neither the old table nor
            # a verbatim copy would lead into the carried code, and place_constants
            # copied (and rewrote) only the tables that lead nowhere else.
            self.block(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.RODATA_JUMP_TABLE,
                where,
                f"the jump table at 0x{fixup.target_rva:x} lies in read-only data and leads "
                "out of the code the package carries; hpatch rewrites only tables whose "
                "every entry leads into it",
                function=self.function_of(fixup.site_rva),
                rva=fixup.site_rva,
                target_rva=fixup.target_rva,
            )
            return None
        resolved = self.correlator.resolve(self.reference_of(fixup))
        if resolved.resolution in (Resolution.OLD_FUNCTION, Resolution.OLD_DATA):
            assert resolved.old_rva is not None
            return TargetKind.OLD_RVA, resolved.old_rva
        if resolved.resolution == Resolution.IMPORT:
            imported = self.new_import(fixup.target_rva)
            assert resolved.old_rva is not None and imported is not None
            return TargetKind.IMPORT, self.import_index(imported, resolved.old_rva)
        if resolved.resolution == Resolution.NEW_IMPORT:
            return TargetKind.REGION, self.new_import_slot(fixup.target_rva)
        if resolved.resolution == Resolution.NEW_CONSTANT:
            offset = self.layout.locate(fixup.target_rva)
            if offset is not None:
                return TargetKind.REGION, offset
        detail = resolved.detail or {
            Resolution.PATCHED_CODE: "in a carried function, outside the bytes copied for it",
            Resolution.NEW_CONSTANT: "new read-only data the package does not carry",
        }.get(resolved.resolution, resolved.resolution.value)
        self.block(
            BlockerKind.UNRESOLVED_REFERENCE,
            unresolved_cause(resolved),
            where,
            f"the field at 0x{fixup.field_rva:x} names 0x{fixup.target_rva:x}, which cannot "
            f"be bound to the old image ({detail})",
            function=self.function_of(fixup.site_rva),
            rva=fixup.site_rva,
            target_rva=fixup.target_rva,
        )
        return None

    def reference_of(self, fixup: CodeFixup) -> Reference:
        """The diff's reference for a fixup (its kind decides some resolutions)."""
        kind = self.reference_kinds.get((fixup.site_rva, fixup.target_rva), RefKind.DATA)
        return Reference(fixup.site_rva, kind, fixup.target_rva)

    def new_import(self, iat_rva: int) -> tuple[str, str, int] | None:
        for item in self.new.imports:
            if item.iat_rva == iat_rva:
                return item.dll, item.name or "", item.ordinal or 0
        return None

    def import_index(self, key: tuple[str, str, int], old_slot: int) -> int:
        """Index of the import in order of first use (renumbered once imports are sorted)."""
        self.imports.setdefault(key, ImportRef(key[0], key[1], key[2], old_slot))
        return list(self.imports).index(key)

    def new_import_slot(self, iat_rva: int) -> int:
        """Region offset of the slot the package carries for the new build's import at
        ``iat_rva``, placed on first use (later references find it in the layout): on
        ARM64 at the IAT slot's offset in its page, as data is, so a page completed out of
        sight still reaches it."""
        item = next(i for i in self.new.imports if i.iat_rva == iat_rva)
        alignment = PAGE if self.arch.data_by_page else 8
        offset = self.place(bytes(8), iat_rva, alignment, BlobKind.IMPORT_SLOTS)
        self.new_imports.append(
            NewImport(item.dll, item.name or "", 0 if item.name else item.ordinal or 0, offset)
        )
        return offset

    # constants ------------------------------------------------------------------------

    def labels(self) -> list[int]:
        """Places in the new image where some object starts (see Side.labels)."""
        return self.diff.correspondence.new.labels

    def place_new_data(self) -> list[tuple[int, int]]:
        """Place the globals only the new build has that the carried code names (and those
        their pointers name) first in the region, on pages of their own (see new_data)."""
        spans = new_data.carried_spans(self.diff, self.correlator)
        alignment = self.data_alignment
        for (start, end), offset in zip(
            spans, new_data.span_offsets(spans, alignment), strict=True
        ):
            placed = self.place(self.new.read(start, end - start), start, alignment, BlobKind.DATA)
            assert placed == offset, "new data lands where span_offsets says"
        self.region.extend(bytes(-len(self.region) % PAGE))
        return spans

    @property
    def data_alignment(self) -> int:
        return new_data.alignment(self.arch.machine)

    def fields_in(self, start: int, end: int) -> list[int]:
        """The relocated 8-byte fields of the new image within [start, end)."""
        low = bisect.bisect_left(self.relocated, start)
        return [
            f for f in self.relocated[low : bisect.bisect_left(self.relocated, end)] if f + 8 <= end
        ]

    def data_pointers(self, spans: list[tuple[int, int]]) -> list[int]:
        """What the pointers in the carried new globals name."""
        return [self.pointer_at(f) for start, end in spans for f in self.fields_in(start, end)]

    def bind_new_data(self, spans: list[tuple[int, int]]) -> None:
        """Every pointer in the carried new globals, bound as the code's references are."""
        addr64 = self.arch.pointer_fixup
        for start, end in spans:
            for field in self.fields_in(start, end):
                self.add_fixup(
                    f"new data at 0x{start:x}",
                    CodeFixup(field, addr64, self.pointer_at(field), field),
                )

    def place_constants(
        self, fixups_by_function: dict[int, list[CodeFixup]], data_pointers: list[int]
    ) -> None:
        targets: set[int] = set()
        for pointed in data_pointers:
            if self.carries_new_data(pointed, pointed):
                targets.add(pointed)
        tables: dict[int, list[int]] = {}
        for fixups in fixups_by_function.values():
            for fixup in fixups:
                if self.layout.locate(fixup.target_rva) is not None:
                    continue
                entries = self.jump_table_entries(fixup.target_rva)
                if entries is not None:
                    if entries:  # else it leads out of the carried code: bind refuses it
                        tables[fixup.target_rva] = entries
                        targets.add(fixup.target_rva)
                    continue
                resolved = self.correlator.resolve(self.reference_of(fixup))
                if resolved.resolution == Resolution.NEW_CONSTANT:
                    targets.add(fixup.target_rva)
        if not targets:
            return
        spans = self.constant_spans(targets)
        page_runs = self.arch.data_by_page
        for start, end in spans:
            alignment = PAGE if page_runs else _PART_ALIGNMENT
            self.place(self.new.read(start, end - start), start, alignment, BlobKind.RODATA)
        # Bound once every span is placed: a pointer may name data copied after its own.
        for start, end in spans:
            for field in self.relocated[
                bisect.bisect_left(self.relocated, start) : bisect.bisect_left(self.relocated, end)
            ]:
                if field + 8 > end:
                    self.block(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_POINTER_STRADDLES,
                        f"new data at 0x{start:x}",
                        f"a pointer at 0x{field:x} straddles the end of the data copied",
                        rva=start,
                        end_rva=end,
                        section=self.new.section_at(start).name,  # type: ignore[union-attr]
                    )
                    continue
                addr64 = Fixup.X64_ADDR64 if not page_runs else Fixup.ARM64_ADDR64
                self.add_fixup(
                    f"new data at 0x{start:x}",
                    CodeFixup(field, addr64, self.pointer_at(field), field),
                )
        if tables:
            self.rewrite_jump_tables(tables)

    def pointer_at(self, field: int) -> int:
        """The RVA the relocated 8-byte field at ``field`` of the new image holds."""
        return int.from_bytes(self.new.read(field, 8), "little") - self.new.image_base

    def constant_spans(self, targets: set[int]) -> list[list[int]]:
        """The [start, end) ranges of new read-only data to carry for ``targets``, each
        object up to the next label, and with them the closure: new read-only data that
        a pointer in carried data names is carried too (bound as a REGION fixup like
        the code's), taken in rounds, each in address order, up to _MAX_CONSTANT_CLOSURE
        bytes in all."""
        labels = self.labels()
        ends: dict[int, int] = {}
        starts: list[int] = []  # of ends, sorted
        seen = set(targets)
        total = 0
        pending = sorted(targets)
        while pending:
            found: set[int] = set()
            for target in pending:
                section = self.new.section_at(target)
                assert section is not None
                index = bisect.bisect_right(labels, target)
                end = labels[index] if index < len(labels) else section.end_rva
                end = min(end, section.rva + section.virtual_size)
                if end - target > _MAX_CONSTANT:
                    self.block(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_TOO_LARGE,
                        f"new data at 0x{target:x}",
                        f"new read-only data of more than {_MAX_CONSTANT} bytes has no "
                        "provable end",
                        rva=target,
                        end_rva=end,
                        section=section.name,
                    )
                    continue
                total += end - target
                if total > _MAX_CONSTANT_CLOSURE:
                    self.block(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.NEW_DATA_TOO_LARGE,
                        f"new data at 0x{target:x}",
                        f"the new read-only data the code names, and the new data it points "
                        f"at in turn, exceed {_MAX_CONSTANT_CLOSURE} bytes",
                        rva=target,
                        end_rva=end,
                        section=section.name,
                    )
                    return []
                ends[target] = end
                bisect.insort(starts, target)
                for field in self.relocated[
                    bisect.bisect_left(self.relocated, target) : bisect.bisect_left(
                        self.relocated, end - 7
                    )
                ]:
                    pointed = self.pointer_at(field)
                    if pointed in seen or not self.carries_new_data(field, pointed):
                        continue
                    seen.add(pointed)
                    found.add(pointed)
            # What lies in data already taken is carried with it.
            pending = []
            for target in sorted(found):
                index = bisect.bisect_right(starts, target) - 1
                if index < 0 or target >= ends[starts[index]]:
                    pending.append(target)
        spans: list[list[int]] = []
        for target in sorted(ends):
            if spans and target <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], ends[target])
            else:
                spans.append([target, ends[target]])
        return spans

    def carries_new_data(self, field: int, target: int) -> bool:
        """Whether the pointer at ``field`` of carried data names new read-only data that
        is to be carried with it (the data bind would find nowhere in the old image)."""
        if self.layout.locate(target) is not None:
            return False
        section = self.new.section_at(target)
        if section is None or section.is_executable or section.is_writable:
            return False
        reference = Reference(field, RefKind.DATA, target)
        return self.correlator.resolve(reference).resolution == Resolution.NEW_CONSTANT

    def jump_table_entries(self, table_rva: int) -> list[int] | None:
        """For a jump table in read-only data (int32 offsets from the table to code, as
        clang and gcc emit on x64): the region offsets of the carried code its entries
        lead to; [] if one leads elsewhere; None if there is no such table."""
        section = self.new.section_at(table_rva)
        if (
            section is None
            or section.is_executable
            or section.is_writable
            or not self.diff.correspondence.is_jump_table(table_rva)
        ):
            return None
        labels = self.labels()
        index = bisect.bisect_right(labels, table_rva)
        limit = min(labels[index], section.end_rva) if index < len(labels) else section.end_rva
        for text in self.new.sections:
            if not text.is_executable:
                continue
            targets = self.arch.jump_table_targets(
                self.new.read, table_rva, text.rva, text.end_rva, limit
            )
            if len(targets) >= 2:
                located = [self.layout.locate(target) for target in targets]
                return [rva for rva in located if rva is not None] if None not in located else []
        return None

    def rewrite_jump_tables(self, tables: dict[int, list[int]]) -> None:
        """Point each copied table's entries at the copies of their targets: the copy lies
        at another distance from the carried code than the table from the new code."""
        for table_rva, entries in tables.items():
            at = self.layout.locate(table_rva)
            assert at is not None
            for index, target in enumerate(entries):
                self.region[at + 4 * index : at + 4 * index + 4] = struct.pack("<i", target - at)
        self.blobs = [
            Blob(b.kind, b.offset, bytes(self.region[b.offset : b.offset + len(b.data)]))
            if b.kind == BlobKind.RODATA
            else b
            for b in self.blobs
        ]

    # fixups ---------------------------------------------------------------------------

    def add_fixup(self, where: str, fixup: CodeFixup) -> tuple[TargetKind, int] | None:
        field = self.layout.locate(fixup.field_rva)
        assert field is not None, "fixup fields are in copied code or data"
        veneer = self.veneer_of.get(fixup.field_rva)
        bound = (TargetKind.REGION, veneer) if veneer is not None else self.bind(where, fixup)
        if bound is None:
            return None
        reach = _SHORT_REACH.get(fixup.kind)
        if reach is not None and (
            bound[0] != TargetKind.REGION or not -reach <= bound[1] - field < reach
        ):
            self.block(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.SHORT_REFERENCE_OUT_OF_REACH,
                where,
                f"the short-range {fixup.kind.name} at 0x{fixup.site_rva:x} leaves the code the "
                "package carries and cannot be proven to reach",
                function=self.function_of(fixup.site_rva),
                rva=fixup.site_rva,
                target_rva=fixup.target_rva,
            )
            return None
        self.fixups[field] = FixupEntry(field, fixup.kind, bound[0], bound[1])
        return bound

    def _part_index(self, rva: int) -> int:
        """Which part of its function the code at ``rva`` lies in (0: the entry's)."""
        function = self.new.function_at(rva)
        if function is None or function.rva <= rva < function.extent_end:
            return 0
        for index, fragment in enumerate(function.fragments, start=1):
            if fragment.rva <= rva < fragment.rva + fragment.size:
                return index
        return -1

    def check_pages(
        self, where: str, groups: dict[int, list[tuple[CodeFixup, tuple[TargetKind, int]]]]
    ) -> None:
        """An ADRP and its page offsets must still meet in one page once bound; a page
        handed on out of sight must keep every target's page offset."""
        for members in groups.values():
            bounds = [bound for _, bound in members]
            kinds = {
                kind if kind != TargetKind.IMPORT else TargetKind.OLD_RVA for kind, _ in bounds
            }
            pages = {self._old_rva_of(kind, value) // PAGE for kind, value in bounds}
            adrp = next(
                (f.site_rva for f, _ in members if f.kind == Fixup.ARM64_PAGEBASE_REL21),
                members[0][0].site_rva,
            )
            if len(kinds) > 1 or len(pages) > 1:
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.ADRP_PAGE_SPLIT,
                    where,
                    "an ADRP page and the offsets completing it land in different pages once "
                    "bound to the old image",
                    function=self.function_of(adrp),
                    rva=adrp,
                )
                return
            elsewhere = [
                fixup
                for fixup, _ in members
                if self._part_index(fixup.site_rva) != self._part_index(adrp)
            ]
            if elsewhere:
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.PAGE_ACROSS_PARTS,
                    where,
                    f"the page address set at 0x{adrp:x} is completed at "
                    f"0x{elsewhere[0].site_rva:x}, in another part of the function; "
                    "translation validation proves one part at a time",
                    function=self.function_of(adrp),
                    rva=adrp,
                    target_rva=elsewhere[0].target_rva,
                )
                return
            passed_on = max(fixup.passed_on for fixup, _ in members)
            if passed_on < 0:
                continue
            # What completes the page beyond the call adds the offset the new build's
            # target has: it reaches the corresponding address only if that is unchanged.
            for fixup, (kind, value) in members:
                bound = self._old_rva_of(kind, value)
                if bound % PAGE != fixup.target_rva % PAGE:
                    self.block(
                        BlockerKind.UNRESOLVED_REFERENCE,
                        BlockerCause.PAGE_PASSED_ON,
                        where,
                        f"the page address set at 0x{adrp:x} may be passed on at "
                        f"0x{passed_on:x}, beyond the code; its target 0x{fixup.target_rva:x} "
                        f"binds to {kind.name.lower()} 0x{bound:x}, at another page offset "
                        f"(0x{bound % PAGE:x}, not 0x{fixup.target_rva % PAGE:x}), so a "
                        "completion out of sight would miss it",
                        function=self.function_of(adrp),
                        rva=adrp,
                        target_rva=fixup.target_rva,
                    )
                    return

    def _old_rva_of(self, kind: TargetKind, value: int) -> int:
        if kind == TargetKind.IMPORT:
            return list(self.imports.values())[value].old_iat_rva
        return value

    # unwind ---------------------------------------------------------------------------

    def unwind(self, functions: list[PatchFunction]) -> list[UnwindRecord]:
        entries = sorted(self.new.unwind_entries, key=lambda e: e.begin_rva)
        begins = [e.begin_rva for e in entries]
        copies: dict[int, int] = {}
        records: list[tuple[int, int, int, int | None, bytes | None]] = []
        for function in functions:
            for part in function.parts:
                low = bisect.bisect_left(begins, part.new_rva)
                high = bisect.bisect_left(begins, part.new_rva + part.size)
                for entry in entries[low:high]:
                    where = f"{_label(function)} unwind"
                    if entry.end_rva > part.new_rva + part.size:
                        self.block(
                            BlockerKind.UNRESOLVED_REFERENCE,
                            BlockerCause.UNWIND_RECORD_UNBOUND,
                            where,
                            f"unwind range 0x{entry.begin_rva:x}..0x{entry.end_rva:x} runs past "
                            "the code carried",
                            function=_label(function),
                            rva=entry.begin_rva,
                            end_rva=entry.end_rva,
                        )
                        continue
                    # Offsets from the part itself: where functions are carried side by
                    # side, an end is also the next function's beginning.
                    begin = part.offset + entry.begin_rva - part.new_rva
                    end = part.offset + entry.end_rva - part.new_rva
                    raw = self.raw_pdata_word(entry.begin_rva)
                    packed = raw is not None and not self.arch.pdata_unwind_is_rva(
                        raw.to_bytes(4, "little")
                    )
                    if packed:
                        records.append((begin, end, 0, None, raw.to_bytes(4, "little")))  # type: ignore[union-attr]
                        continue
                    assert entry.unwind_rva is not None
                    copied = self.copy_unwind(where, entry.unwind_rva, copies, function)
                    if copied is not None:
                        records.append((begin, end, entry.unwind_rva, copied, None))
        table: list[UnwindRecord] = []
        entry_size = self.arch.pdata_entry_size
        addr32nb = self._addr32nb()
        # Fixups write every RVA; the unwind data's as the new build has it lets the
        # format predict where its copy is (begin and end follow from the unwind record).
        end_field, unwind_field = self.arch.pdata_end_field, self.arch.pdata_unwind_field
        table_bytes = bytearray(entry_size * len(records))
        for index, (_begin, _end, unwind_rva, _copied, packed_word) in enumerate(records):
            at = index * entry_size + unwind_field
            table_bytes[at : at + 4] = packed_word or struct.pack("<I", unwind_rva)
        if not records:
            return table
        table_offset = self.place(bytes(table_bytes), None, 4, BlobKind.FUNCTION_TABLE)
        for index, (begin_offset, end_offset, _unwind_rva, copied, packed_word) in enumerate(
            records
        ):
            at = table_offset + index * entry_size
            self.fixups[at] = FixupEntry(at, addr32nb, TargetKind.REGION, begin_offset)
            if end_field is not None:
                end_at = at + end_field
                self.fixups[end_at] = FixupEntry(end_at, addr32nb, TargetKind.REGION, end_offset)
            if packed_word is None:
                assert copied is not None
                unwind_at = at + unwind_field
                self.fixups[unwind_at] = FixupEntry(unwind_at, addr32nb, TargetKind.REGION, copied)
            table.append(UnwindRecord(at, begin_offset, end_offset))
        return table

    def raw_pdata_word(self, begin_rva: int) -> int | None:
        """The second word of the ARM64 .pdata entry starting at ``begin_rva``."""
        return self.pdata_words.get(begin_rva)

    @cached_property
    def pdata_words(self) -> dict[int, int]:
        """Begin RVA -> second word of each ARM64 .pdata entry (read once)."""
        rva, size = self.new.exception_directory
        data = self.new.read(rva, size - size % 8)
        words: dict[int, int] = {}
        for begin, word in struct.iter_unpack("<II", data):
            words.setdefault(begin, word)
        return words

    def copy_unwind(
        self, where: str, unwind_rva: int, copies: dict[int, int], function: PatchFunction
    ) -> int | None:
        """Region offset of a copy of the unwind record at ``unwind_rva`` (of ``function``),
        its handler and the handler's data bound to the old image; None if blocked."""
        if unwind_rva in copies:
            return copies[unwind_rva]
        try:
            record = unwind_record_layout(
                self.arch, self.new.read, unwind_rva, lambda rva: self.handler_identity(False, rva)
            )
        except HandlerDataError as exc:
            self.block(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.UNWIND_HANDLER_DATA,
                where,
                f"the unwind record at 0x{unwind_rva:x} {exc}",
                function=_label(function),
                rva=unwind_rva,
            )
            return None
        offset = self.place(self.new.read(unwind_rva, record.size), unwind_rva, 4, BlobKind.UNWIND)
        copies[unwind_rva] = offset
        if record.handler is not None and not self.bind_handler(where, record, offset, function):
            return None
        chained = record.chained
        if chained is not None:
            begin, end, parent_unwind = struct.unpack("<III", self.new.read(chained, 12))
            parent_copy = self.copy_unwind(where, parent_unwind & ~1, copies, function)
            begin_offset = self.in_function(function, begin, end_ok=False)
            end_offset = self.in_function(function, end, end_ok=True)
            if parent_copy is None or begin_offset is None or end_offset is None:
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.UNWIND_RECORD_UNBOUND,
                    where,
                    f"the unwind record at 0x{unwind_rva:x} chains to code that is not carried",
                    function=_label(function),
                    rva=unwind_rva,
                )
                return None
            at = offset + (chained - unwind_rva)
            for delta, target in ((0, begin_offset), (4, end_offset), (8, parent_copy)):
                self.fixups[at + delta] = FixupEntry(
                    at + delta, Fixup.X64_ADDR32NB, TargetKind.REGION, target
                )
        return offset

    def handler_identity(self, old: bool, rva: int) -> HandlerIdentity:
        """Which exception handler ``rva`` is in the old or the new image (cached)."""
        key = (old, rva)
        if key not in self.handler_identities:
            image = self.old if old else self.new
            self.handler_identities[key] = identify_handler(image, rva)
        return self.handler_identities[key]

    def bind_handler(
        self, where: str, record: UnwindRecordLayout, offset: int, function: PatchFunction
    ) -> bool:
        """Fixups for a copied record's handler and the RVAs in its data."""
        assert record.handler is not None and record.handler_offset is not None
        addr32nb = self._addr32nb()
        handler_field = record.unwind_rva + record.handler_offset
        identity = record.handler

        def bind(field: int, target: int) -> tuple[TargetKind, int] | None:
            bound = self.bind(where, CodeFixup(field, addr32nb, target, field))
            if bound is None or field != handler_field or bound[0] != TargetKind.OLD_RVA:
                return bound
            # The data was read as the new image's handler reads it: the old image's
            # handler the copy will name must be the same one.
            counterpart = self.handler_identity(True, bound[1])
            if counterpart.handler != identity.handler:
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.UNWIND_HANDLER_DIFFERS,
                    where,
                    f"the unwind record at 0x{record.unwind_rva:x} names "
                    f"{identity.description}, but its counterpart at 0x{bound[1]:x} in the "
                    f"old image is {counterpart.description}",
                    function=_label(function),
                    rva=record.unwind_rva,
                    target_rva=target,
                )
                return None
            return bound

        try:
            fixups = record_fixups(
                record,
                offset,
                addr32nb,
                bind,
                lambda rva, end_ok: self.in_function(function, rva, end_ok=end_ok),
            )
        except HandlerDataError as exc:
            # record_fixups refuses only fields that must lie in the function's own copy
            self.block(
                BlockerKind.UNRESOLVED_REFERENCE,
                BlockerCause.UNWIND_RECORD_UNBOUND,
                where,
                f"the unwind record at 0x{record.unwind_rva:x} {exc}",
                function=_label(function),
                rva=record.unwind_rva,
            )
            return False
        if fixups is None:
            return False
        self.fixups.update((fixup.offset, fixup) for fixup in fixups)
        return True

    def in_function(self, function: PatchFunction, new_rva: int, *, end_ok: bool) -> int | None:
        """Region offset of ``new_rva`` if it lies in a part of ``function`` (or, with
        ``end_ok``, is the end of one)."""
        for part in function.parts:
            inside = new_rva - part.new_rva
            if 0 <= inside < part.size or (end_ok and inside == part.size):
                return part.offset + inside
        return None

    # redirects ------------------------------------------------------------------------

    def redirect(self, change: FunctionChange, target_offset: int) -> RedirectEntry | None:
        function = change.old
        assert function is not None
        strategy = self.arch.redirect_strategy(*entry_room(self.old, function))
        if strategy is None:
            # the one blocker about the old build: the function the redirect overwrites
            self.blockers.append(
                Blocker(
                    kind=BlockerKind.TOO_SMALL,
                    cause=BlockerCause.NO_REDIRECT_ROOM,
                    where=function_label(function),
                    reason="no redirect form fits the function's entry",
                    function=function_label(function),
                    rva=function.rva,
                    build=Build.OLD,
                )
            )
            return None
        start, length = strategy.span
        original = self.old.read(function.rva + start, length)
        return RedirectEntry(
            function.rva, strategy, target_offset, hashlib.sha256(original).digest()
        )

    # the whole ------------------------------------------------------------------------

    def build(self) -> Package:
        if self.diff.blockers:
            raise PackageBlocked(self.diff.blockers)
        if not self.carried:
            raise NotHotpatchable("no function changed: there is nothing to package")
        fixups_by_function: dict[int, list[CodeFixup]] = {}
        far: dict[int, list[ShortBranch | CodeFixup]] = {}
        for change in self.carried:
            assert change.new is not None
            where = function_label(change.new)
            try:
                found, short = self.code_fixups(change)
            except RelocationError as exc:
                self.block(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.RELOCATION_ERROR,
                    where,
                    str(exc),
                    function=where,
                    rva=change.new.rva,
                )
                continue
            if self.check_against_fingerprint(change, found, short):
                fixups_by_function[change.new.rva] = found
                far[change.new.rva] = self.far_branches(found, short)
        data_spans = self.place_new_data()
        functions = self.place_code(far)
        self.place_constants(fixups_by_function, self.data_pointers(data_spans))
        self.bind_new_data(data_spans)
        for rva, found in fixups_by_function.items():
            where = function_label(self.new.function_at(rva))  # type: ignore[arg-type]
            groups: dict[int, list[tuple[CodeFixup, tuple[TargetKind, int]]]] = {}
            for fixup in found:
                bound = self.add_fixup(where, fixup)
                if bound is not None and fixup.page_group >= 0:
                    groups.setdefault(fixup.page_group, []).append((fixup, bound))
            self.check_pages(where, groups)
        for veneer in self.veneers:
            self.bind_veneer(veneer)
        unwind = self.unwind(functions)
        redirects = []
        by_entry = {f.new_rva: f for f in functions}
        for change in self.carried:
            if change.status == Status.MODIFIED:
                assert change.new is not None
                made = self.redirect(change, by_entry[change.new.rva].entry_offset)
                if made is not None:
                    redirects.append(made)
        if self.blockers:
            raise PackageBlocked(tuple(self.blockers))
        return self.assemble(functions, unwind, redirects)

    def assemble(
        self,
        functions: list[PatchFunction],
        unwind: list[UnwindRecord],
        redirects: list[RedirectEntry],
    ) -> Package:
        ordered = sorted(self.imports.values(), key=lambda i: i.old_iat_rva)
        first_use = list(self.imports.values())
        renumber = {first_use.index(item): n for n, item in enumerate(ordered)}
        fixups = tuple(
            FixupEntry(f.offset, f.kind, f.target_kind, renumber[f.target])
            if f.target_kind == TargetKind.IMPORT
            else f
            for f in sorted(self.fixups.values(), key=lambda f: f.offset)
        )
        size = len(self.region) + (-len(self.region)) % REGION_ALIGNMENT
        prerequisites = [
            (Prerequisite.MACHINE, int(self.arch.machine)),
            (Prerequisite.BASELINE, 0),
            (Prerequisite.MIN_FORMAT_VERSION, FORMAT_VERSION),
            (Prerequisite.NOT_HYBRID, 0),
            (
                Prerequisite.REGION_REACH,
                self.arch.region_reach,
            ),
        ]
        if any(f.kind in _ADDR32NB and f.target_kind == TargetKind.REGION for f in fixups):
            prerequisites.append((Prerequisite.REGION_ABOVE_IMAGE, 0))
        options = self.options
        return Package(
            machine=self.arch.machine,
            baseline=baseline_of(self.old),
            servicing=Servicing(
                sequence=options.sequence,
                supersedes=options.supersedes,
                description=options.description,
                advisory=options.advisory,
                tool_version=__version__,
                target_sha256=target_digest(self.new),
            ),
            prerequisites=tuple(prerequisites),
            region_size=size,
            region_alignment=REGION_ALIGNMENT,
            blobs=tuple(sorted(self.blobs, key=lambda b: b.offset)),
            functions=tuple(functions),
            imports=tuple(ordered),
            fixups=fixups,
            redirects=tuple(sorted(redirects, key=lambda r: r.old_rva)),
            unwind=tuple(unwind),
            new_imports=tuple(sorted(self.new_imports, key=lambda i: i.slot_offset)),
        )


def _label(function: PatchFunction) -> str:
    return function.name or f"sub_{function.new_rva:x}"


def build_package(
    diff: DiffResult,
    options: BuildOptions | None = None,
    sign: Callable[[Package], Package] | None = None,
) -> Package:
    """The package that turns ``diff.old`` into ``diff.new`` where it runs.

    PackageBlocked (with blockers) when the update cannot be packaged with certainty.
    ``sign`` (see hpatch.package.signing) adds a signature.
    """
    package = _Builder(diff, options or BuildOptions()).build()
    package = code_region(package, diff.old.mapped, _dictionary_hints(diff.old, package))
    return sign(package) if sign is not None else package


def _dictionary_hints(old: PEImage, package: Package) -> tuple[tuple[int, int], ...]:
    """The baseline's code, or the code around the replaced functions in a large image:
    new code often repeats old code beyond the function it replaces."""
    code = [(s.rva, s.virtual_size) for s in old.sections if s.is_executable and s.virtual_size]
    if sum(size for _, size in code) <= _HINT_LIMIT:
        return tuple(code)
    windows: list[list[int]] = []
    for function in package.functions:
        if function.status != FunctionStatus.MODIFIED:
            continue
        for rva, size in code:
            if rva <= function.old_rva < rva + size:
                low = max(rva, function.old_rva - _HINT_WINDOW)
                high = min(rva + size, function.old_rva + function.old_size + _HINT_WINDOW)
                windows.append([low, high])
    merged: list[list[int]] = []
    for low, high in sorted(windows):
        if merged and low <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    chosen, total = [], 0
    for low, high in merged:
        if total + high - low > _HINT_LIMIT:
            break
        chosen.append((low, high - low))
        total += high - low
    return tuple(chosen)


__all__ = ["BuildOptions", "PackageBlocked", "baseline_of", "build_package", "target_digest"]
