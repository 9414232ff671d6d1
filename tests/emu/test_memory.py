"""AddressSpace: regions, protections and W^X, all-or-nothing writes, allocation inside a
window, guard pages, the fault hook, and the CPU's mirror of all of it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import unicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from hpatch.arch import Machine
from hpatch.emu import AddressSpace, Protection, ThreadState
from hpatch.emu.cpu import Cpu
from hpatch.emu.memory import HIGHEST_VA, LOWEST_VA, PAGE_SIZE
from hpatch.errors import AddressSpaceError, EmulationFault

BASE = 0x1000_0000
WX = [Protection.W | Protection.X, Protection.R | Protection.W | Protection.X]


class InjectedFault(Exception):
    pass


def space_with(*regions: tuple[int, int, Protection]) -> AddressSpace:
    space = AddressSpace()
    for index, (va, size, protection) in enumerate(regions):
        space.map(va, size, protection, f"r{index}")
    return space


# mapping --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("va", "size"),
    [
        (BASE, PAGE_SIZE),  # the same pages
        (BASE - PAGE_SIZE, 2 * PAGE_SIZE),  # reaches into its first page
        (BASE + 2 * PAGE_SIZE, 2 * PAGE_SIZE),  # starts in its last page
        (BASE - PAGE_SIZE, 5 * PAGE_SIZE),  # covers it
        (BASE + PAGE_SIZE, 1),  # inside it
    ],
)
def test_overlapping_map_is_refused(va: int, size: int) -> None:
    space = space_with((BASE, 3 * PAGE_SIZE, Protection.RW))
    before = space.state()
    with pytest.raises(AddressSpaceError, match="overlaps"):
        space.map(va, size, Protection.R, "intruder")
    assert space.state() == before


def test_adjacent_regions_are_allowed_and_found() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.R), (BASE + PAGE_SIZE, 1, Protection.RW))
    assert [r.va for r in space.regions] == [BASE, BASE + PAGE_SIZE]
    assert space.regions[1].size == PAGE_SIZE  # rounded up to a page
    assert space.region_at(BASE + PAGE_SIZE - 1).name == "r0"
    assert space.region_at(BASE + PAGE_SIZE).name == "r1"
    assert space.region_at(BASE + 2 * PAGE_SIZE) is None
    assert space.region_at(BASE - 1) is None


@pytest.mark.parametrize(
    ("va", "size"),
    [(BASE + 1, PAGE_SIZE), (0, PAGE_SIZE), (LOWEST_VA - PAGE_SIZE, PAGE_SIZE), (HIGHEST_VA, 1)],
)
def test_misplaced_map_is_refused(va: int, size: int) -> None:
    space = AddressSpace()
    with pytest.raises(AddressSpaceError):
        space.map(va, size, Protection.R, "bad")
    assert space.state() == ()


def test_map_holds_its_data_and_zero_fills() -> None:
    space = AddressSpace()
    region = space.map(BASE, 0, Protection.R, "data", b"\x01\x02\x03")
    assert region.size == PAGE_SIZE
    assert space.read(BASE, 4) == b"\x01\x02\x03\x00"
    assert space.read(BASE + PAGE_SIZE - 1, 1) == b"\x00"


@pytest.mark.parametrize("protection", WX)
def test_writable_and_executable_map_is_refused(protection: Protection) -> None:
    space = AddressSpace()
    with pytest.raises(AddressSpaceError, match="W\\^X"):
        space.map(BASE, PAGE_SIZE, protection, "wx")
    with pytest.raises(AddressSpaceError, match="W\\^X"):
        space.allocate(PAGE_SIZE, protection, "wx")
    assert space.state() == ()


@pytest.mark.parametrize("protection", WX)
def test_writable_and_executable_protect_is_refused(protection: Protection) -> None:
    space = space_with((BASE, 2 * PAGE_SIZE, Protection.RX), (BASE + 0x10000, 1, Protection.RW))
    before = space.state()
    for va in (BASE, BASE + 0x10000):
        with pytest.raises(AddressSpaceError, match="W\\^X"):
            space.protect(va, PAGE_SIZE, protection)
    assert space.state() == before


def test_protect_rounds_to_pages_and_stays_in_one_region() -> None:
    space = space_with(
        (BASE, 4 * PAGE_SIZE, Protection.RW), (BASE + 4 * PAGE_SIZE, 1, Protection.RW)
    )
    space.protect(BASE + PAGE_SIZE + 0x10, PAGE_SIZE, Protection.R)  # touches pages 1 and 2
    assert [space.protection_at(BASE + i * PAGE_SIZE) for i in range(4)] == [
        Protection.RW,
        Protection.R,
        Protection.R,
        Protection.RW,
    ]
    before = space.state()
    with pytest.raises(AddressSpaceError):
        space.protect(BASE + 3 * PAGE_SIZE, 2 * PAGE_SIZE, Protection.R)  # into the next region
    with pytest.raises(AddressSpaceError):
        space.protect(BASE - PAGE_SIZE, PAGE_SIZE, Protection.R)  # unmapped
    assert space.state() == before
    assert space.protection_at(BASE - 1) == Protection.NONE
    assert not space.is_executable(BASE)


# writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [Protection.RW, Protection.R, Protection.RX, Protection.NONE])
@pytest.mark.parametrize("second", [Protection.RW, Protection.R, Protection.RX, Protection.NONE])
def test_write_across_pages_is_all_or_nothing(first: Protection, second: Protection) -> None:
    space = AddressSpace()
    space.map(BASE, 2 * PAGE_SIZE, Protection.RW, "two pages", bytes(range(256)) * 32)
    space.protect(BASE, PAGE_SIZE, first)
    space.protect(BASE + PAGE_SIZE, PAGE_SIZE, second)
    before = space.state()
    data = b"\xee" * 0x20
    if first & Protection.W and second & Protection.W:
        space.write(BASE + PAGE_SIZE - 0x10, data)
        assert space.read(BASE + PAGE_SIZE - 0x10, 0x20) == data
        assert space.read(BASE + PAGE_SIZE - 0x11, 1) == bytes([0xEF])
        assert space.read(BASE + PAGE_SIZE + 0x10, 1) == bytes([0x10])
    else:
        with pytest.raises(AddressSpaceError, match="not writable"):
            space.write(BASE + PAGE_SIZE - 0x10, data)
        assert space.state() == before


def test_write_across_two_regions_or_into_nothing_is_refused() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.RW), (BASE + PAGE_SIZE, 1, Protection.RW))
    before = space.state()
    with pytest.raises(AddressSpaceError):
        space.write(BASE + PAGE_SIZE - 2, b"abcd")
    with pytest.raises(AddressSpaceError):
        space.write(BASE + 2 * PAGE_SIZE - 2, b"abcd")  # runs off the end
    with pytest.raises(AddressSpaceError):
        space.write(BASE - 2, b"ab")
    assert space.state() == before
    space.write(BASE, b"")  # nothing to write, nothing to check
    assert space.state() == before


def test_read_ignores_protection_but_not_the_map() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.NONE))
    assert space.read(BASE, 8) == bytes(8)
    assert space.read_u64(BASE + PAGE_SIZE - 8) == 0
    with pytest.raises(EmulationFault) as caught:
        space.read(BASE + PAGE_SIZE - 4, 8)
    assert caught.value.access == "read"
    assert caught.value.address == BASE + PAGE_SIZE - 4


# allocation -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    occupied=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 4)), max_size=8),
    window=st.tuples(st.integers(0, 68), st.integers(0, 68)),
    pages=st.integers(0, 6),
    guard=st.booleans(),
    alignment=st.sampled_from([PAGE_SIZE, 4 * PAGE_SIZE]),
)
def test_allocate_within_a_window_lands_inside_or_fails_cleanly(
    occupied: list[tuple[int, int]],
    window: tuple[int, int],
    pages: int,
    guard: bool,
    alignment: int,
) -> None:
    space = AddressSpace()
    for start, count in occupied:
        if space.is_free(BASE + start * PAGE_SIZE, count * PAGE_SIZE):
            space.map(BASE + start * PAGE_SIZE, count * PAGE_SIZE, Protection.R, "taken")
    lowest, highest = BASE + window[0] * PAGE_SIZE, BASE + window[1] * PAGE_SIZE
    before = space.state()
    size = max(pages * PAGE_SIZE, PAGE_SIZE)
    extra = PAGE_SIZE if guard else 0
    fits = [
        va
        for va in range(lowest + extra, highest - size - extra + 1, PAGE_SIZE)
        if va % alignment == 0 and space.is_free(va - extra, size + 2 * extra)
    ]
    try:
        region = space.allocate(
            pages * PAGE_SIZE,
            Protection.RW,
            "new",
            within=(lowest, highest),
            guard=guard,
            alignment=alignment,
        )
    except AddressSpaceError as error:
        assert "no free" in str(error)
        assert fits == []
        assert space.state() == before
        return
    assert region.va in fits
    assert region.va == fits[0]  # the lowest place
    assert region.size == size
    assert lowest <= region.va - extra and region.end + extra <= highest
    assert len(space.regions) == len(before) + (3 if guard else 1)


def test_allocate_fills_a_window_then_refuses() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.R), (BASE + 5 * PAGE_SIZE, 1, Protection.R))
    window = (BASE, BASE + 6 * PAGE_SIZE)
    placed = [space.allocate(PAGE_SIZE, Protection.RW, f"a{i}", within=window) for i in range(4)]
    assert [r.va for r in placed] == [BASE + i * PAGE_SIZE for i in range(1, 5)]
    before = space.state()
    for size in (0, 1, PAGE_SIZE):
        with pytest.raises(AddressSpaceError, match="no free"):
            space.allocate(size, Protection.RW, "more", within=window)
    with pytest.raises(AddressSpaceError, match="no free"):
        space.allocate(PAGE_SIZE, Protection.RW, "inverted", within=(window[1], window[0]))
    assert space.state() == before


def test_guard_pages_surround_an_allocation_and_leave_with_it() -> None:
    space = AddressSpace()
    region = space.allocate(PAGE_SIZE + 1, Protection.RW, "guarded", guard=True)
    below, above = region.guards
    assert region.size == 2 * PAGE_SIZE
    assert below == region.va - PAGE_SIZE and above == region.end
    for guard in (below, above):
        assert space.region_at(guard).size == PAGE_SIZE
        assert space.protection_at(guard) == Protection.NONE
    assert len(space.regions) == 3
    space.unmap(region.va)
    assert space.regions == ()
    assert space.is_free(below, 4 * PAGE_SIZE)


def test_aligned_guarded_allocation_aligns_the_region() -> None:
    space = space_with((LOWEST_VA, PAGE_SIZE, Protection.R))
    region = space.allocate(PAGE_SIZE, Protection.RW, "aligned", alignment=0x10000, guard=True)
    assert region.va % 0x10000 == 0
    assert region.guards == (region.va - PAGE_SIZE, region.end)


def test_unmapping_a_region_spares_what_took_its_guards_place() -> None:
    space = AddressSpace()
    region = space.allocate(PAGE_SIZE, Protection.RW, "guarded", guard=True)
    below, above = region.guards
    space.unmap(above)
    space.map(above, PAGE_SIZE, Protection.R, "innocent")
    space.unmap(region.va)
    assert [r.name for r in space.regions] == ["innocent"]
    assert space.is_free(below, 2 * PAGE_SIZE)


def test_unmap_needs_the_start_of_a_region() -> None:
    space = space_with((BASE, 2 * PAGE_SIZE, Protection.R))
    before = space.state()
    for va in (BASE + PAGE_SIZE, BASE - PAGE_SIZE, BASE + 0x100000):
        with pytest.raises(AddressSpaceError, match="no region starts"):
            space.unmap(va)
    assert space.state() == before


def test_find_free_from_the_top() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.R))
    assert space.find_free(PAGE_SIZE, highest=BASE + PAGE_SIZE, prefer_high=True) == (
        BASE - PAGE_SIZE
    )
    assert space.find_free(PAGE_SIZE, lowest=BASE, highest=BASE + 3 * PAGE_SIZE) == (
        BASE + PAGE_SIZE
    )
    assert space.find_free(PAGE_SIZE, lowest=BASE, highest=BASE + PAGE_SIZE) is None
    top = BASE + 0x25000
    assert space.find_free(PAGE_SIZE, highest=top, alignment=0x10000, prefer_high=True) == (
        BASE + 0x20000
    )
    # aligned_offset: the page after the one found is aligned (a region after its guard).
    assert space.find_free(
        PAGE_SIZE, highest=top, alignment=0x10000, prefer_high=True, aligned_offset=PAGE_SIZE
    ) == (BASE + 0x1F000)
    assert space.find_free(
        PAGE_SIZE, lowest=BASE + PAGE_SIZE, alignment=0x10000, aligned_offset=PAGE_SIZE
    ) == (BASE + 0xF000)


# the fault hook -------------------------------------------------------------------------


def _operations(space: AddressSpace) -> list:
    """Mutations on a prepared space, each (name, callable)."""
    guarded = space.allocate(PAGE_SIZE, Protection.RW, "guarded", guard=True)
    space.map(BASE, 2 * PAGE_SIZE, Protection.RW, "plain")
    return [
        ("map", lambda: space.map(BASE + 0x10000, PAGE_SIZE, Protection.R, "new")),
        ("unmap", lambda: space.unmap(BASE)),
        ("unmap guarded", lambda: space.unmap(guarded.va)),
        ("protect", lambda: space.protect(BASE, 2 * PAGE_SIZE, Protection.R)),
        ("write", lambda: space.write(BASE + PAGE_SIZE - 4, b"12345678")),
        ("allocate", lambda: space.allocate(PAGE_SIZE, Protection.RW, "a")),
        ("allocate guarded", lambda: space.allocate(1, Protection.RW, "g", guard=True)),
    ]


class Recorder:
    """A fault hook that records each step and the state it saw, and raises at chosen
    steps (counted from 0)."""

    def __init__(self, space: AddressSpace, fail: Callable[[int], bool] = lambda _: False):
        self.space = space
        self.fail = fail
        self.heard: list[tuple[str, tuple]] = []

    def __call__(self, step: str) -> None:
        self.heard.append((step, self.space.state()))
        if self.fail(len(self.heard) - 1):
            raise InjectedFault(step)


ANNOUNCED = {
    "map": ["map"],
    "unmap": ["unmap"],
    "unmap guarded": ["unmap"],
    "protect": ["protect"],
    "write": ["write"],
    "allocate": ["map"],
    "allocate guarded": ["map", "map", "map"],
}


@pytest.mark.parametrize("index", range(len(ANNOUNCED)), ids=list(ANNOUNCED))
def test_fault_hook_hears_each_mutation_before_it_happens(index: int) -> None:
    space = AddressSpace()
    name, operation = _operations(space)[index]
    recorder = space.fault_hook = Recorder(space)
    before = space.state()
    operation()
    assert [step for step, _ in recorder.heard] == ANNOUNCED[name]
    assert recorder.heard[0][1] == before  # nothing had changed when the hook ran
    assert space.state() != before


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from then on"])
@pytest.mark.parametrize("index", range(len(ANNOUNCED)), ids=list(ANNOUNCED))
def test_raising_fault_hook_leaves_the_space_unchanged(index: int, persistent: bool) -> None:
    for fail_at in range(len(list(ANNOUNCED.values())[index])):
        space = AddressSpace()
        _name, operation = _operations(space)[index]
        before = space.state()
        space.fault_hook = Recorder(
            space, lambda step, at=fail_at: step == at or (persistent and step > at)
        )
        with pytest.raises(InjectedFault):
            operation()
        assert space.state() == before, fail_at


def test_refused_requests_do_not_reach_the_hook() -> None:
    space = space_with((BASE, PAGE_SIZE, Protection.R))
    heard: list[str] = []
    space.fault_hook = heard.append
    for refused in (
        lambda: space.map(BASE, PAGE_SIZE, Protection.R, "overlap"),
        lambda: space.map(BASE + 0x10000, PAGE_SIZE, Protection.RW | Protection.X, "wx"),
        lambda: space.protect(BASE, PAGE_SIZE, Protection.W | Protection.X),
        lambda: space.write(BASE, b"x"),
        lambda: space.unmap(BASE + 0x10000),
        lambda: space.allocate(PAGE_SIZE, Protection.RW, "x", within=(BASE, BASE + PAGE_SIZE)),
    ):
        with pytest.raises(AddressSpaceError):
            refused()
    assert heard == []


# the CPU's mirror -----------------------------------------------------------------------


def _uc_protection(protection: Protection) -> int:
    return (
        (unicorn.UC_PROT_READ if protection & Protection.R else 0)
        | (unicorn.UC_PROT_WRITE if protection & Protection.W else 0)
        | (unicorn.UC_PROT_EXEC if protection & Protection.X else 0)
    )


def _assert_mirrored(cpu: Cpu, space: AddressSpace) -> None:
    mapped = sorted(cpu.uc.mem_regions())
    pages = {}
    for begin, end, permissions in mapped:
        for page in range(begin, end + 1, PAGE_SIZE):
            pages[page] = permissions
    expected = {
        region.va + index * PAGE_SIZE: _uc_protection(protection)
        for region in space.regions
        for index, protection in enumerate(region.protections)
    }
    assert pages == expected


def test_cpu_mirrors_maps_protections_and_unmaps() -> None:
    space = space_with((BASE, 3 * PAGE_SIZE, Protection.RW))
    cpu = Cpu(Machine.AMD64, space)  # maps what exists, then follows changes
    _assert_mirrored(cpu, space)
    region = space.allocate(2 * PAGE_SIZE, Protection.RW, "guarded", guard=True)
    space.protect(BASE + PAGE_SIZE, 1, Protection.RX)
    space.protect(region.va, PAGE_SIZE, Protection.R)
    _assert_mirrored(cpu, space)
    space.unmap(region.va)
    space.unmap(BASE)
    _assert_mirrored(cpu, space)


def _run_code(space: AddressSpace, cpu: Cpu, source: str) -> ThreadState:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(source, BASE)
    space.map(BASE, PAGE_SIZE, Protection.RW, "code", bytes(code))
    space.protect(BASE, PAGE_SIZE, Protection.RX)
    thread = cpu.new_thread()
    cpu.start(thread, BASE, ())
    return cpu.run(thread)


@pytest.mark.parametrize("side", [0, 1], ids=["below", "above"])
def test_guard_pages_fault_when_touched(side: int) -> None:
    space = AddressSpace()
    cpu = Cpu(Machine.AMD64, space)
    region = space.allocate(PAGE_SIZE, Protection.RW, "buffer", guard=True)
    target = region.va - 1 if side == 0 else region.end
    state = _run_code(space, cpu, f"mov rax, {target:#x}; mov byte ptr [rax], 1; ret")
    assert state == ThreadState.FAULTED
    fault = cpu.threads[-1].fault
    load, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(f"mov rax, {target:#x}")
    assert (fault.access, fault.address, fault.pc) == ("write", target, BASE + len(load))
    assert space.read(region.va, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_emulated_write_to_read_only_page_faults_and_rx_page_runs() -> None:
    space = AddressSpace()
    cpu = Cpu(Machine.AMD64, space)
    data = space.map(BASE + 0x10000, PAGE_SIZE, Protection.R, "data", b"\x07")
    state = _run_code(space, cpu, f"mov rax, {data.va:#x}; movzx eax, byte ptr [rax]; ret")
    thread = cpu.threads[-1]
    assert (state, thread.result) == (ThreadState.RETURNED, 7)
    space.protect(BASE, PAGE_SIZE, Protection.RW)
    store, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(f"mov rax, {data.va:#x}; mov byte ptr [rax], 9")
    space.write(BASE, bytes(store))
    space.protect(BASE, PAGE_SIZE, Protection.RX)
    cpu.start(thread, BASE, ())
    assert cpu.run(thread) == ThreadState.FAULTED
    assert (thread.fault.access, thread.fault.address) == ("write", data.va)
    assert space.read(data.va, 1) == b"\x07"


def test_code_made_non_executable_stops_running() -> None:
    space = AddressSpace()
    cpu = Cpu(Machine.AMD64, space)
    assert _run_code(space, cpu, "mov eax, 5; ret") == ThreadState.RETURNED
    thread = cpu.threads[-1]
    space.protect(BASE, PAGE_SIZE, Protection.R)  # translated code must not outlive this
    cpu.start(thread, BASE, ())
    assert cpu.run(thread) == ThreadState.FAULTED
    assert (thread.fault.access, thread.fault.address, thread.fault.pc) == ("execute", BASE, BASE)
    space.protect(BASE, PAGE_SIZE, Protection.RX)
    cpu.start(thread, BASE, ())
    assert (cpu.run(thread), thread.result) == (ThreadState.RETURNED, 5)
