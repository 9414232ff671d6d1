"""Every change the applier makes to a process, logged so that it can be taken back.

A Transaction wraps the address space and the function tables: each allocation,
protection change, write, free and table registration is recorded with what it
replaced before it happens. ``undo`` replays the log backwards with the fault hook
silenced, so an operation that failed half-way leaves the process byte-for-byte and
page-for-page as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpatch.emu.memory import PAGE_SIZE, AddressSpace, Protection, Region, page_ceil, page_floor
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
        self,
        size: int,
        protection: Protection,
        name: str,
        within: tuple[int, int],
        alignment: int = PAGE_SIZE,
    ) -> Region:
        region = self.space.allocate(size, protection, name, within=within, alignment=alignment)
        self._log.append(_Mapped(region.va))
        return region

    def _protections(self, va: int, size: int) -> tuple[int, tuple[Protection, ...]]:
        """The first page of [va, va+size) and the protection of each of its pages."""
        first = page_floor(va)
        pages = range(first, page_ceil(va + size), PAGE_SIZE)
        return first, tuple(self.space.protection_at(page) for page in pages)

    def _restore_protections(self, first: int, protections: tuple[Protection, ...]) -> None:
        for index, protection in enumerate(protections):
            self.space.protect(first + index * PAGE_SIZE, 1, protection)

    def protect(self, va: int, size: int, protection: Protection) -> None:
        first, before = self._protections(va, size)
        self.space.protect(va, size, protection)
        self._log.append(_Protected(first, before))

    def write(self, va: int, data: bytes) -> None:
        """Write code or data: the pages are made writable for this write only, then given
        back their protection (W^X: never writable and executable at once)."""
        previous = self.space.read(va, len(data))
        first, original = self._protections(va, len(data))
        needs_flip = any(not p & Protection.W for p in original)
        if needs_flip:
            self.protect(va, len(data), Protection.RW)
        self.space.write(va, data)
        self._log.append(_Written(va, previous))
        if needs_flip:
            for index, protection in enumerate(original):
                self.protect(first + index * PAGE_SIZE, 1, protection)

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
                    self._restore_protections(entry.va, entry.protections)
                elif isinstance(entry, _Written):
                    self.space.poke(entry.va, entry.previous)
                elif isinstance(entry, _Freed):
                    self.space.map(entry.va, entry.size, Protection.NONE, entry.name, entry.data)
                    self._restore_protections(entry.va, entry.protections)
                elif entry.previous is None:
                    self.tables.remove(entry.key)
                else:
                    self.tables.add(entry.key, list(entry.previous))
        finally:
            self.space.fault_hook = hook

    def commit(self) -> None:
        """Keep every change; the log is dropped."""
        self._log.clear()
