"""A raw Unicorn harness for the unwinder tests: maps code, runs calls, and tracks the
true call chain instruction by instruction, independently of any unwind data.

The shadow call stack is kept from the instructions that actually run (x64 ``call`` /
``ret``; ARM64 ``bl``/``blr`` / ``ret``), decoded with capstone, so it is an oracle
the unwinder's answer can be compared against at every instruction boundary.
"""

from __future__ import annotations

import bisect
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import capstone
import keystone
import unicorn
from unicorn import arm64_const, x86_const

from hpatch.arch import Machine
from hpatch.emu.machine import arch_of
from hpatch.emu.unwind import (
    FunctionEntry,
    Lookup,
    Memory,
    ReadMemory,
    StackWalk,
    UnwindStop,
    walk_stack_explained,
)
from hpatch.errors import EmulationFault
from hpatch.image.reader import PEImage, load_image

SAMPLES = Path(__file__).resolve().parent.parent.parent / "samples" / "bin"
BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")

PAGE = 0x1000
STUB_VA = 0x7F000000
STACK_VA = 0x00100000
STACK_SIZE = 0x100000  # 1 MiB: the synthetic ARM64 program allocates 64 KiB frames
STACK_TOP = STACK_VA + STACK_SIZE
DATA_VA = 0x00200000
DATA_SIZE = 0x10000
SENTINEL = 0xDEAD0000
_STEP_LIMIT = 200_000

_X64_NAMES = "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip"
_X64_REGISTERS = {
    name: getattr(x86_const, f"UC_X86_REG_{name.upper()}") for name in _X64_NAMES.split()
}
_ARM64_REGISTERS = {f"x{i}": getattr(arm64_const, f"UC_ARM64_REG_X{i}") for i in range(29)}
_ARM64_REGISTERS.update(
    fp=arm64_const.UC_ARM64_REG_X29,
    lr=arm64_const.UC_ARM64_REG_X30,
    sp=arm64_const.UC_ARM64_REG_SP,
    pc=arm64_const.UC_ARM64_REG_PC,
)
#: A stub every import resolves to: return 0 (``xor eax, eax; ret`` / ``mov x0, #0; ret``).
_STUBS = {
    Machine.AMD64: b"\x31\xc0\xc3",
    Machine.ARM64: struct.pack("<II", 0xD2800000, 0xD65F03C0),
}


def _page_ceil(value: int) -> int:
    return (value + PAGE - 1) & ~(PAGE - 1)


@dataclass
class Stop:
    """One instruction boundary: the registers there and the true return addresses."""

    pc: int
    registers: dict[str, int]
    chain: tuple[int, ...]  # innermost first, ending with the sentinel


