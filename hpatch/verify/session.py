"""The two processes verification compares: the old image with the package applied,
and the new build, each loaded as the Windows loader would map it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpatch.apply import ApplyOptions, apply_package
from hpatch.apply.state import active_patch
from hpatch.diff import DiffResult
from hpatch.emu import Module, Process, Protection
from hpatch.emu.cpu import Cpu, HostCall, ThreadState
from hpatch.emu.memory import PAGE_SIZE
from hpatch.emu.process import ImportKey
from hpatch.errors import ApplyError, HPatchError
from hpatch.package.model import FunctionStatus, Package, PatchFunction

#: What a host stub is told when it runs: which process ("patched" or "new"), which
#: import, and the call's first integer arguments.
ImportHook = Callable[[str, ImportKey, tuple[int, ...]], int]

#: Jumps followed from a redirected entry before the patch code must be reached (an
#: x64 two-stage redirect takes two; ARM64's LDR/BR form three instructions).
_REDIRECT_STEPS = 4


@dataclass(frozen=True, slots=True)
class Copy:
    """Where a function the package carries lies: its region VA range for a new RVA range."""

    function: PatchFunction
    patched_va: int  # region VA of the part
    new_rva: int
    size: int


class Session:
    """The old image with the package applied, beside the new build.

    Every import of either image goes to one host function, ``on_import`` (0 for every
    call until someone sets it), told which side called: identical stubs on both
    sides, so that their calls can be compared. Entry points are not run: globals start
    from each image's own initial data.
    """

    def __init__(self, diff: DiffResult, package: Package) -> None:
        self.diff = diff
        self.on_import: ImportHook = lambda side, key, arguments: 0
        machine = diff.old.identity.machine

        def stubs(side: str) -> Callable[[ImportKey], HostCall]:
            def stub_for(key: ImportKey) -> HostCall:
                def call(cpu: Cpu, arguments: tuple[int, ...]) -> int:
                    return self.on_import(side, key, arguments)

                return call

            return stub_for

        self.patched = Process(machine, unmodelled=stubs("patched"))
        self.old_module = self.patched.load_image(diff.old, run_entry_point=False)
        try:
            apply_package(
                self.patched,
                package,
                module=self.old_module,
                options=ApplyOptions(allow_unsigned=True),
            )
        except ApplyError as error:
            raise HPatchError(f"the package does not apply to the old image: {error}") from error
        active = active_patch(self.old_module)
        assert active is not None
        self.package = active.package  # resolved against the baseline by the apply
        self.region_va, self.region_size = active.region_va, active.region_size
        self.new = Process(machine, unmodelled=stubs("new"))
        self.new_module = self.new.load_image(diff.new, run_entry_point=False)
        self.copies: list[Copy] = [
            Copy(function, self.region_va + part.offset, part.new_rva, part.size)
            for function in self.package.functions
            for part in function.parts
        ]
        self._landings: dict[int, int | None] = {}
        self._stepper = self.patched.new_thread()
        self._mirror_layouts()

    def _mirror_layouts(self) -> None:
        """Give both address spaces the same mapped ranges outside the two images and the
        patch region (stacks, TEBs, stub pages): a pointer a run makes up then reads the
        same bytes, or faults, alike on both sides. What one side lacks is copied from
        the other, contents and page protections."""
        own = {
            "patched": (self.old_module.base, self.old_module.end),
            "new": (self.new_module.base, self.new_module.end),
        }
        patch = (self.region_va, self.region_va + self.region_size)

        def foreign(side: str, process: Process) -> list[tuple[int, int]]:
            lo, hi = own[side]
            return [
                (r.va, r.size)
                for r in process.space.regions
                if not (lo <= r.va < hi) and not (patch[0] <= r.va < patch[1])
            ]

        patched, new = foreign("patched", self.patched), foreign("new", self.new)
        for source, target, missing in (
            (self.patched, self.new, set(patched) - set(new)),
            (self.new, self.patched, set(new) - set(patched)),
        ):
            for va, size in sorted(missing):
                region = source.space.region_at(va)
                if region is None or not target.space.is_free(va, size):
                    continue
                copy = target.space.map(
                    va, size, Protection.RW, f"mirror of {region.name}", bytes(region.view)
                )
                for index, protection in enumerate(region.protections):
                    if protection != Protection.RW:
                        target.space.protect(copy.va + index * PAGE_SIZE, PAGE_SIZE, protection)

    @property
    def old_base(self) -> int:
        return self.old_module.base

    @property
    def new_base(self) -> int:
        return self.new_module.base

    def in_region(self, va: int) -> bool:
        return self.region_va <= va < self.region_va + self.region_size

    def copy_of(self, new_rva: int) -> int | None:
        """The region VA holding the package's copy of the new build's byte at ``new_rva``."""
        for copy in self.copies:
            if copy.new_rva <= new_rva < copy.new_rva + copy.size:
                return copy.patched_va + new_rva - copy.new_rva
        return None

    def copy_at(self, patched_va: int) -> Copy | None:
        """The copy of a part that holds region VA ``patched_va``, if one does."""
        for copy in self.copies:
            if copy.patched_va <= patched_va < copy.patched_va + copy.size:
                return copy
        return None

    def landing(self, entry_va: int) -> int | None:
        """Where a call to ``entry_va`` in the patched process first reaches code outside
        the old module (the patch region, through a redirect); None if it does not
        within a few instructions."""
        if entry_va not in self._landings:
            self._landings[entry_va] = self._follow(entry_va)
        return self._landings[entry_va]

    def _follow(self, entry_va: int) -> int | None:
        # The redirect is executed rather than decoded: whatever encoding the applier
        # wrote, the CPU decides where it goes.
        process, thread = self.patched, self._stepper
        process.cpu.start(thread, entry_va, ())
        try:
            for _ in range(_REDIRECT_STEPS):
                state = process.cpu.run(thread, 1)
                if state != ThreadState.STOPPED:
                    return None
                pc = process.cpu.registers(thread)["pc"]
                if not self.old_module.contains(pc):
                    return pc
            return None
        finally:
            process.cpu.finish(thread)

    def modified(self) -> list[PatchFunction]:
        return [f for f in self.package.functions if f.status == FunctionStatus.MODIFIED]

    def module_of(self, side: str) -> Module:
        return self.old_module if side == "patched" else self.new_module
