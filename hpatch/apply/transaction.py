"""Every change the applier makes to a process, logged so that it can be taken back.

A Transaction wraps the address space and the function tables: each allocation,
protection change, write, free and table registration is recorded with what it
replaced before it happens. ``undo`` replays the log backwards with the fault hook
silenced, so an operation that failed half-way leaves the process byte-for-byte and
page-for-page as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpatch.emu.memory import AddressSpace, Protection, Region
from hpatch.emu.tables import FunctionEntry, FunctionTables


@dataclass(frozen=True, slots=True)
class _Mapped:
    va: int


@dataclass(frozen=True, slots=True)
class _Protected:
    va: int
    protections: tuple[Protection, ...]  # one per page, before the change


@dataclass(frozen=True, slots=True)
class _Written:
    va: int
    previous: bytes


@dataclass(frozen=True, slots=True)
class _Freed:
    va: int
    size: int
    name: str
    protections: tuple[Protection, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class _Table:
    key: object
    previous: tuple[FunctionEntry, ...] | None  # None: nothing was registered under key


_Entry = _Mapped | _Protected | _Written | _Freed | _Table


class Transaction:
    """Changes to one process that either all stand or are all undone."""

    def __init__(self, space: AddressSpace, tables: FunctionTables) -> None:
        self.space = space
        self.tables = tables
        self._log: list[_Entry] = []

    def _step(self, name: str) -> None:
        # Steps outside the address space announce themselves through the same hook.
        if self.space.fault_hook is not None:
            self.space.fault_hook(name)

    def allocate(
        self, size: int, protection: Protection, name: str, within: tuple[int, int]
    ) -> Region:
        region = self.space.allocate(size, protection, name, within=within)
        self._log.append(_Mapped(region.va))
        return region

    def protect(self, va: int, size: int, protection: Protection) -> None:
        first = va & ~0xFFF
        pages = ((va + size + 0xFFF) & ~0xFFF) - first
        before = tuple(
            self.space.protection_at(page) for page in range(first, first + pages, 0x1000)
        )
        self.space.protect(va, size, protection)
        self._log.append(_Protected(first, before))

    def write(self, va: int, data: bytes) -> None:
        """Write code or data: the pages are made writable for this write only, then given
        back their protection (W^X: never writable and executable at once)."""
        previous = self.space.read(va, len(data))
        first = va & ~0xFFF
        pages = range(first, va + len(data), 0x1000)
        original = [self.space.protection_at(page) for page in pages]
        needs_flip = any(not p & Protection.W for p in original)
        if needs_flip:
            self.protect(va, len(data), Protection.RW)
        self.space.write(va, data)
        self._log.append(_Written(va, previous))
        if needs_flip:
            for page, protection in zip(pages, original, strict=True):
                self.protect(page, 1, protection)

    def free(self, region: Region) -> None:
        record = _Freed(
            region.va, region.size, region.name, tuple(region.protections), bytes(region.view)
        )
        self.space.unmap(region.va)
        self._log.append(record)

    def register_table(self, key: object, entries: list[FunctionEntry]) -> None:
        self._step("register unwind table")
        previous = self.tables.entries(key)
        self.tables.add(key, entries)
        self._log.append(_Table(key, previous))

    def remove_table(self, key: object) -> None:
        self._step("remove unwind table")
        previous = self.tables.entries(key)
        self.tables.remove(key)
        self._log.append(_Table(key, previous))

    def undo(self) -> None:
        """Take back every logged change, newest first."""
        hook, self.space.fault_hook = self.space.fault_hook, None
        try:
            while self._log:
                entry = self._log.pop()
                if isinstance(entry, _Mapped):
                    self.space.unmap(entry.va)
                elif isinstance(entry, _Protected):
                    for index, protection in enumerate(entry.protections):
                        self.space.protect(entry.va + index * 0x1000, 1, protection)
                elif isinstance(entry, _Written):
                    region = self.space.region_at(entry.va)
                    assert region is not None
                    offset = entry.va - region.va
                    region.view[offset : offset + len(entry.previous)] = entry.previous
                    for observer in self.space.observers:
                        observer.code_written(entry.va, len(entry.previous))
                elif isinstance(entry, _Freed):
                    region = self.space.map(
                        entry.va, entry.size, Protection.NONE, entry.name, entry.data
                    )
                    for index, protection in enumerate(entry.protections):
                        self.space.protect(entry.va + index * 0x1000, 1, protection)
                elif entry.previous is None:
                    self.tables.remove(entry.key)
                else:
                    self.tables.add(entry.key, list(entry.previous))
        finally:
            self.space.fault_hook = hook

    def commit(self) -> None:
        """Keep every change; the log is dropped."""
        self._log.clear()
