"""Differential emulation: the patched old image and the new build, run side by side.

Each function the package carries is called in both processes with the same inputs:
integer and pointer arguments into identical scratch buffers (mapped at the same
addresses on both sides), identical stubs for every import (each call is logged, and
answered from the same pseudo-random sequence), and globals that start from each
image's own initial data. The return value, every byte written to the scratch
buffers, the stub heap and the image's writable sections, and the sequence of import
calls must agree, pointers compared under the correspondence. Runs that cannot be
compared (a side that does not return within the step bound) are not counted; a
function with fewer comparable runs than asked for is reported as not emulated, with
the reason, never as a pass.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from hpatch.diff.correlate import Correlator
from hpatch.emu import Process
from hpatch.emu.cpu import ThreadState
from hpatch.emu.memory import PAGE_SIZE, Protection, page_floor
from hpatch.emu.process import ImportKey
from hpatch.errors import EmulationFault, HPatchError
from hpatch.package import new_data
from hpatch.package.model import NO_RVA, FunctionStatus, PatchFunction
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.model import EmulationSummary, Outcome
from hpatch.verify.session import Session

#: Instructions a call may take before it counts as not returning.
STEP_LIMIT = 200_000
#: Integer arguments passed (x64: four in registers, two on the stack; ARM64: six registers).
_ARGUMENTS = 6
#: Scratch buffers at fixed addresses (the same in both processes), each followed by
#: an inaccessible page so that running off the end faults alike.
_SCRATCH_VA = 0x0000_0040_0000_0000
_SCRATCH_COUNT = 4
_SCRATCH_SIZE = 0x1000
_HEAP_VA = 0x0000_0041_0000_0000
_HEAP_SIZE = 0x10000
_HEAP_CHUNK = 0x100
#: Bytes below the top of the stack cleared before each call.
_STACK_CLEARED = 0x10000
_HEAP_ZEROS = bytes(_HEAP_SIZE)  # made once: every call clears the heap and the stack
_STACK_ZEROS = bytes(_STACK_CLEARED)
_SCRATCH_ZEROS = bytes(_SCRATCH_SIZE)
#: Import calls logged with this many arguments (those beyond a callee's real arity are
#: leftovers of the same computation on both sides, so they compare too).
_LOGGED_ARGUMENTS = 4
#: Tries per comparable run asked for before a function counts as not emulated.
_TRIES_PER_INPUT = 3
#: Every byte of a scratch buffer's bits masked to its low four bits.
_LOW_NIBBLES = int.from_bytes(b"\x0f" * _SCRATCH_SIZE, "little")


def global_pairs(session: Session) -> list[tuple[str, int, int, int, int]]:
    """(section name, offset in the section, patched VA, new VA, size) of every run of
    globals that both processes have: the old image's writable sections where the new
    build keeps their bytes (moved as the diff's layout says, else at the same offsets),
    and the new globals the package carries in its region."""
    diff = session.diff
    old_module, new_module = session.module_of("patched"), session.module_of("new")
    old_sections = {s.name: s for s in diff.old.sections if s.is_writable and s.virtual_size}
    pairs = []
    for section in diff.new.sections:
        old = old_sections.get(section.name)
        if old is None or not section.is_writable or not section.virtual_size:
            continue
        layout = diff.correspondence.layouts.get(section.name)
        segments = (
            [(s.old_rva, s.new_rva, s.size) for s in layout.segments]
            if layout is not None
            else [(old.rva, section.rva, min(old.virtual_size, section.virtual_size))]
        )
        for old_rva, new_rva, size in segments:
            pairs.append(
                (
                    section.name,
                    new_rva - section.rva,
                    old_module.va(old_rva),
                    new_module.va(new_rva),
                    size,
                )
            )
    correlator = Correlator(
        diff.correspondence.old, diff.correspondence.new, diff.correspondence, diff.changes
    )
    spans = new_data.carried_spans(diff, correlator)
    offsets = new_data.span_offsets(spans, new_data.alignment(diff.new.identity.machine))
    for (start, end), offset in zip(spans, offsets, strict=True):
        holder = diff.new.section_at(start)
        name = holder.name if holder is not None else "new data"
        base = start - holder.rva if holder is not None else 0
        pairs.append((name, base, session.region_va + offset, new_module.va(start), end - start))
    return pairs


@dataclass(frozen=True, slots=True)
class _InputSet:
    """One input set, drawn once from its seed and given to both sides alike."""

    seed: str
    scratch: tuple[bytes, ...]  # the contents of each scratch buffer
    arguments: tuple[int, ...]

    @classmethod
    def draw(cls, seed: str) -> _InputSet:
        rng = random.Random(seed)
        getrandbits = rng.getrandbits
        scratch = []
        for _ in range(_SCRATCH_COUNT):
            style = rng.randrange(3)
            if style == 0:
                scratch.append(_SCRATCH_ZEROS)
                continue
            # rng.randbytes(n) is getrandbits(8 * n) in little-endian order; taken as the
            # integer, its bytes are masked in one operation.
            bits = getrandbits(_SCRATCH_SIZE * 8)
            if style == 1:
                # Small values, 0 to 15: drawn as whole bytes and masked (a draw per
                # byte made up nearly all the time emulation took).
                bits &= _LOW_NIBBLES
            scratch.append(bits.to_bytes(_SCRATCH_SIZE, "little"))
        arguments = []
        for _ in range(_ARGUMENTS):
            choice = rng.random()
            buffer = _scratch_va(rng.randrange(_SCRATCH_COUNT))
            if choice < 0.35:
                arguments.append(buffer)
            elif choice < 0.45:
                arguments.append(buffer + rng.randrange(_SCRATCH_SIZE))
            elif choice < 0.8:
                arguments.append(rng.randrange(17))
            elif choice < 0.9:
                arguments.append(rng.randrange(256))
            else:
                arguments.append(rng.getrandbits(32))
        return cls(seed, tuple(scratch), tuple(arguments))


@dataclass(frozen=True, slots=True)
class _Run:
    """How one call ended on one side."""

    kind: str  # "returned", "faulted", "stopped"
    value: int = 0
    fault: EmulationFault | None = None


class DifferentialRunner:
    """Runs the functions of one applied package on both sides and compares."""

    def __init__(self, session: Session, counterparts: Counterparts, inputs: int) -> None:
        self.session = session
        session.on_import = self.on_import
        self.counterparts = counterparts
        self.inputs = inputs
        self.log: dict[str, list[tuple[str, tuple[int, ...]]]] = {"patched": [], "new": []}
        #: The answers of the import stubs to this input set's calls, in call order: the
        #: n-th call on either side gets the n-th (see ``on_import``).
        self._answers: list[int] = []
        self._answer_seed: str | None = None  # None: no input set, every call gets 0
        self._answer_random: random.Random | None = None
        self._answer_heap_next = _HEAP_VA
        self._import_calls = {"patched": 0, "new": 0}
        #: Per side, the bytes each call starts from, as (the memory's view, its
        #: contents): the scratch buffers (the input set's), then the stub heap and the
        #: top of the stack (zero), then the writable areas (their initial bytes).
        self._scratch_views: dict[str, list[memoryview]] = {}
        self._zeroed_views: dict[str, list[tuple[memoryview, bytes]]] = {}
        for side, process in (("patched", session.patched), ("new", session.new)):
            scratch = [
                process.space.map(_scratch_va(i), _SCRATCH_SIZE, Protection.RW, f"scratch {i}")
                for i in range(_SCRATCH_COUNT)
            ]
            heap = process.space.map(_HEAP_VA, _HEAP_SIZE, Protection.RW, "stub heap")
            stack = process.main_thread.stack
            used = min(_STACK_CLEARED, stack.size)
            self._scratch_views[side] = [region.view for region in scratch]
            self._zeroed_views[side] = [
                (heap.view, _HEAP_ZEROS),
                (stack.view[stack.size - used :], _STACK_ZEROS[:used]),
            ]
        #: The globals of both sides, as (name, offset in it, patched VA, new VA, and the
        #: initial bytes of each side): the old image's where the new build has them too,
        #: and the new globals the package carries.
        self._globals = [
            (name, offset, patched_va, new_va, *self._both(patched_va, new_va, size))
            for name, offset, patched_va, new_va, size in global_pairs(session)
        ]

        #: Per side, what each run starts from: (VA, initial bytes) of every writable
        #: section, and of the new globals the package carries.
        self._initial: dict[str, list[tuple[int, bytes]]] = {}
        for side, process in (("patched", session.patched), ("new", session.new)):
            module = session.module_of(side)
            self._initial[side] = [
                (module.va(s.rva), process.space.read(module.va(s.rva), s.virtual_size))
                for s in module.image.sections
                if s.is_writable and s.virtual_size > 0
            ]
        self._initial["patched"] += [
            (patched_va, before)
            for _, _, patched_va, _, before, _ in self._globals
            if session.in_region(patched_va)
        ]
        self._initial_views = {
            side: [self._view(side, va, data) for va, data in areas]
            for side, areas in self._initial.items()
        }
        #: Areas with an executable page (none under W^X, where a run writes only data):
        #: put back through the address space, which drops the code translated there.
        self._initial_code = {
            side: [
                (va, data)
                for va, data in areas
                if any(
                    process.space.is_executable(page)
                    for page in range(page_floor(va), va + len(data), PAGE_SIZE)
                )
            ]
            for (side, areas), process in zip(
                self._initial.items(), (session.patched, session.new), strict=True
            )
        }
        #: The globals by the initial areas holding them on each side (None when none
        #: does): a call that left both areas as they began wrote none of them, so
        #: comparing areas once per call stands for comparing hundreds of globals.
        self._by_areas: dict[tuple[int | None, int | None], list[int]] = {}
        #: Per global: the initial area holding it on each side, and its offset there.
        self._places: list[tuple[int | None, int, int | None, int]] = []
        for index, (_, _, patched_va, new_va, before, _) in enumerate(self._globals):
            areas = (
                self._area_of("patched", patched_va, len(before)),
                self._area_of("new", new_va, len(before)),
            )
            self._by_areas.setdefault(areas, []).append(index)
            self._places.append(
                (
                    areas[0],
                    patched_va - self._initial["patched"][areas[0]][0]
                    if areas[0] is not None
                    else 0,
                    areas[1],
                    new_va - self._initial["new"][areas[1]][0] if areas[1] is not None else 0,
                )
            )
        #: Per side, the initial areas the last call left as they began (compared after
        #: it), which the next call need not put back; empty when not compared.
        self._unchanged: dict[str, list[int]] = {"patched": [], "new": []}
        #: Whether both stub heaps were found all zero after the last calls (compared).
        self._heap_clean = False
        #: The globals compared after every call: those outside every initial area.
        self._always_checked = sorted(
            index
            for (patched_area, new_area), indices in self._by_areas.items()
            if patched_area is None or new_area is None
            for index in indices
        )
        #: What each process maps of its own, as [start, end) ranges: the patched one its
        #: image and the patch region, the new one its image.
        self._own = (
            (
                (session.old_module.base, session.old_module.end),
                (session.region_va, session.region_va + session.region_size),
            ),
            ((session.new_module.base, session.new_module.end),),
        )
        #: The memory compared whole after every call, named, as both sides' views.
        self._compared: list[tuple[str, memoryview, memoryview]] = [
            (f"scratch buffer {i}", patched, new)
            for i, (patched, new) in enumerate(
                zip(self._scratch_views["patched"], self._scratch_views["new"], strict=True)
            )
        ]
        self._compared.append(
            ("the stub heap", self._zeroed_views["patched"][0][0], self._zeroed_views["new"][0][0])
        )

    def _area_of(self, side: str, va: int, size: int) -> int | None:
        for index, (start, data) in enumerate(self._initial[side]):
            if start <= va and va + size <= start + len(data):
                return index
        return None

    def _view(self, side: str, va: int, data: bytes) -> tuple[memoryview, bytes]:
        """The memory of ``side`` that ``data`` lies over at ``va``, and ``data``."""
        process = self.session.patched if side == "patched" else self.session.new
        region = process.space.region_at(va)
        if region is None or va + len(data) > region.end:
            raise HPatchError(f"0x{va:x}..0x{va + len(data):x} is not one mapped region")
        offset = va - region.va
        return region.view[offset : offset + len(data)], data

    def _written_areas(self, side: str) -> dict[int, bytes]:
        """The initial areas of ``side`` whose bytes the call changed, and their bytes."""
        written = {}
        for index, (view, data) in enumerate(self._initial_views[side]):
            after = bytes(view)
            if after != data:
                written[index] = after
        return written

    def _read(self, side: str, va: int, size: int) -> bytes:
        process = self.session.patched if side == "patched" else self.session.new
        return process.space.read(va, size)

    def _both(self, patched_va: int, new_va: int, size: int) -> tuple[bytes, bytes]:
        return self._read("patched", patched_va, size), self._read("new", new_va, size)

    # --- import stubs --------------------------------------------------------------
    def on_import(self, side: str, key: ImportKey, arguments: tuple[int, ...]) -> int:
        """Log the call; answer with the next value of this input set's sequence.

        Both sides get the same sequence: the n-th import call of either side is
        answered with its n-th value. The values are drawn once, when the first side
        to get that far asks for them (the draws and the heap they hand out depend on
        the earlier values only, never on the side)."""
        self.log[side].append((str(key), arguments[:_LOGGED_ARGUMENTS]))
        index = self._import_calls[side]
        self._import_calls[side] = index + 1
        answers = self._answers
        if index < len(answers):
            return answers[index]
        if self._answer_seed is None:
            return 0
        answer = self._next_answer()
        answers.append(answer)
        return answer

    def begin_answers(self, seed: str) -> None:
        """Answer the import calls of the input set ``seed`` from now on (both sides
        from their first call)."""
        self._answers = []
        self._answer_seed = f"{seed}/stubs"
        self._answer_random = None  # seeded when the first import call is answered
        self._answer_heap_next = _HEAP_VA
        self._import_calls = {"patched": 0, "new": 0}

    def _next_answer(self) -> int:
        rng = self._answer_random
        if rng is None:
            assert self._answer_seed is not None
            rng = self._answer_random = random.Random(self._answer_seed)
        choice = rng.random()
        if choice < 0.4:
            return 0
        if choice < 0.6:
            return 1
        if choice < 0.8 and self._answer_heap_next + _HEAP_CHUNK <= _HEAP_VA + _HEAP_SIZE:
            va = self._answer_heap_next
            self._answer_heap_next += _HEAP_CHUNK
            return va
        return rng.randrange(0, 64)

    # --- one function --------------------------------------------------------------
    def run(self, function: PatchFunction) -> EmulationSummary:
        session = self.session
        if function.status == FunctionStatus.MODIFIED and function.old_rva != NO_RVA:
            patched_entry = session.old_base + function.old_rva
        else:
            copy = session.copy_of(function.new_rva)
            assert copy is not None
            patched_entry = copy
        new_entry = session.new_base + function.new_rva
        agreed = returned = tried = 0
        self._unchanged = {"patched": [], "new": []}  # the first call puts back every area
        self._heap_clean = False
        skipped: Counter[str] = Counter()
        first_fault = ""
        for index in range(self.inputs * _TRIES_PER_INPUT):
            if agreed >= self.inputs:
                break
            tried += 1
            seed = f"{function.new_rva:x}/{index}"
            inputs = _InputSet.draw(seed)
            self.begin_answers(seed)
            patched = self._call("patched", session.patched, patched_entry, inputs)
            new = self._call("new", session.new, new_entry, inputs)
            if patched.kind == "stopped" or new.kind == "stopped":
                skipped[f"does not return within {STEP_LIMIT} instructions"] += 1
                continue
            if self._laid_out_differently(patched, new):
                skipped["reads past an image, where only one process maps something"] += 1
                continue
            problem = self._compare(patched, new)
            if problem is not None:
                return EmulationSummary(
                    Outcome.FAILED,
                    agreed,
                    returned,
                    tried,
                    f"input set {index} (seed {seed!r}): {problem}",
                )
            agreed += 1
            if patched.kind == "returned":
                returned += 1
            elif not first_fault and new.fault is not None:
                first_fault = str(new.fault)
        if agreed < self.inputs:
            reason = skipped.most_common(1)[0][0] if skipped else "too few comparable runs"
            return EmulationSummary(
                Outcome.NOT_EMULATED,
                agreed,
                returned,
                tried,
                f"{agreed} of {tried} input sets comparable: {reason}",
            )
        if returned == 0:
            return EmulationSummary(
                Outcome.NOT_EMULATED,
                agreed,
                returned,
                tried,
                f"faults alike on every random input (needs structured arguments): {first_fault}",
            )
        return EmulationSummary(Outcome.PASSED, agreed, returned, tried)

    # --- running -------------------------------------------------------------------
    def _prepare(self, side: str, inputs: _InputSet) -> None:
        """Reset the side's memory for the input set ``inputs``: the scratch buffers,
        the stub heap, the top of the stack (a local the code reads before writing, an
        out-parameter a stub never fills, would otherwise hold what an earlier call left
        there, whose pointers differ between the sides) and the writable areas."""
        for view, content in zip(self._scratch_views[side], inputs.scratch, strict=True):
            view[:] = content
        heap_clean, self._heap_clean = self._heap_clean, False
        for index, (view, data) in enumerate(self._zeroed_views[side]):
            if index or not heap_clean:
                view[:] = data
        if side == "patched":
            self._heap_clean = heap_clean  # for the other side's call
        unchanged, self._unchanged[side] = self._unchanged[side], []
        for index, (view, data) in enumerate(self._initial_views[side]):
            if index not in unchanged:
                view[:] = data
        if self._initial_code[side]:
            space = self.session.patched.space if side == "patched" else self.session.new.space
            for va, data in self._initial_code[side]:
                space.poke(va, data)
        self.log[side] = []
        self._import_calls[side] = 0

    def _call(self, side: str, process: Process, entry_va: int, inputs: _InputSet) -> _Run:
        self._prepare(side, inputs)
        thread = process.main_thread
        process.cpu.start(thread, entry_va, inputs.arguments)
        try:
            state = process.cpu.run(thread, STEP_LIMIT)
            fault, result = thread.fault, thread.result
        finally:
            process.cpu.finish(thread)
        if state == ThreadState.STOPPED:
            return _Run("stopped")
        if fault is not None:
            return _Run("faulted", fault=fault)
        if result is None:
            raise HPatchError(f"the call to 0x{entry_va:x} ended without a result")
        return _Run("returned", value=result)

    # --- comparing -----------------------------------------------------------------
    def _same_fault(self, patched: EmulationFault, new: EmulationFault) -> bool:
        """Two faults of one access happened alike: at corresponding addresses, or, where
        both addresses are wild (in neither image nor the patch region, as a random index
        makes them), at corresponding instructions."""
        same = self.counterparts.same_value
        if same(patched.address, new.address):
            return True
        session = self.session
        wild = not (
            session.old_module.contains(patched.address)
            or session.in_region(patched.address)
            or session.new_module.contains(new.address)
        )
        return wild and patched.pc != patched.address and same(patched.pc, new.pc)

    def _laid_out_differently(self, patched: _Run, new: _Run) -> bool:
        """One side faulted where the other process maps its own image or the patch
        region (which lies just past the old image): the two address spaces differ
        there by construction, so a run that strays there (an index past the end of a
        global array) says nothing about the package."""
        if patched.fault is None and new.fault is None:
            return False
        patched_own, new_own = self._own
        for fault, mine, other in (
            (patched.fault, patched_own, new_own),
            (new.fault, new_own, patched_own),
        ):
            if fault is None:
                continue
            va = fault.address
            if any(lo <= va < hi for lo, hi in other) and not any(lo <= va < hi for lo, hi in mine):
                return True
        return False

    def _compare(self, patched: _Run, new: _Run) -> str | None:
        same = self.counterparts.same_value
        if patched.kind != new.kind:
            return f"the patched image {_describe(patched)}, the new build {_describe(new)}"
        if patched.kind == "returned" and not same(patched.value, new.value):
            return f"returned 0x{patched.value:x}, the new build 0x{new.value:x}"
        if patched.kind == "faulted":
            assert patched.fault is not None and new.fault is not None
            if patched.fault.access != new.fault.access or not self._same_fault(
                patched.fault, new.fault
            ):
                return f"faulted with {patched.fault}, the new build with {new.fault}"
        problem = self._compare_log()
        if problem is not None:
            return problem
        return self._compare_memory()

    def _compare_log(self) -> str | None:
        patched, new = self.log["patched"], self.log["new"]
        if patched == new:
            return None  # the same imports with equal arguments, call by call
        for index, (left, right) in enumerate(zip(patched, new, strict=False)):
            if left == right:
                continue
            if left[0] != right[0]:
                return f"import call {index} is {left[0]}, the new build calls {right[0]}"
            for position, (a, b) in enumerate(zip(left[1], right[1], strict=True)):
                if not self.counterparts.same_value(a, b):
                    return (
                        f"import call {index} ({left[0]}) passes 0x{a:x} as argument "
                        f"{position}, the new build 0x{b:x}"
                    )
        if len(patched) != len(new):
            return f"{len(patched)} import calls, the new build makes {len(new)}"
        return None

    def _compare_memory(self) -> str | None:
        for name, patched_view, new_view in self._compared:
            patched, new = bytes(patched_view), bytes(new_view)
            if patched == new:
                if patched_view is self._zeroed_views["patched"][0][0]:
                    # Both stub heaps are as the calls found them: the next calls need
                    # not clear them.
                    self._heap_clean = patched == _HEAP_ZEROS
                continue
            found = self._disagreement(patched, new, range(0, len(patched), 8))
            if found is not None:
                at, a, b = found
                return f"{name}: +0x{at:x} holds 0x{a:x}, the new build 0x{b:x}"
        written_patched, written_new = self._written_areas("patched"), self._written_areas("new")
        # The next call need not put back the areas this one left as they began.
        self._unchanged["patched"] = [
            i for i in range(len(self._initial_views["patched"])) if i not in written_patched
        ]
        self._unchanged["new"] = [
            i for i in range(len(self._initial_views["new"])) if i not in written_new
        ]
        # Globals of areas both as they began are as they began, and are not read.
        checked = (
            sorted(
                index
                for (patched_area, new_area), indices in self._by_areas.items()
                if patched_area is None
                or new_area is None
                or patched_area in written_patched
                or new_area in written_new
                for index in indices
            )
            if written_patched or written_new
            else self._always_checked
        )
        for index in checked:
            name, base, patched_va, new_va, patched_before, new_before = self._globals[index]
            size = len(patched_before)
            # From the areas' bytes after the call (read once), not read one by one.
            patched_area, patched_at, new_area, new_at = self._places[index]
            if patched_area is None:
                patched_after = self._read("patched", patched_va, size)
            elif patched_area in written_patched:
                patched_after = written_patched[patched_area][patched_at : patched_at + size]
            else:
                patched_after = patched_before  # its area is as it began
            if new_area is None:
                new_after = self._read("new", new_va, size)
            elif new_area in written_new:
                new_after = written_new[new_area][new_at : new_at + size]
            else:
                new_after = new_before
            if patched_after == patched_before and new_after == new_before:
                continue
            # What the call wrote, on either side, compared word by word.
            written = [
                at
                for at in range(0, size, 8)
                if patched_before[at : at + 8] != patched_after[at : at + 8]
                or new_before[at : at + 8] != new_after[at : at + 8]
            ]
            found = self._disagreement(patched_after, new_after, written)
            if found is not None:
                at, a, b = found
                return f"{name}: +0x{base + at:x} becomes 0x{a:x}, in the new build 0x{b:x}"
        return None

    def _disagreement(
        self, patched: bytes, new: bytes, offsets: Iterable[int]
    ) -> tuple[int, int, int] | None:
        """The first 8-byte word at ``offsets`` whose values differ other than as
        addresses of the same thing: (offset, patched value, new value). An address
        stored off the word grid (a structure at an odd offset in a buffer) spans two
        words: a byte that differs may lie in any 8 bytes around it that hold
        addresses of the same thing."""
        for at in offsets:
            left, right = patched[at : at + 8], new[at : at + 8]
            if left == right:
                continue
            (a,) = struct.unpack("<Q", left.ljust(8, b"\0"))
            (b,) = struct.unpack("<Q", right.ljust(8, b"\0"))
            if self.counterparts.same_value(a, b):
                continue
            if not all(
                self._in_address(patched, new, at + index)
                for index in range(len(left))
                if left[index] != right[index]
            ):
                return at, a, b
        return None

    def _in_address(self, patched: bytes, new: bytes, at: int) -> bool:
        """Whether byte ``at`` lies in 8 bytes, at some offset, that hold addresses of
        the same thing on both sides."""
        for start in range(max(0, at - 7), min(at, len(new) - 8) + 1):
            left, right = patched[start : start + 8], new[start : start + 8]
            if left != right and self.counterparts.same_value(
                int.from_bytes(left, "little"), int.from_bytes(right, "little")
            ):
                return True
        return False


def _scratch_va(index: int) -> int:
    return _SCRATCH_VA + index * 2 * _SCRATCH_SIZE


def _describe(run: _Run) -> str:
    if run.kind == "returned":
        return f"returned 0x{run.value:x}"
    if run.kind == "faulted":
        return f"faulted ({run.fault})"
    return "did not return"
