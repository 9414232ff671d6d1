"""Reference correlation: what each reference of new code means in the old image.

Every reference made by a modified or added function (in the new build) gets exactly
one resolution, or it is unresolved and becomes a blocker: the package can only carry
code that it can bind to the running old image.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hpatch.arch import Reference, RefKind
from hpatch.blockers import BlockerCause
from hpatch.diff.classify import (
    Correspondence,
    FunctionChange,
    Status,
    beyond_section,
    dll_changed_imports,
    import_key,
)
from hpatch.diff.match import Side
from hpatch.diff.references import as_reference, reference_rows
from hpatch.image import Function, Section


class Resolution(Enum):
    """What a reference of new code binds to."""

    OLD_FUNCTION = "old_function"  # code of an unchanged function of the old image
    PATCHED_CODE = "patched_code"  # code the package carries (a modified or added function)
    IMPORT = "import"  # the old image's IAT slot for the same import
    NEW_IMPORT = "new_import"  # an import the old image lacks: the package carries its slot
    OLD_DATA = "old_data"  # the same global in the old image
    NEW_CONSTANT = "new_constant"  # read-only data the package must carry (a new literal)
    NEW_DATA = "new_data"  # a writable global only the new build has: the package carries it
    UNRESOLVED = "unresolved"


@dataclass(frozen=True, slots=True)
class ResolvedReference:
    """A reference of new code and what it binds to (``old_rva`` where that is in the old image)."""

    reference: Reference
    resolution: Resolution
    old_rva: int | None
    detail: str = ""
    #: Why it cannot be bound, for an unresolved reference.
    cause: BlockerCause | None = None


def unresolved_reference(
    reference: Reference, cause: BlockerCause, detail: str
) -> ResolvedReference:
    """A reference that cannot be bound to the old image, with its cause."""
    return ResolvedReference(reference, Resolution.UNRESOLVED, None, detail, cause)


class Correlator:
    """Resolves the references of the code a package will carry."""

    def __init__(
        self,
        old: Side,
        new: Side,
        correspondence: Correspondence,
        changes: tuple[FunctionChange, ...],
    ) -> None:
        self.old, self.new = old, new
        self.correspondence = correspondence
        self.new_to_old = {m.new_rva: m.old_rva for m in correspondence.matches}
        self.carried = {
            c.new.rva
            for c in changes
            if c.new is not None and c.status in (Status.MODIFIED, Status.ADDED)
        }
        self.old_slots = {import_key(i): i.iat_rva for i in old.image.imports}
        self.new_imports = {i.iat_rva: i for i in new.image.imports}
        self.dll_changed = dll_changed_imports(old.image.imports, new.image.imports)
        self.data_back = {new: old for old, new in correspondence.data.items()}
        self.moved_back = {new: old for old, new in correspondence.writable_moves.items()}
        #: By (target, kind): a kind compares and hashes as its value does.
        self._resolved: dict[tuple[int, int], ResolvedReference] = {}

    def resolve(self, reference: Reference) -> ResolvedReference:
        known = self._resolution(reference)
        if known.reference is reference:
            return known
        return ResolvedReference(
            reference, known.resolution, known.old_rva, known.detail, known.cause
        )

    def _resolution(self, reference: Reference) -> ResolvedReference:
        """The resolution of the first reference seen with this target and kind."""
        # What a reference binds to depends only on its target and kind, and changed
        # code names the same callees and globals over and over.
        key = (reference.target_rva, reference.kind)
        known = self._resolved.get(key)
        if known is None:
            known = self._resolved[key] = self._resolve(reference)
        return known

    def _resolve(self, reference: Reference) -> ResolvedReference:
        target = reference.target_rva
        image = self.new.image
        if 0 <= target < image.headers_end:
            # __ImageBase and the PE headers behind it are the same place in either build
            return ResolvedReference(reference, Resolution.OLD_DATA, target, "the image headers")
        if target in self.new_imports:
            imported = self.new_imports[target]
            slot = self.old_slots.get(import_key(imported))
            if slot is not None:
                return ResolvedReference(reference, Resolution.IMPORT, slot)
            label = f"{imported.dll}!{imported.name or f'#{imported.ordinal}'}"
            moved = self.dll_changed.get(target)
            if moved is not None:
                # Binding the other DLL would run a second copy of a library beside the
                # one the image uses (see BlockerCause.IMPORT_DLL_CHANGED).
                return unresolved_reference(
                    reference,
                    BlockerCause.IMPORT_DLL_CHANGED,
                    f"an import from another DLL: {label}, which the old image binds to "
                    f"{moved.dll}",
                )
            return ResolvedReference(reference, Resolution.NEW_IMPORT, None, f"new import {label}")
        section = image.section_at(target)
        if section is None:
            return self.past_section_end(reference)
        if section.is_executable:
            function = image.function_at(target)
            if function is None and reference.kind == RefKind.LITERAL:
                # a literal pool no function claims: data the load reads, copied along
                return ResolvedReference(reference, Resolution.NEW_CONSTANT, None)
            if function is None:
                return unresolved_reference(
                    reference, BlockerCause.CODE_OUTSIDE_FUNCTION, "code outside any function"
                )
            if function.rva in self.carried:
                return ResolvedReference(reference, Resolution.PATCHED_CODE, None)
            old_rva = self.new_to_old.get(function.rva)
            if old_rva is None:
                return unresolved_reference(
                    reference, BlockerCause.UNMATCHED_FUNCTION, "unmatched function"
                )
            if function.rva <= target < function.extent_end:
                return ResolvedReference(
                    reference, Resolution.OLD_FUNCTION, old_rva + target - function.rva
                )
            return self.old_fragment(reference, function, old_rva)
        if section.is_writable:
            return self.writable(reference, section)
        # Read-only data binds to the old image only where the old bytes are the same
        # object: learned from unchanged code, or where the section's shift puts it.
        candidates = [self.data_back.get(target)]
        shift = self.correspondence.section_shift.get(section.name)
        if shift is not None:
            candidates.append(target - shift)
        for old_rva in candidates:
            if (
                old_rva is not None
                and self.old.image.section_at(old_rva) is not None
                and self.correspondence.same_constant(old_rva, target)
            ):
                return ResolvedReference(reference, Resolution.OLD_DATA, old_rva)
        if self.new.constant(target) is not None:
            return ResolvedReference(reference, Resolution.NEW_CONSTANT, None)
        return unresolved_reference(
            reference, BlockerCause.UNKNOWN_DATA, f"unknown data in {section.name}"
        )

    def old_fragment(
        self, reference: Reference, function: Function, old_rva: int
    ) -> ResolvedReference:
        """A place in a fragment (a ``.cold`` part, a chained part) of an unchanged
        function binds to the same place of the same fragment of its old counterpart:
        unchanged code has its parts one for one."""
        target = reference.target_rva
        old_function = self.old.image.function_at(old_rva)
        for index, fragment in enumerate(function.fragments):
            if not fragment.rva <= target < fragment.rva + fragment.size:
                continue
            if old_function is not None and len(old_function.fragments) == len(function.fragments):
                old_part = old_function.fragments[index]
                if old_part.size == fragment.size:
                    return ResolvedReference(
                        reference, Resolution.OLD_FUNCTION, old_part.rva + target - fragment.rva
                    )
        return unresolved_reference(
            reference,
            BlockerCause.FRAGMENT_OF_UNCHANGED_FUNCTION,
            "a fragment of an unchanged function",
        )

    def past_section_end(self, reference: Reference) -> ResolvedReference:
        """An address in the gap after a section (a linker's end-of-section symbol) binds
        to as many bytes past the end of the same section of the old image."""
        past = beyond_section(self.new.image, reference.target_rva)
        if past is not None:
            name, offset = past
            for old_section in self.old.image.sections:
                old_rva = old_section.end_rva + offset
                if old_section.name == name and beyond_section(self.old.image, old_rva) == past:
                    return ResolvedReference(reference, Resolution.OLD_DATA, old_rva)
        return unresolved_reference(
            reference, BlockerCause.UNKNOWN_DATA, "unknown data outside every section"
        )

    def writable(self, reference: Reference, section: Section) -> ResolvedReference:
        """Writable data binds to where the global lives in the old image: where it moved
        from, or else the same offset of the same section, unless the global that was
        there moved away (then which one is meant is unknown)."""
        target = reference.target_rva
        layout = self.correspondence.layouts.get(section.name)
        if layout is not None:
            old_rva = layout.old_of(target)
            if old_rva is not None:
                return ResolvedReference(reference, Resolution.OLD_DATA, old_rva)
            if layout.insertion_at(target) is not None:
                return ResolvedReference(reference, Resolution.NEW_DATA, None)
            return unresolved_reference(
                reference, BlockerCause.PAST_OLD_SECTION, f"past the end of the old {section.name}"
            )
        if target in self.moved_back:
            return ResolvedReference(reference, Resolution.OLD_DATA, self.moved_back[target])
        if not any(s.name == section.name for s in self.old.image.sections):
            # The whole section is new (a build's first initialised global, say): what
            # the code names there only the new build has; the verdict names the
            # section's appearance (writable_section_added).
            return ResolvedReference(reference, Resolution.NEW_DATA, None)
        offset = target - section.rva
        for old_section in self.old.image.sections:
            if old_section.name == section.name and old_section.is_writable:
                if offset < old_section.virtual_size:
                    return ResolvedReference(
                        reference, Resolution.OLD_DATA, old_section.rva + offset
                    )
                return unresolved_reference(
                    reference,
                    BlockerCause.PAST_OLD_SECTION,
                    f"past the end of the old {section.name}",
                )
        return unresolved_reference(
            reference, BlockerCause.NO_OLD_SECTION, f"no writable {section.name} in the old image"
        )

    def resolve_function(self, change: FunctionChange) -> tuple[ResolvedReference, ...]:
        assert change.new is not None
        fingerprint = self.new.fingerprints[change.new.rva]
        return tuple(self.resolve(r) for r in fingerprint.references)

    def unresolved(self, change: FunctionChange) -> list[ResolvedReference]:
        """The references of ``change``'s new code that cannot be bound, in order."""
        assert change.new is not None
        found = []
        resolved = self._resolved
        for row in reference_rows(self.new.fingerprints[change.new.rva].references):
            _, kind, target = row
            known = resolved.get((target, kind))
            if known is None:
                known = self._resolution(as_reference(row))
            if known.resolution == Resolution.UNRESOLVED:
                found.append(self.resolve(as_reference(row)))
        return found
