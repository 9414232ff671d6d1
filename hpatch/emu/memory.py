"""An emulated address space: page-granular regions with protections, W^X enforced.

Region bytes live in ctypes buffers (anonymous memory maps for large regions) so that the
CPU (Unicorn) executes over the very same memory the loader and the applier write: there
is one copy of every byte, and a page of a large region nobody writes costs nothing (the
kernel zero-fills it on first touch). Every mutation checks its whole range before the
first byte or protection changes, and announces itself to a fault hook first, so tests
can make any step fail.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntFlag
from typing import Protocol

from hpatch.errors import AddressSpaceError, EmulationFault

PAGE_SIZE = 0x1000
#: Regions from this size on live in their own anonymous memory map.
_ANONYMOUS_MAP = 1 << 20
#: Where the allocator looks for free space when nothing constrains it (above the
#: first 64 KiB, below the top of the user-mode half of a 47-bit address space).
LOWEST_VA = 0x10000
HIGHEST_VA = 0x7FFF_FFFF_0000


class Protection(IntFlag):
    """Page access rights. W and X together are refused (W^X)."""

    NONE = 0
    R = 1
    W = 2
    X = 4
    RW = R | W
    RX = R | X


class SpaceObserver(Protocol):
    """Something that mirrors the address space (the CPU) and must hear of changes."""

    def region_mapped(self, region: Region) -> None: ...
    def region_unmapped(self, region: Region) -> None: ...
    def protection_changed(self, va: int, size: int, protection: Protection) -> None: ...
    def code_written(self, va: int, size: int) -> None: ...


_X = int(Protection.X)


def page_floor(value: int) -> int:
    return value & ~(PAGE_SIZE - 1)


def page_ceil(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Region:
    """A mapped run of pages: its bytes and one protection per page."""

    def __init__(self, va: int, size: int, name: str, protection: Protection) -> None:
        self.va = va
        self.size = size
        self.name = name
        # A large region is an anonymous map, not a ctypes array (which zero-fills every
        # byte up front): an image's zero fill stays untouched pages. Small ones stay on
        # the heap, so thousands of stubs and patch regions do not each take a mapping.
        self.pages = mmap.mmap(-1, size) if size >= _ANONYMOUS_MAP else None
        if self.pages is not None:
            self.buffer = (ctypes.c_char * size).from_buffer(self.pages)
        else:
            self.buffer = (ctypes.c_char * size)()
        self.view = memoryview(self.buffer).cast("B")
        self.protections = [protection] * (size // PAGE_SIZE)
        #: Whether a page of it was ever executable: data regions never are, and writing
        #: them needs no look at their pages' protections.
        self.ever_executable = bool(protection & Protection.X)
        #: Guard pages mapped with this region, unmapped with it.
        self.guards: tuple[int, ...] = ()
        #: For a guard page: the region it guards.
        self.guarding: Region | None = None

    @property
    def end(self) -> int:
        return self.va + self.size

    @property
    def address(self) -> int:
        """Where the bytes live in this process (for Unicorn's mem_map_ptr)."""
        return ctypes.addressof(self.buffer)

    def contains(self, va: int) -> bool:
        return self.va <= va < self.end


@dataclass(frozen=True, slots=True)
class RegionState:
    """A region as it stands: for comparing an image before and after an operation."""

    va: int
    size: int
    name: str
    protections: tuple[Protection, ...]
    data: bytes


def _check_protection(protection: Protection) -> None:
    if protection & Protection.W and protection & Protection.X:
        raise AddressSpaceError("W^X: a page is never writable and executable at once")


class AddressSpace:
    """Sorted, non-overlapping regions of one emulated process."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._regions: list[Region] = []
        self.observers: list[SpaceObserver] = []
        #: Called with the operation's name before each mutation; a test sets it to
        #: raise InjectedFault at a chosen step.
        self.fault_hook: Callable[[str], None] | None = None

    # lookup ---------------------------------------------------------------------
    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._regions)

    def region_at(self, va: int) -> Region | None:
        index = bisect.bisect_right(self._starts, va) - 1
        if index >= 0 and self._regions[index].contains(va):
            return self._regions[index]
        return None

    def _span(self, va: int, size: int) -> Region:
        """The one region holding all of [va, va+size), or AddressSpaceError."""
        region = self.region_at(va)
        if region is None or size < 0 or va + size > region.end:
            raise AddressSpaceError(f"0x{va:x}..0x{va + size:x} is not inside one mapped region")
        return region

    def is_free(self, va: int, size: int) -> bool:
        index = bisect.bisect_left(self._starts, va + size)
        return index == 0 or self._regions[index - 1].end <= va

    def protection_at(self, va: int) -> Protection:
        region = self.region_at(va)
        if region is None:
            return Protection.NONE
        return region.protections[(va - region.va) // PAGE_SIZE]

    def is_executable(self, va: int) -> bool:
        return bool(self.protection_at(va) & Protection.X)

    # mutation -------------------------------------------------------------------
    def _announce(self, operation: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(operation)

    def map(
        self, va: int, size: int, protection: Protection, name: str, data: bytes = b""
    ) -> Region:
        """Map ``size`` bytes (rounded up to pages) at page-aligned ``va``, holding ``data``."""
        _check_protection(protection)
        size = page_ceil(max(size, len(data), 1))
        if va % PAGE_SIZE or va < LOWEST_VA or va + size > HIGHEST_VA:
            raise AddressSpaceError(f"cannot map 0x{size:x} bytes at 0x{va:x}")
        if not self.is_free(va, size):
            raise AddressSpaceError(f"0x{va:x}..0x{va + size:x} overlaps a mapped region")
        self._announce("map")
        region = Region(va, size, name, protection)
        region.view[: len(data)] = data
        index = bisect.bisect_left(self._starts, va)
        self._starts.insert(index, va)
        self._regions.insert(index, region)
        for observer in self.observers:
            observer.region_mapped(region)
        return region

    def unmap(self, va: int) -> None:
        """Unmap the region that starts at ``va``."""
        region = self.region_at(va)
        if region is None or region.va != va:
            raise AddressSpaceError(f"no region starts at 0x{va:x}")
        # Only guards still in place: a guard unmapped on its own may have made room
        # for an unrelated region since.
        guards = [self.region_at(guard) for guard in region.guards]
        self._announce("unmap")
        self._remove(region)
        for guard in guards:
            if guard is not None and guard.guarding is region:
                self._remove(guard)

    def _remove(self, region: Region) -> None:
        """Unmap ``region`` without announcing it (after the announcement, or to undo a
        mapping the same call made)."""
        index = self._regions.index(region)
        del self._starts[index]
        del self._regions[index]
        for observer in self.observers:
            observer.region_unmapped(region)

    def protect(self, va: int, size: int, protection: Protection) -> None:
        """Set the protection of every page of [va, va+size) (one region)."""
        _check_protection(protection)
        start = page_floor(va)
        end = page_ceil(va + size)
        region = self._span(start, end - start)
        self._announce("protect")
        for page in range((start - region.va) // PAGE_SIZE, (end - region.va) // PAGE_SIZE):
            region.protections[page] = protection
        if protection & Protection.X:
            region.ever_executable = True
        for observer in self.observers:
            observer.protection_changed(start, end - start, protection)

    def find_free(
        self,
        size: int,
        *,
        lowest: int = LOWEST_VA,
        highest: int = HIGHEST_VA,
        alignment: int = PAGE_SIZE,
        prefer_high: bool = False,
        aligned_offset: int = 0,
    ) -> int | None:
        """The lowest (or highest) va where ``size`` bytes fit inside [lowest, highest)
        without touching a mapped region, such that ``va + aligned_offset`` is
        ``alignment``-aligned."""
        size = page_ceil(max(size, 1))  # map() gives every region at least one page
        lowest = max(lowest, LOWEST_VA)
        highest = min(highest, HIGHEST_VA)
        gaps = []
        cursor = LOWEST_VA
        for region in self._regions:
            gaps.append((cursor, region.va))
            cursor = max(cursor, region.end)
        gaps.append((cursor, HIGHEST_VA))
        if prefer_high:
            gaps.reverse()
        for gap_start, gap_end in gaps:
            start = max(gap_start, lowest)
            end = min(gap_end, highest)
            if prefer_high:
                va = ((end - size + aligned_offset) & ~(alignment - 1)) - aligned_offset
                if va >= start:
                    return va
            else:
                va = ((start + aligned_offset + alignment - 1) & ~(alignment - 1)) - aligned_offset
                if va + size <= end:
                    return va
        return None

    def allocate(
        self,
        size: int,
        protection: Protection,
        name: str,
        *,
        within: tuple[int, int] | None = None,
        alignment: int = PAGE_SIZE,
        guard: bool = False,
    ) -> Region:
        """Map ``size`` bytes somewhere free; with ``within=(lowest, highest)``, the whole
        allocation lies inside that window (how a patch region is kept in branch reach).
        With ``guard``, an inaccessible page is mapped on either side, so running off
        either end faults."""
        lowest, highest = within if within is not None else (LOWEST_VA, HIGHEST_VA)
        size = page_ceil(max(size, 1))
        extra = 2 * PAGE_SIZE if guard else 0
        va = self.find_free(
            size + extra,
            lowest=lowest,
            highest=highest,
            alignment=alignment,
            aligned_offset=PAGE_SIZE if guard else 0,  # the region, not its guard, is aligned
        )
        if va is None:
            raise AddressSpaceError(
                f"no free 0x{size:x} bytes between 0x{lowest:x} and 0x{highest:x}"
            )
        if not guard:
            return self.map(va, size, protection, name)
        mapped: list[Region] = []
        try:
            mapped.append(self.map(va, PAGE_SIZE, Protection.NONE, f"guard below {name}"))
            mapped.append(self.map(va + PAGE_SIZE, size, protection, name))
            mapped.append(
                self.map(va + PAGE_SIZE + size, PAGE_SIZE, Protection.NONE, f"guard above {name}")
            )
        except BaseException:
            for done in reversed(mapped):
                self._remove(done)  # undoing our own mappings is not a new mutation
            raise
        below, region, above = mapped
        below.guarding = above.guarding = region
        region.guards = (below.va, above.va)
        return region

    def write(self, va: int, data: bytes) -> None:
        """Write ``data`` at ``va``; every page must be writable (checked before any byte)."""
        if not data:
            return
        region = self._span(va, len(data))
        for page in range(
            (va - region.va) // PAGE_SIZE, (va + len(data) - 1 - region.va) // PAGE_SIZE + 1
        ):
            if not region.protections[page] & Protection.W:
                raise AddressSpaceError(
                    f"0x{region.va + page * PAGE_SIZE:x} is not writable "
                    f"({region.protections[page]!r})"
                )
        self._announce("write")
        offset = va - region.va
        region.view[offset : offset + len(data)] = data
        self._written(region, va, len(data))

    def poke(self, va: int, data: bytes) -> None:
        """Put ``data`` at ``va`` regardless of protection and without announcing it: the
        host's own bytes (stubs it lays out, an undo putting back what was there)."""
        region = self._span(va, len(data))
        offset = va - region.va
        region.view[offset : offset + len(data)] = data
        self._written(region, va, len(data))

    def _written(self, region: Region, va: int, size: int) -> None:
        """Tell the observers that code changed, when it did: only executable pages hold
        code a CPU may have translated (a page made executable later is announced as a
        protection change then), so data written costs no translation flush."""
        if not size or not region.ever_executable:
            return
        first = (va - region.va) // PAGE_SIZE
        last = (va + size - 1 - region.va) // PAGE_SIZE
        if any(int(p) & _X for p in region.protections[first : last + 1]):
            for observer in self.observers:
                observer.code_written(va, size)

    def read(self, va: int, size: int) -> bytes:
        """``size`` bytes at ``va`` from one mapped region (the host reads regardless of
        protection, as a debugger does)."""
        region = self.region_at(va)
        if region is None or size < 0 or va + size > region.end:
            raise EmulationFault(
                f"read of {size} bytes at 0x{va:x} leaves mapped memory",
                address=va,
                access="read",
                pc=0,
            )
        offset = va - region.va
        return bytes(region.view[offset : offset + size])

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def state(self) -> tuple[RegionState, ...]:
        """Every region's bytes and protections, for before/after comparisons."""
        return tuple(
            RegionState(r.va, r.size, r.name, tuple(r.protections), bytes(r.view))
            for r in self._regions
        )
