"""When an address in the patched old process and one in the new build's process name
the same thing.

This is the correspondence translation validation checks every address operand
against, and differential emulation compares pointers under. Code counterparts are
confirmed by content, not only by the diff's match: an unchanged callee must have the
same normalised code on both sides, so a package bound to the wrong function fails
even where the match itself was wrong.
"""

from __future__ import annotations

import bisect
import struct

from hpatch.arch import Reference, RefKind
from hpatch.blockers import function_label
from hpatch.diff.classify import import_key
from hpatch.diff.correlate import Correlator, Resolution
from hpatch.image import Function, PEImage
from hpatch.package.model import BlobKind
from hpatch.verify.session import Session

#: Pointers inside compared data are followed this deep (then only mapped, not compared).
_MAX_DEPTH = 2
#: Bytes of a writable global compared at a referenced address (its initial value).
_GLOBAL_WINDOW = 8
#: Entries that make read-only data a jump table (as ``Correspondence.is_jump_table``).
_MIN_TABLE_ENTRIES = 2


class Counterparts:
    """Decides whether patched-process addresses correspond to new-process addresses."""

    def __init__(self, session: Session) -> None:
        self.session = session
        diff = session.diff
        self.old: PEImage = diff.old
        self.new: PEImage = diff.new
        correspondence = diff.correspondence
        self.correspondence = correspondence
        self.correlator = Correlator(
            correspondence.old, correspondence.new, correspondence, diff.changes
        )
        self.new_to_old = {m.new_rva: m.old_rva for m in diff.matches}
        self.old_slots = {import_key(i): i.iat_rva for i in self.old.imports}
        self.new_imports = {i.iat_rva: i for i in self.new.imports}
        #: The package's slots for imports the old image lacks, by region VA.
        self.import_slots = {
            session.region_va + i.slot_offset: (i.dll.lower(), i.name or i.ordinal)
            for i in session.package.new_imports
        }
        self.carried = {f.new_rva: f for f in session.package.functions}
        self.new_relocated = correspondence.new.relocated
        self.new_code = [(s.rva, s.end_rva) for s in self.new.sections if s.is_executable]
        self._learned_old = sorted(correspondence.data)
        self._memo: dict[tuple[int, int, int], str | None] = {}

    # --- the predicate -------------------------------------------------------------
    def check(self, patched_va: int, new_va: int, depth: int = 0) -> str | None:
        """None when ``patched_va`` names what ``new_va`` names; otherwise why not."""
        key = (patched_va, new_va, min(depth, _MAX_DEPTH))
        if key not in self._memo:
            self._memo[key] = None  # a cycle through data is the same unless shown otherwise
            self._memo[key] = self._check(patched_va, new_va, key[2])
        return self._memo[key]

    def _check(self, patched_va: int, new_va: int, depth: int) -> str | None:
        session = self.session
        new_rva = new_va - session.new_base
        old_rva = patched_va - session.old_base
        if not 0 <= new_rva < self.new.size_of_image:
            if patched_va == new_va and not session.old_module.contains(patched_va):
                return None  # outside both images alike (a host stub, the stack)
            return f"0x{new_va:x} is outside the new image"
        if new_rva < self.new.headers_end:
            if old_rva == new_rva:
                return None
            return f"the new build names its headers (+0x{new_rva:x}), the package 0x{patched_va:x}"
        if new_rva in self.new_imports:
            imported = self.new_imports[new_rva]
            slot = self.old_slots.get(import_key(imported))
            name = f"{imported.dll}!{imported.name or f'#{imported.ordinal}'}"
            if slot is None:
                if self.import_slots.get(patched_va) == import_key(imported):
                    return None  # the slot the package carries for it
                return (
                    f"{name} is not imported by the old image, and 0x{patched_va:x} is not "
                    "the package's slot for it"
                )
            if old_rva != slot:
                return f"{name} is the old IAT slot at RVA 0x{slot:x}, not 0x{old_rva:x}"
            return None
        section = self.new.section_at(new_rva)
        if section is not None and section.is_executable:
            function = self.new.function_at(new_rva)
            if function is not None:
                return self._code(patched_va, new_rva, function, depth)
        return self._data(patched_va, new_va, new_rva, depth)

    # --- code ----------------------------------------------------------------------
    def through_veneer(self, patched_va: int) -> int:
        """Where a branch to ``patched_va`` leads: through a range-extension veneer of
        the package (the machine's plain direct jump, in a code blob outside every part)
        to the veneer's target; else ``patched_va`` itself."""
        session = self.session
        if not session.in_region(patched_va) or session.copy_at(patched_va) is not None:
            return patched_va
        offset = patched_va - session.region_va
        if not any(
            b.kind == BlobKind.CODE and b.offset <= offset < b.offset + b.size
            for b in session.package.blobs
        ):
            return patched_va
        code = session.patched.space.read(patched_va, 16)
        target = self.new.arch.veneer_target(code, patched_va)
        return patched_va if target is None else target

    def _code(self, patched_va: int, new_rva: int, function: Function, depth: int) -> str | None:
        session = self.session
        label = function_label(function)
        carried = self.carried.get(function.rva)
        if carried is not None:
            copy = session.copy_of(new_rva)
            if copy is not None and patched_va == copy:
                return None
            old_entry = session.old_base + carried.old_rva
            if (
                copy is not None
                and new_rva == function.rva
                and patched_va == old_entry
                and session.landing(old_entry) == copy
            ):
                return None  # the old entry, which the package redirects to the copy
            return (
                f"the new build reaches {label}+0x{new_rva - function.rva:x}, which the "
                f"package carries at 0x{copy or 0:x}; the patched code reaches 0x{patched_va:x}"
            )
        old_start = self.new_to_old.get(function.rva)
        if old_start is None:
            return f"the new build reaches {label}, which has no counterpart in the old image"
        old_function = self.old.function_at(old_start)
        expected = None
        if old_function is not None and old_function.rva == old_start:
            new_parts, old_parts = function.part_ranges, old_function.part_ranges
            for index, (start, end, _) in enumerate(new_parts):
                if start <= new_rva < end and index < len(old_parts):
                    old_part = old_parts[index]
                    if old_part[0] + new_rva - start < old_part[1]:
                        expected = old_part[0] + new_rva - start
        if expected is None or patched_va != self.session.old_base + expected:
            where = f"RVA 0x{expected:x}" if expected is not None else "nowhere"
            return (
                f"the new build reaches {label}+0x{new_rva - function.rva:x} (old {where}), "
                f"the patched code 0x{patched_va:x}"
            )
        if depth == 0 and not self._same_code(old_start, function.rva):
            return (
                f"the old function at RVA 0x{old_start:x} is not the same code as {label} "
                "in the new build"
            )
        return None

    def _same_code(self, old_rva: int, new_rva: int) -> bool:
        old_print = self.correspondence.old.fingerprints.get(old_rva)
        new_print = self.correspondence.new.fingerprints.get(new_rva)
        return (
            old_print is not None and new_print is not None and old_print.digest == new_print.digest
        )

    # --- data ----------------------------------------------------------------------
    def _data(self, patched_va: int, new_va: int, new_rva: int, depth: int) -> str | None:
        session = self.session
        if session.in_region(patched_va):
            return self._carried_data(patched_va, new_va, new_rva, depth)
        old_rva = patched_va - session.old_base
        if not 0 <= old_rva < self.old.size_of_image:
            return f"the patched code names 0x{patched_va:x}, outside the old image and the package"
        resolved = self.correlator.resolve(Reference(new_rva, RefKind.DATA, new_rva))
        if (
            resolved.old_rva is None
            and self._read_only(old_rva, new_rva)
            and self._learned(old_rva, new_rva)
            and self.correspondence.same_constant(old_rva, new_rva)
        ):
            # Data that only other data points at (the name in a table of structures)
            # is learned from no code; it lies where its learned neighbours put it.
            return None
        if resolved.resolution != Resolution.OLD_DATA or resolved.old_rva != old_rva:
            expected = (
                f"RVA 0x{resolved.old_rva:x}"
                if resolved.old_rva is not None
                else resolved.detail or "nothing"
            )
            return (
                f"the new build's data at RVA 0x{new_rva:x} is old {expected}, "
                f"the patched code names RVA 0x{old_rva:x}"
            )
        section = self.new.section_at(new_rva)
        if section is not None and not section.is_writable:
            if not self.correspondence.same_constant(old_rva, new_rva):
                return (
                    f"read-only data at old RVA 0x{old_rva:x} differs from the new build's "
                    f"at RVA 0x{new_rva:x}"
                )
            return None
        size = _GLOBAL_WINDOW
        if section is not None:
            size = min(size, section.rva + section.virtual_size - new_rva)
        old_section = self.old.section_at(old_rva)
        if old_section is not None:
            size = min(size, old_section.rva + old_section.virtual_size - old_rva)
        problem = self.compare_data(
            self.old.read(old_rva, size),
            self.new.read(new_rva, size),
            new_rva,
            depth,
            rva_words=False,
        )
        if problem is not None:
            return f"the global at old RVA 0x{old_rva:x}: {problem}"
        return None

    def _carried_data(self, patched_va: int, new_va: int, new_rva: int, depth: int) -> str | None:
        session = self.session
        offset = patched_va - session.region_va
        blob = next(
            (
                b
                for b in session.package.blobs
                if b.kind in (BlobKind.RODATA, BlobKind.DATA)
                and b.offset <= offset < b.offset + b.size
            ),
            None,
        )
        if blob is None:
            return f"0x{patched_va:x} is in the patch region but in none of its data"
        # The package copies an object up to the next label, as the diff delimits it.
        limit = self.correspondence.new.data_extent(new_rva)
        size = min(blob.offset + blob.size - offset, limit - new_rva)
        if size <= 0:
            return f"the new build's data at RVA 0x{new_rva:x} is outside its sections"
        # A table runs to the next label, however long (data_extent stops at 4 KiB).
        labels = self.correspondence.new.labels
        index = bisect.bisect_right(labels, new_rva)
        table_end = labels[index] if index < len(labels) else new_rva + size
        entries = self.table_entries(
            new_rva, min(table_end, new_rva + blob.offset + blob.size - offset)
        )
        if entries:
            # Equal bytes are not enough: each entry is an offset from the table, so a
            # verbatim copy leads wherever the copy's distance to the code takes it.
            problem = self._compare_table(patched_va, new_va, entries, depth)
            if problem is None and 4 * entries < size:  # what follows the table
                problem = self._carried_data(
                    patched_va + 4 * entries, new_va + 4 * entries, new_rva + 4 * entries, depth
                )
            if problem is not None:
                return f"the package's copy of the jump table at RVA 0x{new_rva:x}: {problem}"
            return None
        patched = session.patched.space.read(patched_va, size)
        new = session.new.space.read(new_va, size)
        problem = self.compare_data(patched, new, new_rva, depth, rva_words=True)
        if problem is not None:
            return f"the package's copy of the data at RVA 0x{new_rva:x}: {problem}"
        return None

    # --- jump tables ---------------------------------------------------------------
    def table_entries(self, new_rva: int, limit_rva: int) -> int:
        """Entries of the jump table at ``new_rva`` in the new build (int32 offsets from
        the table into its code, the form clang and gcc use on x64), up to
        ``limit_rva``; 0 if the data there is no such table."""
        section = self.new.section_at(new_rva)
        if section is None or section.is_executable or section.is_writable:
            return 0
        for lo, hi in self.new_code:
            count = len(self.new.arch.jump_table_targets(self.new.read, new_rva, lo, hi, limit_rva))
            if count >= _MIN_TABLE_ENTRIES:
                return count
        return 0

    def _compare_table(self, patched_va: int, new_va: int, entries: int, depth: int) -> str | None:
        """Each of ``entries`` int32 offsets from the table at ``patched_va`` must lead to
        what the same entry of the new build's table at ``new_va`` leads to."""
        session = self.session
        patched = session.patched.space.read(patched_va, 4 * entries)
        new = session.new.space.read(new_va, 4 * entries)
        for index in range(entries):
            (patched_offset,) = struct.unpack_from("<i", patched, 4 * index)
            (new_offset,) = struct.unpack_from("<i", new, 4 * index)
            # Entries lead into code, which is compared without reading further data.
            problem = self.check(
                patched_va + patched_offset, new_va + new_offset, min(depth + 1, _MAX_DEPTH)
            )
            if problem is not None:
                return f"entry {index}: {problem}"
        return None

    def _learned(self, old_rva: int, new_rva: int) -> bool:
        """The diff's data correspondence puts ``old_rva`` where ``new_rva`` is: learned
        from unchanged code, else shifted as the nearest learned address before or after
        it in its section (objects move in runs, each behind the last insertion), else
        as its section's most common shift."""
        data = self.correspondence.data
        learned = data.get(old_rva)
        if learned is not None:
            return learned == new_rva
        section = self.old.section_at(old_rva)
        if section is None:
            return False
        index = bisect.bisect_left(self._learned_old, old_rva)
        neighbours = [
            self._learned_old[at]
            for at in (index - 1, index)
            if 0 <= at < len(self._learned_old)
            and section.rva <= self._learned_old[at] < section.end_rva
        ]
        if neighbours:
            return any(old_rva + data[at] - at == new_rva for at in neighbours)
        shift = self.correspondence.section_shift.get(section.name)
        return shift is not None and old_rva + shift == new_rva

    def _read_only(self, old_rva: int, new_rva: int) -> bool:
        """Both addresses are in data sections neither writable nor executable."""
        return all(
            section is not None and not section.is_writable and not section.is_executable
            for section in (self.old.section_at(old_rva), self.new.section_at(new_rva))
        )

    def compare_data(
        self, patched: bytes, new: bytes, new_rva: int, depth: int, *, rva_words: bool
    ) -> str | None:
        """Compare ``patched`` with the new build's bytes ``new`` (at ``new_rva``) entry
        by entry: equal bytes, except pointers (base-relocated 8-byte fields of the new
        build, and with ``rva_words`` differing 4-byte image-relative words) that must
        point at corresponding things."""
        size = len(new)
        first = bisect.bisect_left(self.new_relocated, new_rva)
        pointers = []
        for field in self.new_relocated[first:]:
            at = field - new_rva
            if at + 8 > size:
                break
            pointers.append(at)
        covered = bytearray(size)
        for at in pointers:
            (patched_pointer,) = struct.unpack_from("<Q", patched, at)
            (new_pointer,) = struct.unpack_from("<Q", new, at)
            if depth < _MAX_DEPTH:
                problem = self.check(patched_pointer, new_pointer, depth + 1)
                if problem is not None:
                    return f"the pointer at +0x{at:x}: {problem}"
            covered[at : at + 8] = b"\1" * 8
        at = 0
        while at < size:
            if covered[at] or patched[at] == new[at]:
                at += 1
                continue
            word = at - at % 4
            if rva_words and word + 4 <= size and not any(covered[word : word + 4]):
                (patched_word,) = struct.unpack_from("<I", patched, word)
                (new_word,) = struct.unpack_from("<I", new, word)
                problem = (
                    self.check(
                        self.session.old_base + patched_word,
                        self.session.new_base + new_word,
                        depth + 1,
                    )
                    if depth < _MAX_DEPTH
                    else "too deep to compare"
                )
                if problem is None:
                    at = word + 4
                    continue
                return f"the image-relative entry at +0x{word:x}: {problem}"
            return f"byte +0x{at:x} is 0x{patched[at]:02x}, the new build has 0x{new[at]:02x}"
        return None

    # --- values --------------------------------------------------------------------
    def same_value(self, patched_value: int, new_value: int) -> bool:
        """Two integers a run produced agree: equal, or addresses of the same thing."""
        if patched_value == new_value:
            return True
        patched_import = self.session.patched.import_at(patched_value)
        if patched_import is not None and patched_import == self.session.new.import_at(new_value):
            return True  # the same import's stub, laid out elsewhere
        return self.check(patched_value, new_value, _MAX_DEPTH) is None
