"""Translation validation: the code a package installs is the new build's code.

For every function the package carries, the code reached from the old entry (through
the redirect the applier wrote) is compared with the new build's function, run by
run and instruction by instruction, in the two emulated processes. A run is parts
that touch both in the new build and in the package's copy (MSVC's chained ARM64
fragments and epilogue parts): it is normalised as one piece of code, so an ADRP's
page is followed into the part that completes it, as the builder's relocator follows
it. Both sides are normalised by the architecture's normaliser (every
position-dependent field masked): the masked bytes must be identical, the address
operands must pair up one for one, and each pair must name corresponding things
(``Counterparts``). Inline data (jump tables) is compared entry by entry under the
same correspondence.
"""

from __future__ import annotations

import bisect
import struct
from array import array

from hpatch.arch import NormalisedCode, RefKind
from hpatch.image import DataKind, Function
from hpatch.package.model import NO_RVA, FunctionStatus, PatchFunction
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.model import Mismatch, Outcome
from hpatch.verify.session import Session

#: Mismatches reported per function (the first is what matters; the rest give context).
_MAX_MISMATCHES = 8


class TranslationValidator:
    """Checks the functions of one applied package against the new build."""

    def __init__(self, session: Session, counterparts: Counterparts) -> None:
        self.session = session
        self.counterparts = counterparts
        self.arch = session.diff.new.arch
        self.new_relocated = counterparts.new_relocated

    def validate(self, function: PatchFunction) -> tuple[Outcome, tuple[Mismatch, ...]]:
        mismatches: list[Mismatch] = []
        new_function = self.session.diff.new.function_at(function.new_rva)
        session = self.session
        new_entry = session.new_base + function.new_rva
        if new_function is None or new_function.rva != function.new_rva:
            mismatches.append(
                Mismatch(0, new_entry, "", "", "the new build has no function at this RVA")
            )
            return Outcome.FAILED, tuple(mismatches)
        copy_entry = session.copy_of(function.new_rva)
        if function.status == FunctionStatus.MODIFIED and function.old_rva != NO_RVA:
            old_entry = session.old_base + function.old_rva
            landing = session.landing(old_entry)
            if landing is None or landing != copy_entry:
                where = f"0x{landing:x}" if landing is not None else "nowhere outside the image"
                mismatches.append(
                    self._at(
                        old_entry,
                        new_entry,
                        f"a call to the old entry reaches {where}, not the package's copy "
                        f"of the new function",
                    )
                )
                return Outcome.FAILED, tuple(mismatches)
        expected = sorted((start, end) for start, end, _ in new_function.part_ranges)
        carried = sorted((p.new_rva, p.new_rva + p.size) for p in function.parts)
        if expected != carried:
            mismatches.append(
                Mismatch(
                    copy_entry or 0,
                    new_entry,
                    "",
                    "",
                    f"the package carries parts {_ranges(carried)}, the new function has "
                    f"{_ranges(expected)}",
                )
            )
            return Outcome.FAILED, tuple(mismatches)
        spans = [(start, code_end) for start, _, code_end in new_function.part_ranges]
        for run in self._runs(new_function):
            self._run(run, spans, mismatches)
            if len(mismatches) >= _MAX_MISMATCHES:
                break
        self._inline_data(new_function, mismatches)
        return (Outcome.FAILED if mismatches else Outcome.PASSED), tuple(
            mismatches[:_MAX_MISMATCHES]
        )

    # --- code ----------------------------------------------------------------------
    def _runs(self, function: Function) -> list[list[tuple[int, int, int]]]:
        """The function's parts (``part_ranges`` rows) in runs: parts that touch in the
        new build and whose copies touch in the same order in the patch region."""
        session = self.session
        grouped: list[list[tuple[int, int, int]]] = []
        for part in sorted(function.part_ranges):
            if grouped:
                last = grouped[-1][-1]
                copy, last_copy = session.copy_of(part[0]), session.copy_of(last[0])
                if (
                    last[1] == part[0]
                    and copy is not None
                    and last_copy is not None
                    and copy == last_copy + part[0] - last[0]
                ):
                    grouped[-1].append(part)
                    continue
            grouped.append([part])
        return grouped

    def _run(
        self,
        run: list[tuple[int, int, int]],
        spans: list[tuple[int, int]],
        out: list[Mismatch],
    ) -> None:
        """Compare the copy of one run of parts with the new build's code. The inline
        data after a part's code, before the next part, reads as traps on both sides:
        it is compared as data, and no page is followed through it."""
        session = self.session
        start, end, code_end = run[0][0], run[-1][1], run[-1][2]
        patched_va = session.copy_of(start)
        assert patched_va is not None
        new_va = session.new_base + start
        size = code_end - start
        patched_rva = patched_va - session.old_base
        new_code = bytearray(session.new.space.read(new_va, size))
        patched_code = bytearray(session.patched.space.read(patched_va, size))
        trap = self.arch.trap_instruction
        gaps = [(part[2], part[1]) for part in run[:-1] if part[2] < part[1]]
        for gap_start, gap_end in gaps:
            filler = (trap * ((gap_end - gap_start) // len(trap) + 1))[: gap_end - gap_start]
            new_code[gap_start - start : gap_end - start] = filler
            patched_code[gap_start - start : gap_end - start] = filler
        new, patched = bytes(new_code), bytes(patched_code)
        first = bisect.bisect_left(self.new_relocated, start)
        last = bisect.bisect_left(self.new_relocated, code_end)
        fields = [
            field
            for field in self.new_relocated[first:last]
            if not any(lo <= field < hi for lo, hi in gaps)
        ]
        new_norm = self.arch.normalise(
            new, start, (start, end), array("I", fields).tobytes(), session.new_base
        )
        patched_norm = self.arch.normalise(
            patched,
            patched_rva,
            (patched_rva, patched_rva + end - start),
            array("I", [patched_rva + f - start for f in fields]).tobytes(),
            session.old_base,
        )
        if patched_norm.code != new_norm.code:
            at = next(
                i
                for i, (a, b) in enumerate(zip(patched_norm.code, new_norm.code, strict=True))
                if a != b
            )
            out.append(
                self._instruction_mismatch(
                    patched, new, patched_va, new_va, at, "the instructions differ"
                )
            )
            return
        self._references(patched_norm, new_norm, patched, new, patched_va, new_va, out)
        last_start, last_end, last_code_end = run[-1]
        read = session.diff.new.read
        if last_code_end == last_end and self.arch.runs_on(read, last_start, last_code_end, spans):
            # The new build's code runs on (past any padding) into what follows the run:
            # so must the copy (through a jump placed right after it, or into the same
            # code).
            follows = patched_va + size
            problem = self.counterparts.check(
                self.counterparts.through_veneer(follows), session.new_base + end
            )
            if problem is not None:
                out.append(
                    Mismatch(
                        follows,
                        session.new_base + end,
                        "",
                        "",
                        f"the code runs on past the end of its part: {problem}",
                    )
                )

    def _references(
        self,
        patched: NormalisedCode,
        new: NormalisedCode,
        patched_code: bytes,
        new_code: bytes,
        patched_va: int,
        new_va: int,
        out: list[Mismatch],
    ) -> None:
        session = self.session
        patched_start = patched_va - session.old_base
        new_start = new_va - session.new_base
        patched_refs = {(r.site_rva - patched_start, r.kind): r for r in patched.references}
        new_refs = {(r.site_rva - new_start, r.kind): r for r in new.references}
        for key in sorted(set(patched_refs) | set(new_refs)):
            offset = key[0]
            if key not in patched_refs or key not in new_refs:
                side = "new build" if key in new_refs else "patched code"
                out.append(
                    self._instruction_mismatch(
                        patched_code,
                        new_code,
                        patched_va,
                        new_va,
                        offset,
                        f"only the {side} has an address operand here",
                    )
                )
                continue
            patched_target = session.old_base + patched_refs[key].target_rva
            new_target = session.new_base + new_refs[key].target_rva
            if key[1] == RefKind.BRANCH:
                # A short branch reaches the code it leaves for through a veneer.
                patched_target = self.counterparts.through_veneer(patched_target)
            problem = self.counterparts.check(patched_target, new_target)
            if problem is not None:
                out.append(
                    self._instruction_mismatch(
                        patched_code, new_code, patched_va, new_va, offset, problem
                    )
                )
            if len(out) >= _MAX_MISMATCHES:
                return

    # --- inline data ---------------------------------------------------------------
    def _inline_data(self, function: Function, out: list[Mismatch]) -> None:
        session = self.session
        for data in function.inline_data:
            patched_va = session.copy_of(data.rva)
            assert patched_va is not None
            new_va = session.new_base + data.rva
            patched = session.patched.space.read(patched_va, data.size)
            new = session.new.space.read(new_va, data.size)
            if data.kind == DataKind.JUMP_TABLE_RVA:
                count = data.size // 4
                for index in range(count):
                    (patched_entry,) = struct.unpack_from("<I", patched, 4 * index)
                    (new_entry,) = struct.unpack_from("<I", new, 4 * index)
                    problem = self.counterparts.check(
                        session.old_base + patched_entry, session.new_base + new_entry
                    )
                    if problem is not None:
                        out.append(
                            Mismatch(
                                patched_va + 4 * index,
                                new_va + 4 * index,
                                "",
                                "",
                                f"jump table entry {index}: {problem}",
                            )
                        )
                        return
                continue
            problem = self.counterparts.compare_data(patched, new, data.rva, 0, rva_words=False)
            if problem is not None:
                out.append(Mismatch(patched_va, new_va, "", "", f"inline data: {problem}"))

    # --- reports -------------------------------------------------------------------
    def _at(self, patched_va: int, new_va: int, reason: str) -> Mismatch:
        patched = self.session.patched.space.read(patched_va, 16)
        new = self.session.new.space.read(new_va, 16)
        return Mismatch(
            patched_va,
            new_va,
            self.arch.disassemble(patched, patched_va)[1],
            self.arch.disassemble(new, new_va)[1],
            reason,
        )

    def _instruction_mismatch(
        self,
        patched_code: bytes,
        new_code: bytes,
        patched_va: int,
        new_va: int,
        offset: int,
        reason: str,
    ) -> Mismatch:
        """The instruction containing byte ``offset`` of the part, on both sides."""
        start = 0
        while start < len(new_code):
            length, _ = self.arch.disassemble(new_code[start:], new_va + start)
            if length == 0 or start + length > offset:
                break
            start += length
        _, new_text = self.arch.disassemble(new_code[start:], new_va + start)
        _, patched_text = self.arch.disassemble(patched_code[start:], patched_va + start)
        return Mismatch(patched_va + start, new_va + start, patched_text, new_text, reason)


def _ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"0x{a:x}-0x{b:x}" for a, b in ranges)
