"""The PE loader against pefile as an independent oracle: section protections, mapped
bytes, base relocations, IAT binding, function tables; and what it refuses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pefile
import pytest

from hpatch.arch import Machine
from hpatch.emu import AddressSpace, Process, Protection, ThreadState
from hpatch.emu.loader import map_image
from hpatch.emu.memory import PAGE_SIZE, page_ceil
from hpatch.errors import (
    AddressSpaceError,
    EmulationFault,
    HPatchError,
    ImageFormatError,
    UnsupportedError,
)
from hpatch.image import PEImage, load_image

from .test_process import BUILDS, REBASED, machine, new_process, sample

VERSIONS = ("v1", "v2", "v3", "v4")
CASES = [(build, version) for build in BUILDS for version in VERSIONS]
SCN_MEM_EXECUTE, SCN_MEM_READ, SCN_MEM_WRITE = 0x20000000, 0x40000000, 0x80000000
DIR64 = 10


class InjectedFault(Exception):
    pass


def expected_protection(characteristics: int) -> Protection:
    """What Windows gives a section (without W+X, which the loader refuses)."""
    readable = characteristics & SCN_MEM_READ
    writable = characteristics & SCN_MEM_WRITE
    executable = characteristics & SCN_MEM_EXECUTE
    if executable:
        return Protection.RX
    if writable:
        return Protection.RW
    return Protection.R if readable else Protection.NONE


class Loaded:
    """One build and version loaded at its preferred base and rebased, with pefile's
    view of sample.dll and samplehost.dll."""

    def __init__(self, build: str, version: str) -> None:
        self.build, self.version = build, version
        self.pe = pefile.PE(str(sample(build, version)), fast_load=False)
        self.host_pe = pefile.PE(str(sample(build, version, "samplehost.dll")))
        # Entry points write to .data and .bss: the loader's work alone is compared.
        self.process = Process(machine(build))
        self.process.load_image(sample(build, version), run_entry_point=False)
        self.rebased = Process(machine(build))
        self.rebased.load_image(sample(build, version), base=REBASED, run_entry_point=False)
        self.module = self.process.main_module
        self.moved = self.rebased.main_module
        self.size = self.pe.OPTIONAL_HEADER.SizeOfImage
        self.image_base = self.pe.OPTIONAL_HEADER.ImageBase

    def mapped(self, process: Process, base: int) -> bytes:
        return process.space.read(base, page_ceil(self.size))

    def iat_slots(self) -> dict[int, tuple[str | None, int | None]]:
        """IAT RVA -> (name, ordinal) of every import, from pefile."""
        return {
            imp.address - self.image_base: (
                imp.name.decode() if imp.name else None,
                None if imp.name else imp.ordinal,
            )
            for entry in self.pe.DIRECTORY_ENTRY_IMPORT
            for imp in entry.imports
        }

    def relocation_sites(self) -> list[int]:
        sites = []
        for block in self.pe.DIRECTORY_ENTRY_BASERELOC:
            for entry in block.entries:
                if entry.type == 0:
                    continue
                assert entry.type == DIR64
                sites.append(entry.rva)
        return sites


@pytest.fixture(scope="module", params=CASES, ids=[f"{b}/{v}" for b, v in CASES])
def loaded(request: pytest.FixtureRequest) -> Loaded:
    return Loaded(*request.param)


def test_image_sits_at_its_preferred_base(loaded: Loaded) -> None:
    assert loaded.module.base == loaded.image_base and not loaded.module.rebased
    region = loaded.process.space.region_at(loaded.image_base)
    assert region is loaded.module.region
    assert (region.va, region.size) == (loaded.image_base, page_ceil(loaded.size))
    host = loaded.process.module("samplehost.dll")
    assert host is not None and host.base == loaded.host_pe.OPTIONAL_HEADER.ImageBase
    assert [m.name for m in loaded.process.modules] == ["samplehost.dll", "sample.dll"]


@pytest.mark.parametrize("rebased", [False, True], ids=["preferred", "rebased"])
def test_sections_get_the_protection_their_characteristics_ask_for(
    loaded: Loaded, rebased: bool
) -> None:
    process, module = (loaded.rebased, loaded.moved) if rebased else (loaded.process, loaded.module)
    expected = {}
    for section in loaded.pe.sections:
        protection = expected_protection(section.Characteristics)
        for offset in range(0, page_ceil(section.Misc_VirtualSize), PAGE_SIZE):
            expected[section.VirtualAddress + offset] = protection
    first_section = min(section.VirtualAddress for section in loaded.pe.sections)
    for rva in range(0, first_section, PAGE_SIZE):
        expected[rva] = Protection.R  # the headers
    got = {
        rva: process.space.protection_at(module.base + rva)
        for rva in range(0, page_ceil(loaded.size), PAGE_SIZE)
    }
    assert got == {rva: expected.get(rva, Protection.R) for rva in got}
    assert any(p == Protection.RX for p in got.values())
    assert any(p == Protection.RW for p in got.values())


def test_mapped_bytes_are_pefiles_with_bound_imports(loaded: Loaded) -> None:
    theirs = loaded.pe.get_memory_mapped_image()
    ours = loaded.mapped(loaded.process, loaded.image_base)
    expected = bytearray(page_ceil(loaded.size))
    headers = loaded.pe.OPTIONAL_HEADER.SizeOfHeaders
    expected[:headers] = theirs[:headers]
    for section in loaded.pe.sections:
        start, size = section.VirtualAddress, section.Misc_VirtualSize
        expected[start : start + size] = theirs[start : start + size].ljust(size, b"\0")
    # pefile maps whole raw sections; the loader stops at VirtualSize (zeros to the
    # page end) and writes the bound addresses into the IAT.
    host = loaded.process.module("samplehost.dll")
    for rva in loaded.iat_slots():
        expected[rva : rva + 8] = ours[rva : rva + 8]
        assert host.contains(int.from_bytes(ours[rva : rva + 8], "little"))
    assert ours == bytes(expected)


def test_iat_slots_point_at_samplehost_exports(loaded: Loaded) -> None:
    host_base = loaded.host_pe.OPTIONAL_HEADER.ImageBase
    exports = {
        (symbol.name.decode() if symbol.name else None, symbol.ordinal): symbol.address
        for symbol in loaded.host_pe.DIRECTORY_ENTRY_EXPORT.symbols
    }
    by_name = {name: rva for (name, _), rva in exports.items() if name}
    by_ordinal = {ordinal: rva for (_, ordinal), rva in exports.items()}
    slots = loaded.iat_slots()
    assert (None, 10) in slots.values()  # host_policy: exported by ordinal only
    assert exports[(None, 10)] == by_ordinal[10]
    for process, module in ((loaded.process, loaded.module), (loaded.rebased, loaded.moved)):
        for rva, (name, ordinal) in slots.items():
            target = by_name[name] if name else by_ordinal[ordinal]
            assert process.space.read_u64(module.base + rva) == host_base + target
            assert process.space.is_executable(host_base + target)


def test_rebased_image_differs_only_at_relocation_sites(loaded: Loaded) -> None:
    delta = REBASED - loaded.image_base
    at_base = loaded.mapped(loaded.process, loaded.image_base)
    moved = loaded.mapped(loaded.rebased, REBASED)
    sites = loaded.relocation_sites()
    assert sites
    covered = set()
    for rva in sites:
        value = int.from_bytes(at_base[rva : rva + 8], "little")
        assert int.from_bytes(moved[rva : rva + 8], "little") == (value + delta) % (1 << 64)
        assert loaded.module.contains(value)  # every site held a pointer into the image
        covered.update(range(rva, rva + 8))
    differ = {offset for offset, (a, b) in enumerate(zip(at_base, moved, strict=True)) if a != b}
    assert differ <= covered
    assert len(differ) > len(sites)  # the high bytes moved too


def test_pefile_relocates_the_same_way(loaded: Loaded) -> None:
    pe = pefile.PE(str(sample(loaded.build, loaded.version)))
    theirs = pe.get_memory_mapped_image(ImageBase=REBASED)
    moved = loaded.mapped(loaded.rebased, REBASED)
    for rva in loaded.relocation_sites():
        assert moved[rva : rva + 8] == theirs[rva : rva + 8]


def test_function_tables_hold_the_pdata(loaded: Loaded) -> None:
    directory = loaded.pe.OPTIONAL_HEADER.DATA_DIRECTORY[
        pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]
    ]
    raw = loaded.pe.get_data(directory.VirtualAddress, directory.Size)
    x64 = loaded.pe.FILE_HEADER.Machine == 0x8664
    step = 12 if x64 else 8
    words = [
        [int.from_bytes(raw[i + j : i + j + 4], "little") for j in range(0, step, 4)]
        for i in range(0, len(raw) - step + 1, step)
    ]
    for process, module in ((loaded.process, loaded.module), (loaded.rebased, loaded.moved)):
        entries = process.function_tables.entries(module)
        assert entries is not None and len(entries) == len(words)
        assert sorted((e.begin_va - module.base, e.unwind_word) for e in entries) == sorted(
            (w[0], w[-1]) for w in words
        )
        for entry in entries:
            assert entry.image_base == module.base
            assert process.function_tables.lookup(entry.begin_va) == entry
            assert process.function_tables.lookup(entry.end_va - 1) == entry
        if x64:
            assert sorted((e.begin_va - module.base, e.end_va - module.base) for e in entries) == (
                sorted((w[0], w[1]) for w in words)
            )
        assert process.function_tables.lookup(module.base) is None  # the headers


def test_function_tables_of_two_modules_stay_apart() -> None:
    process = new_process("x64-gcc")  # the one build whose samplehost.dll has .pdata
    host = process.module("samplehost.dll")
    module = process.main_module
    for loaded in (host, module):
        for entry in process.function_tables.entries(loaded) or ():
            assert loaded.contains(entry.begin_va)
            assert process.function_tables.lookup(entry.begin_va).image_base == loaded.base
    process.function_tables.remove(module)
    assert module not in process.function_tables
    entry = process.function_tables.entries(host)[0]
    assert process.function_tables.lookup(entry.begin_va) == entry


# imports nothing provides -----------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_missing_dll_gets_stubs_that_fault_naming_the_import(build: str, tmp_path: Path) -> None:
    alone = tmp_path / "sample.dll"
    shutil.copyfile(sample(build, "v3"), alone)
    for source in (alone, load_image(alone)):  # a file with no DLL beside it; no file at all
        process = Process(machine(build))
        module = process.load_image(source)
        assert [m.name for m in process.modules] == ["sample.dll"]
        stubs = {
            str(entry.name or f"#{entry.ordinal}"): process.space.read_u64(module.va(entry.iat_rva))
            for entry in module.image.imports
        }
        assert len(set(stubs.values())) == len(stubs)
        for stub in stubs.values():
            assert process.space.is_executable(stub) and process.module_at(stub) is None
        with pytest.raises(EmulationFault, match=r"samplehost\.dll!host_now") as caught:
            process.call("hp_reset")
        assert caught.value.pc == stubs["host_now"]
        assert caught.value.access == "execute"
        with pytest.raises(EmulationFault, match=r"samplehost\.dll!#10") as caught:
            process.call("hp_set_limit", 0, 100)  # host_policy, imported by ordinal
        assert caught.value.pc == stubs["#10"]
        # What needs no import still runs.
        assert process.call("hp_crc32", process.buffer(b"123456789"), 9) == 0xCBF43926


def test_dll_found_on_the_search_path(tmp_path: Path) -> None:
    alone = tmp_path / "sample.dll"
    shutil.copyfile(sample("arm64-clang", "v1"), alone)
    process = Process(Machine.ARM64, search_path=[sample("arm64-clang", "v1").parent])
    process.load_image(alone)
    assert process.module("samplehost.dll") is not None
    assert process.call("hp_set_limit", 0, 100) == 32


# refusals ---------------------------------------------------------------------------------


def _patched(build: str, edit) -> PEImage:
    data = bytearray(sample(build, "v1").read_bytes())
    pe = pefile.PE(data=bytes(data), fast_load=True)
    edit(pe, data)
    return load_image(bytes(data), "patched.dll")


def _section(pe: pefile.PE, name: bytes) -> pefile.SectionStructure:
    return next(s for s in pe.sections if s.Name.rstrip(b"\0") == name)


def _set_u32(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 4] = value.to_bytes(4, "little")


def _writable_text(pe: pefile.PE, data: bytearray) -> None:
    text = _section(pe, b".text")
    _set_u32(data, text.get_file_offset() + 36, text.Characteristics | SCN_MEM_WRITE)


def _executable_data(pe: pefile.PE, data: bytearray) -> None:
    section = _section(pe, b".data")
    _set_u32(data, section.get_file_offset() + 36, section.Characteristics | SCN_MEM_EXECUTE)


def _unaligned_data(pe: pefile.PE, data: bytearray) -> None:
    section = _section(pe, b".data")  # room to spare before the next section in every build
    _set_u32(data, section.get_file_offset() + 12, section.VirtualAddress + 0x200)


def _no_relocations(pe: pefile.PE, data: bytearray) -> None:
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[5]
    _set_u32(data, directory.get_file_offset() + 4, 0)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    ("edit", "base", "message"),
    [
        (_writable_text, None, "writable and executable"),
        (_executable_data, None, "writable and executable"),
        (_no_relocations, REBASED, "no base relocations"),
        (lambda pe, data: None, REBASED + 0x1000, "not a multiple of 64 KiB"),
    ],
    ids=["W+X .text", "W+X .data", "no relocations", "unaligned base"],
)
def test_unsupported_images_are_refused_and_leave_nothing_behind(
    build: str, edit, base: int | None, message: str
) -> None:
    image = _patched(build, edit)
    process = Process(machine(build))
    before = process.space.state()
    with pytest.raises(UnsupportedError, match=message):
        process.load_image(image, base=base)
    assert process.space.state() == before
    assert process.modules == []


@pytest.mark.parametrize("build", BUILDS)
def test_a_section_off_its_alignment_is_refused_before_loading(build: str) -> None:
    """The reader refuses it (the Windows loader would too), so no process sees it."""
    with pytest.raises(ImageFormatError, match="misaligned"):
        _patched(build, _unaligned_data)


def test_images_for_another_machine_or_twice_are_refused() -> None:
    process = new_process("x64-clang")
    before = process.space.state()
    with pytest.raises(HPatchError, match="ARM64"):
        process.load_image(sample("arm64-clang", "v1"))
    with pytest.raises(HPatchError, match="loaded already"):
        process.load_image(sample("x64-clang", "v1"))
    with pytest.raises(AddressSpaceError, match="in use"):
        process.load_image(sample("x64-clang", "v1"), name="other.dll", base=0x1_8000_0000)
    assert process.space.state() == before


def test_two_versions_side_by_side() -> None:
    process = new_process("x64-gcc", "v1")
    other = process.load_image(sample("x64-gcc", "v3"), name="v3.dll")
    first = process.main_module
    assert first is not None and first.base == 0x1_8000_0000
    assert other.rebased and other.base % 0x10000 == 0 and not first.contains(other.base)
    assert process.call("hp_version") == 0x0100_0001
    assert process.call("hp_version", module=other) == 0x0100_0003
    assert len([m for m in process.modules if m.name == "samplehost.dll"]) == 1
    data = process.buffer(bytes.fromhex("02040041424344"))
    text = process.buffer(4)
    assert process.call("hp_tlv_copy_string", data, 7, 2, text, 4, module=other) == 2**32 - 3


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "from then on"])
def test_loader_steps_that_fail_leave_the_space_unchanged(persistent: bool) -> None:
    image = load_image(sample("x64-clang", "v1"))
    steps = 1 + sum(1 for s in image.sections if s.virtual_size)  # map, then protects
    for fail_at in range(steps):
        space = AddressSpace()
        space.map(0x10000, PAGE_SIZE, Protection.R, "something")
        before = space.state()
        heard = []

        def hook(step: str, fail_at: int = fail_at, heard: list = heard) -> None:
            heard.append(step)
            if len(heard) - 1 == fail_at or (persistent and len(heard) - 1 > fail_at):
                raise InjectedFault(step)

        space.fault_hook = hook
        with pytest.raises(InjectedFault):
            map_image(space, image, lambda entry: 0x1234)
        assert space.state() == before, fail_at
    heard = []
    space.fault_hook = heard.append
    module = map_image(space, image, lambda entry: 0x1234)
    assert heard == ["map"] + ["protect"] * (steps - 1)
    assert space.read_u64(module.va(image.imports[0].iat_rva)) == 0x1234


def test_a_resolver_that_fails_leaves_the_space_unchanged() -> None:
    image = load_image(sample("arm64-clang", "v1"))
    space = AddressSpace()
    before = space.state()

    def resolve(entry) -> int:
        raise InjectedFault(entry.name)

    with pytest.raises(InjectedFault):
        map_image(space, image, resolve)
    assert space.state() == before


@pytest.mark.parametrize("build", BUILDS)
def test_entry_points_run_dependencies_first_and_write_only_data(build: str) -> None:
    quiet = Process(machine(build))
    quiet.load_image(sample(build, "v1"), run_entry_point=False)
    order: list[str] = []
    process = Process(machine(build))
    calls = process.call

    def call(function, *arguments, **options):
        order.append(process.describe(function))
        return calls(function, *arguments, **options)

    process.call = call  # type: ignore[method-assign]
    process.load_image(sample(build, "v1"))
    assert [where.split("!")[0] for where in order] == ["samplehost.dll", "sample.dll"]
    module = process.main_module
    changed = set()
    for page in range(module.base, module.end, PAGE_SIZE):
        if process.space.read(page, PAGE_SIZE) != quiet.space.read(page, PAGE_SIZE):
            changed.add(process.space.protection_at(page))
    assert changed == {Protection.RW}  # DllMain initialised the globals


@pytest.mark.parametrize("build", ["x64-gcc", "arm64-clang"])
def test_a_faulting_entry_point_is_reported_as_such(build: str) -> None:
    def entry_in_data(pe: pefile.PE, data: bytearray) -> None:
        _set_u32(
            data,
            pe.OPTIONAL_HEADER.get_field_absolute_offset("AddressOfEntryPoint"),
            _section(pe, b".data").VirtualAddress,
        )

    image = _patched(build, entry_in_data)
    process = Process(machine(build))
    with pytest.raises(EmulationFault, match=r"the entry point of patched\.dll faulted") as caught:
        process.load_image(image)
    data = image.image_base + next(s.rva for s in image.sections if s.name == ".data")
    assert (caught.value.access, caught.value.address, caught.value.pc) == ("execute", data, data)
    assert process.main_thread.state == ThreadState.IDLE