@dataclass
class Machine64:
    """A Unicorn instance with code regions, a stack, an argument area and a sentinel."""

    machine: Machine
    uc: unicorn.Uc
    code_ranges: list[tuple[int, int]] = field(default_factory=list)
    data_cursor: int = DATA_VA

    @classmethod
    def create(cls, machine: Machine) -> Machine64:
        if machine == Machine.AMD64:
            uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        else:
            uc = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        uc.mem_map(STACK_VA, STACK_SIZE, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
        uc.mem_map(DATA_VA, DATA_SIZE, unicorn.UC_PROT_READ | unicorn.UC_PROT_WRITE)
        emulator = cls(machine, uc)
        emulator.map_code(STUB_VA, _STUBS[machine])
        return emulator

    @property
    def registers_by_name(self) -> dict[str, int]:
        return _X64_REGISTERS if self.machine == Machine.AMD64 else _ARM64_REGISTERS

    def map_code(self, va: int, code: bytes, size: int | None = None) -> None:
        """Map ``code`` at ``va`` read-write-execute (the tests patch it freely)."""
        length = _page_ceil(size if size is not None else len(code))
        self.uc.mem_map(va, length, unicorn.UC_PROT_ALL)
        self.uc.mem_write(va, code)
        self.code_ranges.append((va, va + length))

    def is_code(self, va: int) -> bool:
        return any(start <= va < end for start, end in self.code_ranges)

    def read(self, va: int, size: int) -> bytes:
        """Emulated memory, raising EmulationFault as the emulator's own reads do."""
        try:
            return bytes(self.uc.mem_read(va, size))
        except unicorn.UcError as exc:
            raise EmulationFault(
                f"cannot read 0x{size:x} bytes at 0x{va:x}", address=va, access="read", pc=0
            ) from exc

    def buffer(self, content: bytes | int) -> int:
        """Place bytes (or that many zero bytes) in the argument area; their address."""
        data = bytes(content)
        va = self.data_cursor
        self.uc.mem_write(va, data)
        self.data_cursor = (va + len(data) + 15) & ~15
        assert self.data_cursor <= DATA_VA + DATA_SIZE
        return va

    def registers(self) -> dict[str, int]:
        names = self.registers_by_name
        return dict(zip(names, self.uc.reg_read_batch(list(names.values())), strict=True))

    def call(
        self,
        entry_va: int,
        arguments: Sequence[int],
        on_stop: Callable[[Stop], None],
    ) -> int:
        """Run the function at ``entry_va`` to its return; ``on_stop`` sees every instruction."""
        uc, names = self.uc, self.registers_by_name
        uc.mem_write(STACK_VA, bytes(STACK_SIZE))
        if self.machine == Machine.AMD64:
            sp = STACK_TOP - 0x100
            for index, value in enumerate(arguments[4:]):
                uc.mem_write(sp + 0x28 + 8 * index, struct.pack("<Q", value))
            uc.mem_write(sp, struct.pack("<Q", SENTINEL))
            for name, value in zip(("rcx", "rdx", "r8", "r9"), arguments, strict=False):
                uc.reg_write(names[name], value)
            uc.reg_write(names["rsp"], sp)
        else:
            assert len(arguments) <= 8
            for index, value in enumerate(arguments):
                uc.reg_write(names[f"x{index}"], value)
            uc.reg_write(names["sp"], STACK_TOP - 0x100)
            uc.reg_write(names["lr"], SENTINEL)
        tracker = _CallTracker(self, on_stop)
        hook = uc.hook_add(unicorn.UC_HOOK_CODE, tracker.on_code)
        try:
            uc.emu_start(entry_va, SENTINEL, count=_STEP_LIMIT)
        finally:
            uc.hook_del(hook)
        if tracker.error is not None:
            raise tracker.error
        pc = uc.reg_read(names["rip" if self.machine == Machine.AMD64 else "pc"])
        assert pc == SENTINEL, f"the call did not return (pc 0x{pc:x})"
        assert not tracker.shadow, "calls and returns did not pair up"
        return uc.reg_read(names["rax" if self.machine == Machine.AMD64 else "x0"])


class _CallTracker:
    """The UC_HOOK_CODE callback: keeps the shadow call stack, reports each stop."""

    def __init__(self, emulator: Machine64, on_stop: Callable[[Stop], None]) -> None:
        self.emulator = emulator
        self.on_stop = on_stop
        self.shadow: list[int] = []
        self.pending: tuple[str, int] | None = None
        self.error: BaseException | None = None
        if emulator.machine == Machine.AMD64:
            self.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            self.calls, self.returns = {"call"}, {"ret", "retq"}
        else:
            self.cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
            self.calls, self.returns = {"bl", "blr"}, {"ret"}
        self.decoded: dict[int, tuple[str, int]] = {}

    def kind(self, uc: unicorn.Uc, address: int) -> tuple[str, int]:
        known = self.decoded.get(address)
        if known is None:
            code = bytes(uc.mem_read(address, 16))
            instruction = next(self.cs.disasm(code, address, 1), None)
            assert instruction is not None, f"undecodable instruction at 0x{address:x}"
            mnemonic = instruction.mnemonic
            what = "call" if mnemonic in self.calls else "ret" if mnemonic in self.returns else ""
            known = self.decoded[address] = (what, address + instruction.size)
        return known

    def on_code(self, uc: unicorn.Uc, address: int, size: int, user: object) -> None:
        if self.error is not None:
            return
        try:
            # The previous instruction has now run: account for its call or return.
            if self.pending is not None:
                what, after = self.pending
                if what == "call":
                    self.shadow.append(after)
                elif what == "ret":
                    self.shadow.pop()
            self.pending = self.kind(uc, address)
            chain = (*reversed(self.shadow), SENTINEL)
            self.on_stop(Stop(address, self.emulator.registers(), chain))
        except BaseException as exc:  # reported after emu_start returns
            self.error = exc
            uc.emu_stop()


class FunctionTable:
    """The RUNTIME_FUNCTION entries of one module, for walks outside an emulated
    process (which keeps its own tables, ``hpatch.emu.tables``): a binary search over
    the entries sorted by start, as ``RtlLookupFunctionEntry`` does. An x64 indirect
    entry (unwind word bit 0) comes back as it is: the unwinder follows it."""

    def __init__(self, machine: Machine, entries: Iterable[FunctionEntry]) -> None:
        self.machine = machine
        self.entries = tuple(sorted(entries, key=lambda e: e.begin_va))
        self._starts = [entry.begin_va for entry in self.entries]

    @classmethod
    def from_pdata(
        cls, machine: Machine, image_base: int, pdata: bytes, read: ReadMemory
    ) -> FunctionTable:
        """The ``.pdata`` table of a module mapped at ``image_base``; ``read`` reads the
        mapped module (ARM64 ``.xdata`` headers give function lengths). Entries that are
        empty or whose ``.xdata`` cannot be read are left out."""
        memory = Memory(read)
        arch = arch_of(machine)
        size, end_field = arch.pdata_entry_size, arch.pdata_end_field
        word_field = arch.pdata_unwind_field
        entries: list[FunctionEntry] = []
        for at in range(0, len(pdata) // size * size, size):
            (begin,) = struct.unpack_from("<I", pdata, at)
            (unwind,) = struct.unpack_from("<I", pdata, at + word_field)
            if end_field is not None:
                (end,) = struct.unpack_from("<I", pdata, at + end_field)
            elif not begin and not unwind:
                continue
            else:
                try:
                    length = arch.pdata_function_length(
                        unwind, lambda rva: memory.u32(image_base + rva)
                    )
                except UnwindStop:
                    continue
                if not length:
                    continue
                end = begin + length
            if begin < end:
                entries.append(
                    FunctionEntry(image_base, image_base + begin, image_base + end, unwind)
                )
        return cls(machine, entries)

    def lookup(self, pc: int) -> FunctionEntry | None:
        """The entry covering ``pc``, or None."""
        index = bisect.bisect_right(self._starts, pc) - 1
        if index < 0 or not self.entries[index].begin_va <= pc < self.entries[index].end_va:
            return None
        return self.entries[index]


def lookup_in(tables: Sequence[FunctionTable]) -> Lookup:
    """A ``lookup`` over several tables (modules and patch regions never overlap)."""

    def lookup(pc: int) -> FunctionEntry | None:
        for table in tables:
            entry = table.lookup(pc)
            if entry is not None:
                return entry
        return None

    return lookup


@dataclass
class SampleProcess:
    """A sample DLL mapped at its preferred base, its imports bound to a stub."""

    image: PEImage
    emulator: Machine64
    table: FunctionTable
    version: str

    @classmethod
    def load(cls, build: str, version: str = "v1") -> SampleProcess:
        image = load_image(SAMPLES / build / version / "sample.dll")
        machine = image.identity.machine
        emulator = Machine64.create(machine)
        base = image.identity.image_base
        emulator.uc.mem_map(base, _page_ceil(image.size_of_image), unicorn.UC_PROT_ALL)
        emulator.uc.mem_write(base, image.mapped)
        for section in image.executable_sections:
            emulator.code_ranges.append((base + section.rva, base + section.end_rva))
        for entry in image.imports:
            emulator.uc.mem_write(base + entry.iat_rva, struct.pack("<Q", STUB_VA))
        pdata_rva, pdata_size = image.exception_directory
        table = FunctionTable.from_pdata(
            machine, base, image.read(pdata_rva, pdata_size), emulator.read
        )
        return cls(image, emulator, table, version)

    @property
    def machine(self) -> Machine:
        return self.emulator.machine

    def export_va(self, name: str) -> int:
        for export in self.image.exports:
            if export.name == name:
                return self.image.identity.image_base + export.rva
        raise KeyError(name)

    def walk(
        self,
        stop: Stop,
        lookup: Callable[[int], FunctionEntry | None] | None = None,
        **options: int,
    ) -> tuple[StackWalk, str]:
        return walk_stack_explained(
            self.machine,
            self.emulator.read,
            lookup or self.table.lookup,
            stop.registers,
            STACK_TOP,
            is_code=self.emulator.is_code,
            stop_at=SENTINEL,
            **options,
        )


def tlv(kind: int, value: bytes) -> bytes:
    """One TLV record: type, 16-bit little-endian length, value."""
    return bytes([kind]) + struct.pack("<H", len(value)) + value


def nested_tlv(depth: int) -> bytes:
    """Containers nested ``depth`` deep, each also holding leaves (recursion in the parser)."""
    inner = tlv(0x01, b"leaf") + tlv(0x02, b"\x00\x01\x02")
    for level in range(depth):
        inner = tlv(0x80 | (level + 1), tlv(0x03, bytes([level])) + inner) + tlv(0x04, b"xy")
    return inner


# Synthetic programs ---------------------------------------------------------------

SYNTHETIC_BASE = 0x140000000
_CODE_RVA = 0x1000
_SLOT = 0x200
_UNWIND_RVA = 0x20000


def assemble(
    machine: Machine, lines: Sequence[str], va: int, symbols: dict[str, int]
) -> tuple[bytes, dict[str, int]]:
    """Assemble ``lines`` at ``va``; ``name:`` lines are labels, ``{name}`` an address.

    Returns the code and the labels' addresses. Labels are resolved by assembling
    again until their addresses settle (x64 jumps change size with their distance).
    """
    if machine == Machine.AMD64:
        ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    else:
        ks = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    labels: dict[str, int] = {}
    for _ in range(8):
        known = defaultdict(lambda: va, {**symbols, **labels})
        code, found, at = bytearray(), {}, va
        for line in lines:
            text = line.strip()
            if text.endswith(":"):
                found[text[:-1]] = at
                continue
            encoding, _count = ks.asm(text.format_map(known), at)
            assert encoding, f"keystone could not assemble {text!r}"
            code += bytes(encoding)
            at += len(encoding)
        if found == labels:
            return bytes(code), labels
        labels = found
    raise AssertionError("labels did not settle")


class SyntheticProgram:
    """Functions assembled into fixed slots, with unwind data written by the test.

    Every function ``name`` starts at its slot; ``address(name)`` or
    ``address(name, label)`` give addresses, ``end(name)`` the end of its code. Code
    names a label of another function as ``{function_label}``.
    """

    def __init__(self, machine: Machine, functions: dict[str, list[str]]) -> None:
        self.machine = machine
        self.emulator = Machine64.create(machine)
        self.starts = {
            name: SYNTHETIC_BASE + _CODE_RVA + index * _SLOT for index, name in enumerate(functions)
        }
        # Functions name each other's labels as {function_label}: assemble until
        # every address settles.
        symbols: dict[str, int] = dict(self.starts)
        for _ in range(6):
            found: dict[str, int] = dict(self.starts)
            codes: dict[str, bytes] = {}
            for name, lines in functions.items():
                codes[name], labels = assemble(machine, lines, self.starts[name], symbols)
                found.update({f"{name}_{label}": va for label, va in labels.items()})
            if found == symbols:
                break
            symbols = found
        else:
            raise AssertionError("labels did not settle")
        self.labels = symbols
        self.ends = {name: self.starts[name] + len(code) for name, code in codes.items()}
        image = bytearray(_SLOT * len(functions))
        for name, code in codes.items():
            assert len(code) <= _SLOT, f"{name} does not fit its slot"
            offset = self.starts[name] - SYNTHETIC_BASE - _CODE_RVA
            image[offset : offset + len(code)] = code
        self.emulator.map_code(SYNTHETIC_BASE + _CODE_RVA, bytes(image))
        self.emulator.uc.mem_map(SYNTHETIC_BASE + _UNWIND_RVA, 0x1000, unicorn.UC_PROT_READ)
        self._unwind_cursor = _UNWIND_RVA
        self.entries: list[FunctionEntry] = []

    def address(self, name: str, label: str | None = None) -> int:
        return self.starts[name] if label is None else self.labels[f"{name}_{label}"]

    def offset(self, name: str, label: str) -> int:
        """A label's offset from its function's start."""
        return self.address(name, label) - self.starts[name]

    def end(self, name: str) -> int:
        return self.ends[name]

    def rva(self, va: int) -> int:
        return va - SYNTHETIC_BASE

    def place_unwind(self, record: bytes) -> int:
        """Write an unwind record (4-aligned); its RVA."""
        rva = self._unwind_cursor
        self.emulator.uc.mem_write(SYNTHETIC_BASE + rva, record)
        self._unwind_cursor = (rva + len(record) + 3) & ~3
        return rva

    def add_entry(self, name: str, unwind: bytes | int, end: int | None = None) -> FunctionEntry:
        """A RUNTIME_FUNCTION for ``name``: ``unwind`` is a record to place, or an
        ARM64 packed word."""
        word = unwind if isinstance(unwind, int) else self.place_unwind(unwind)
        entry = FunctionEntry(SYNTHETIC_BASE, self.starts[name], end or self.ends[name], word)
        self.entries.append(entry)
        return entry

    def table(self) -> FunctionTable:
        return FunctionTable(self.machine, self.entries)

    def walk(
        self, stop: Stop, lookup: Callable[[int], FunctionEntry | None] | None = None
    ) -> tuple[StackWalk, str]:
        return walk_stack_explained(
            self.machine,
            self.emulator.read,
            lookup or self.table().lookup,
            stop.registers,
            STACK_TOP,
            is_code=self.emulator.is_code,
            stop_at=SENTINEL,
        )


def x64_unwind_info(
    prolog_size: int,
    codes: Sequence[tuple[int, ...]],
    *,
    frame_register: int = 0,
    frame_offset: int = 0,
    version: int = 1,
    chained: tuple[int, int, int] | None = None,
    epilog_slots: Sequence[int] = (),
) -> bytes:
    """An UNWIND_INFO record, encoded from the x64 exception-handling spec.

    ``codes`` are ``(prolog offset, operation, op info, *operand slots)`` in the
    record's order (reverse prolog order); ``epilog_slots`` are raw version-2
    UWOP_EPILOG slots, placed first; ``chained`` the parent's (begin, end, unwind) RVAs.
    """
    slots = list(epilog_slots)
    for offset, operation, info, *operands in codes:
        slots.append(offset | operation << 8 | info << 12)
        slots.extend(operands)
    flags = 4 if chained else 0
    header = bytes(
        [version | flags << 3, prolog_size, len(slots), frame_register | frame_offset << 4]
    )
    body = struct.pack(f"<{len(slots)}H", *slots)
    if len(slots) % 2:
        body += b"\0\0"
    record = header + body
    if chained:
        record += struct.pack("<III", *chained)
    return record + b"\0" * max(0, 8 - len(record))


def arm64_xdata(
    function_length: int,
    codes: bytes,
    *,
    epilogs: Sequence[tuple[int, int]] = (),
    single_epilog_index: int | None = None,
    extended: bool = False,
) -> bytes:
    """An ARM64 .xdata record from the spec: ``epilogs`` are (start offset in bytes,
    code index) scopes; ``single_epilog_index`` sets E with that index instead;
    ``extended`` forces the two-word header."""
    words = (len(codes) + 3) // 4
    padded = codes + b"\xe3" * (4 * words - len(codes))
    length = function_length // 4
    if single_epilog_index is not None:
        header = length | 1 << 21 | single_epilog_index << 22 | words << 27
        return struct.pack("<I", header) + padded
    if extended:
        header = struct.pack("<II", length, len(epilogs) | words << 16)
    else:
        header = struct.pack("<I", length | len(epilogs) << 22 | words << 27)
    scopes = b"".join(struct.pack("<I", offset // 4 | index << 22) for offset, index in epilogs)
    return header + scopes + padded


def arm64_packed(
    function_length: int,
    *,
    flag: int = 1,
    reg_f: int = 0,
    reg_i: int = 0,
    homes: int = 0,
    chain: int = 0,
    frame_size: int = 0,
) -> int:
    """A packed ARM64 unwind word from the spec (``frame_size`` in bytes)."""
    return (
        flag
        | (function_length // 4) << 2
        | reg_f << 13
        | reg_i << 16
        | homes << 20
        | chain << 21
        | (frame_size // 16) << 23
    )


class FakeMemory:
    """Sparse memory for walks without an emulator: reads outside it fault."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, bytearray]] = []

    def add(self, va: int, data: bytes | int) -> int:
        """Add a region holding ``data`` (or that many zero bytes); its address."""
        self.regions.append((va, bytearray(data)))
        return va

    def write(self, va: int, data: bytes) -> None:
        for start, buffer in self.regions:
            if start <= va and va + len(data) <= start + len(buffer):
                buffer[va - start : va - start + len(data)] = data
                return
        raise AssertionError(f"no region holds 0x{va:x}")

    def write_u64(self, va: int, *values: int) -> None:
        self.write(va, struct.pack(f"<{len(values)}Q", *values))

    def read(self, va: int, size: int) -> bytes:
        for start, buffer in self.regions:
            if start <= va and va + size <= start + len(buffer):
                return bytes(buffer[va - start : va - start + size])
        raise EmulationFault(f"unmapped read at 0x{va:x}", address=va, access="read", pc=0)
