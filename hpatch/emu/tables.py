"""The process's function tables: each module's .pdata and the tables registered for
patch code (what RtlLookupFunctionEntry searches, and RtlAddFunctionTable extends)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from hpatch.arch import Machine
from hpatch.emu.machine import arch_of
from hpatch.emu.unwind import FunctionEntry


def read_entries(
    machine: Machine,
    read: Callable[[int, int], bytes],
    image_base: int,
    table_va: int,
    count: int,
    ends: Callable[[int, int], int],
) -> list[FunctionEntry]:
    """Decode ``count`` RUNTIME_FUNCTIONs at ``table_va``; ``ends(begin_rva, word)`` gives
    the end RVA of an entry without one (ARM64: its length lives in the unwind data)."""
    arch = arch_of(machine)
    size, end_field = arch.pdata_entry_size, arch.pdata_end_field
    word_field = arch.pdata_unwind_field
    raw = read(table_va, size * count)
    entries = []
    for index in range(count):
        record = raw[index * size : (index + 1) * size]
        begin = int.from_bytes(record[0:4], "little")
        word = int.from_bytes(record[word_field : word_field + 4], "little")
        if end_field is None:
            end = ends(begin, word)
        else:
            end = int.from_bytes(record[end_field : end_field + 4], "little")
        entries.append(FunctionEntry(image_base, image_base + begin, image_base + end, word))
    return entries


class FunctionTables:
    """Registered tables, searched by address."""

    def __init__(self) -> None:
        self._tables: dict[object, list[FunctionEntry]] = {}
        self._starts: list[int] = []
        self._entries: list[FunctionEntry] = []

    def add(self, key: object, entries: Iterable[FunctionEntry]) -> None:
        """Register a table under ``key`` (replacing one registered under it)."""
        self._tables[key] = sorted(entries, key=lambda e: e.begin_va)
        self._rebuild()

    def remove(self, key: object) -> None:
        self._tables.pop(key, None)
        self._rebuild()

    def entries(self, key: object) -> tuple[FunctionEntry, ...] | None:
        table = self._tables.get(key)
        return None if table is None else tuple(table)

    def __contains__(self, key: object) -> bool:
        return key in self._tables

    def _rebuild(self) -> None:
        self._entries = sorted(
            (e for table in self._tables.values() for e in table), key=lambda e: e.begin_va
        )
        self._starts = [e.begin_va for e in self._entries]

    def lookup(self, pc: int) -> FunctionEntry | None:
        """The entry whose [begin, end) holds ``pc``, or None (a leaf, or not code)."""
        index = bisect.bisect_right(self._starts, pc) - 1
        if index >= 0 and pc < self._entries[index].end_va:
            return self._entries[index]
        return None
