"""Binding: what each field of the carried code and data names, in package terms (the
old image, the region, or an import), and the checks a bound ADRP page must pass."""

from __future__ import annotations

from hpatch.arch import Reference, RefKind
from hpatch.arch.relocate import CodeFixup
from hpatch.arch.rewrite import Fixup
from hpatch.blockers import BlockerCause, BlockerKind
from hpatch.diff.correlate import Resolution
from hpatch.diff.verdict import unresolved_cause
from hpatch.package.build.context import Context, runs
from hpatch.package.build.region import PAGE
from hpatch.package.model import BlobKind, FixupEntry, ImportRef, NewImport, TargetKind

#: How far the short fixup kinds reach, either way.
_SHORT_REACH = {
    Fixup.ARM64_BRANCH19: 1 << 20,
    Fixup.ARM64_BRANCH14: 1 << 15,
    Fixup.ARM64_REL21: 1 << 20,
}

Bound = tuple[TargetKind, int]


class Binder:
    """Binds fixups into the region's fixup table; keeps the imports they name."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.region = context.region
        self.blockers = context.blockers
        #: The old image's imports the code names, in order of first use.
        self.imports: dict[tuple[str, str, int], ImportRef] = {}
        #: Imports the old image lacks: the package carries a slot for each.
        self.new_imports: list[NewImport] = []

    def bind(self, where: str, fixup: CodeFixup) -> Bound | None:
        """What the target of ``fixup`` is, in package terms; None (and a blocker) if unknown."""
        context = self.context
        located = self.region.locate(fixup.target_rva)
        if located is not None:
            return TargetKind.REGION, located
        section = context.new.section_at(fixup.target_rva)
        if (
            section is not None
            and not section.is_executable
            and not section.is_writable
            and context.takes_address(fixup.site_rva)
            and context.diff.correspondence.is_jump_table(fixup.target_rva)
        ):
            # Its entries are offsets from the table to code: neither the old table nor
            # a verbatim copy would lead into the carried code, and the data stage
            # copied (and rewrote) only the tables that lead nowhere else.
            self.blockers.reference(
                BlockerCause.RODATA_JUMP_TABLE,
                where,
                f"the jump table at 0x{fixup.target_rva:x} lies in read-only data and leads "
                "out of the code the package carries; hpatch rewrites only tables whose "
                "every entry leads into it",
                site_rva=fixup.site_rva,
                target_rva=fixup.target_rva,
            )
            return None
        resolved = context.correlator.resolve(self.reference_of(fixup))
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
            offset = self.region.locate(fixup.target_rva)
            if offset is not None:
                return TargetKind.REGION, offset
        detail = resolved.detail or {
            Resolution.PATCHED_CODE: "in a carried function, outside the bytes copied for it",
            Resolution.NEW_CONSTANT: "new read-only data the package does not carry",
        }.get(resolved.resolution, resolved.resolution.value)
        self.blockers.reference(
            unresolved_cause(resolved),
            where,
            f"the field at 0x{fixup.field_rva:x} names 0x{fixup.target_rva:x}, which cannot "
            f"be bound to the old image ({detail})",
            site_rva=fixup.site_rva,
            target_rva=fixup.target_rva,
        )
        return None

    def reference_of(self, fixup: CodeFixup) -> Reference:
        """The diff's reference for a fixup (its kind decides some resolutions)."""
        kind = self.context.reference_kinds.get((fixup.site_rva, fixup.target_rva), RefKind.DATA)
        return Reference(fixup.site_rva, kind, fixup.target_rva)

    def new_import(self, iat_rva: int) -> tuple[str, str, int] | None:
        for item in self.context.new.imports:
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
        item = next(i for i in self.context.new.imports if i.iat_rva == iat_rva)
        alignment = PAGE if self.context.arch.data_by_page else 8
        offset = self.region.place(bytes(8), iat_rva, alignment, BlobKind.IMPORT_SLOTS)
        self.new_imports.append(
            NewImport(item.dll, item.name or "", 0 if item.name else item.ordinal or 0, offset)
        )
        return offset

    def add_fixup(self, where: str, fixup: CodeFixup) -> Bound | None:
        """Bind ``fixup`` (a field already copied into the region) into the fixup table."""
        field = self.region.locate(fixup.field_rva)
        assert field is not None, "fixup fields are in copied code or data"
        veneer = self.region.veneer_of.get(fixup.field_rva)
        bound = (TargetKind.REGION, veneer) if veneer is not None else self.bind(where, fixup)
        if bound is None:
            return None
        reach = _SHORT_REACH.get(fixup.kind)
        if reach is not None and (
            bound[0] != TargetKind.REGION or not -reach <= bound[1] - field < reach
        ):
            self.blockers.reference(
                BlockerCause.SHORT_REFERENCE_OUT_OF_REACH,
                where,
                f"the short-range {fixup.kind.name} at 0x{fixup.site_rva:x} leaves the code the "
                "package carries and cannot be proven to reach",
                site_rva=fixup.site_rva,
                target_rva=fixup.target_rva,
            )
            return None
        self.region.fixups[field] = FixupEntry(field, fixup.kind, bound[0], bound[1])
        return bound

    def _run_index(self, rva: int) -> int:
        """Which run of its function (parts that touch, copied whole) the code at
        ``rva`` lies in; -1 outside every part."""
        function = self.context.new.function_at(rva)
        if function is None:
            return -1
        for index, run in enumerate(runs(function)):
            if any(start <= rva < end for start, end, _ in run):
                return index
        return -1

    def check_pages(self, where: str, groups: dict[int, list[tuple[CodeFixup, Bound]]]) -> None:
        """An ADRP and its page offsets must still meet in one page once bound; a page
        handed on out of sight must keep every target's page offset."""
        for members in groups.values():
            bounds = [bound for _, bound in members]
            kinds = {
                kind if kind != TargetKind.IMPORT else TargetKind.OLD_RVA for kind, _ in bounds
            }
            pages = {self.old_rva_of(kind, value) // PAGE for kind, value in bounds}
            adrp = next(
                (f.site_rva for f, _ in members if f.kind == Fixup.ARM64_PAGEBASE_REL21),
                members[0][0].site_rva,
            )
            if len(kinds) > 1 or len(pages) > 1:
                self.blockers.add(
                    BlockerKind.UNRESOLVED_REFERENCE,
                    BlockerCause.ADRP_PAGE_SPLIT,
                    where,
                    "an ADRP page and the offsets completing it land in different pages once "
                    "bound to the old image",
                    function=self.blockers.function_of(adrp),
                    rva=adrp,
                )
                return
            # A run is copied whole and validated as one piece of code, so a page may
            # be completed in another part of the run; never from another run.
            elsewhere = [
                fixup
                for fixup, _ in members
                if self._run_index(fixup.site_rva) != self._run_index(adrp)
            ]
            if elsewhere:
                self.blockers.reference(
                    BlockerCause.PAGE_ACROSS_PARTS,
                    where,
                    f"the page address set at 0x{adrp:x} is completed at "
                    f"0x{elsewhere[0].site_rva:x}, in a part of the function copied apart "
                    "from it; translation validation follows a page only through parts "
                    "that touch",
                    site_rva=adrp,
                    target_rva=elsewhere[0].target_rva,
                )
                return
            passed_on = max(fixup.passed_on for fixup, _ in members)
            if passed_on < 0:
                continue
            # What completes the page beyond the call adds the offset the new build's
            # target has: it reaches the corresponding address only if that is unchanged.
            for fixup, (kind, value) in members:
                bound = self.old_rva_of(kind, value)
                if bound % PAGE != fixup.target_rva % PAGE:
                    self.blockers.reference(
                        BlockerCause.PAGE_PASSED_ON,
                        where,
                        f"the page address set at 0x{adrp:x} may be passed on at "
                        f"0x{passed_on:x}, beyond the code; its target 0x{fixup.target_rva:x} "
                        f"binds to {kind.name.lower()} 0x{bound:x}, at another page offset "
                        f"(0x{bound % PAGE:x}, not 0x{fixup.target_rva % PAGE:x}), so a "
                        "completion out of sight would miss it",
                        site_rva=adrp,
                        target_rva=fixup.target_rva,
                    )
                    return

    def old_rva_of(self, kind: TargetKind, value: int) -> int:
        """The old-image RVA a bound target names (an import: its old IAT slot)."""
        if kind == TargetKind.IMPORT:
            return list(self.imports.values())[value].old_iat_rva
        return value
