"""Immutable records of a PE image, shared by every later stage."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag

from hpatch.arch.base import Machine


class SectionFlags(IntFlag):
    """The IMAGE_SCN_* characteristics hpatch looks at."""

    CNT_CODE = 0x00000020
    CNT_INITIALIZED_DATA = 0x00000040
    CNT_UNINITIALIZED_DATA = 0x00000080
    MEM_DISCARDABLE = 0x02000000
    MEM_EXECUTE = 0x20000000
    MEM_READ = 0x40000000
    MEM_WRITE = 0x80000000


# Plain ints for the hot paths: IntFlag arithmetic builds enum objects.
_MEM_EXECUTE = int(SectionFlags.MEM_EXECUTE)
_MEM_WRITE = int(SectionFlags.MEM_WRITE)


class BaseRelocationType(IntEnum):
    """IMAGE_REL_BASED_* types."""

    ABSOLUTE = 0
    HIGH = 1
    LOW = 2
    HIGHLOW = 3
    HIGHADJ = 4
    DIR64 = 10


class Evidence(Enum):
    """Where knowledge of a function came from, strongest first."""

    PDATA = "pdata"
    EXPORT = "export"
    SYMBOL = "symbol"
    ENTRY = "entry"
    GUARD_CF = "guard_cf"
    IMPORT_THUNK = "import_thunk"
    CALL = "call"
    JUMP = "jump"
    ADDRESS = "address"
    RELOC = "reloc"


@dataclass(frozen=True, slots=True)
class ImageIdentity:
    """What pins down one exact build: the fields a hotpatch is keyed on."""

    machine: Machine
    image_base: int
    size_of_image: int
    time_date_stamp: int
    checksum: int
    file_sha256: str
    mapped_sha256: str
    file_size: int


@dataclass(frozen=True, slots=True)
class Section:
    """A section as the loader maps it; ``data`` is ``virtual_size`` bytes, zero-filled: a
    view of the image's mapped bytes (``PEImage.mapped``), which holds them once."""

    index: int
    name: str
    rva: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int
    data: memoryview

    @property
    def end_rva(self) -> int:
        return self.rva + self.virtual_size

    @property
    def is_executable(self) -> bool:
        return bool(self.characteristics & _MEM_EXECUTE)

    @property
    def is_writable(self) -> bool:
        return bool(self.characteristics & _MEM_WRITE)

    def contains(self, rva: int) -> bool:
        return self.rva <= rva < self.end_rva


@dataclass(frozen=True, slots=True)
class BaseRelocation:
    """One base relocation: the field at ``rva`` holds an absolute address."""

    rva: int
    type: BaseRelocationType


@dataclass(frozen=True, slots=True)
class Import:
    """One imported function: by ``name`` or by ``ordinal``, bound through the IAT slot."""

    dll: str
    name: str | None
    ordinal: int | None
    iat_rva: int


@dataclass(frozen=True, slots=True)
class Export:
    """One exported symbol; ``forwarder`` is set for forwarded exports (no code here)."""

    ordinal: int
    name: str | None
    rva: int
    forwarder: str | None


@dataclass(frozen=True, slots=True)
class Symbol:
    """A COFF symbol-table entry that names an address in a section."""

    name: str
    rva: int
    section_index: int
    storage_class: int
    is_function: bool


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """The load-config fields hpatch reads (VAs as stored; RVAs where the spec uses RVAs)."""

    size: int
    security_cookie_va: int
    guard_flags: int
    guard_cf_function_rvas: tuple[int, ...]
    chpe_metadata_va: int
    dynamic_value_reloc_table_offset: int
    hotpatch_table_offset: int


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The thread-local storage the loader sets up for each thread."""

    template: bytes
    zero_fill: int
    callbacks: int


@dataclass(frozen=True, slots=True)
class Fragment:
    """A separately described part of a function (chained or fragment unwind entry)."""

    rva: int
    size: int


class DataKind(Enum):
    """What a data range embedded in a function's code holds."""

    JUMP_TABLE = "jump_table"  # int32 offsets relative to the table (clang x64, MSVC ARM64)
    JUMP_TABLE_RVA = "jump_table_rva"  # uint32 image-relative offsets (MSVC x64)
    #: MSVC ARM64's compressed switch: signed bytes, or halfwords, each counting
    #: instructions from the table (``ldrsb/ldrsh; add xD, xT, xE, lsl #2; br xD``)
    JUMP_TABLE_BYTES = "jump_table_bytes"
    JUMP_TABLE_HALVES = "jump_table_halves"
    LITERAL_POOL = "literal_pool"  # constants the function loads PC-relative (ARM64)
    DATA = "data"  # inside the unwind range, neither reachable code nor a known table


@dataclass(frozen=True, slots=True)
class DataRange:
    """Data that belongs to a function's code (not instructions).

    ``part`` says where: 0 after or inside the entry part, i inside or after the
    function's i-th fragment.
    """

    rva: int
    size: int
    kind: DataKind
    part: int = 0


@dataclass(frozen=True, slots=True)
class Function:
    """A function: its entry, its size in bytes, and what says it is there.

    ``size`` covers the entry part's instructions only; split-off parts are
    ``fragments``, and data the compiler placed inside the function's range (jump
    tables after the code) is ``inline_data``. ``padding_after`` counts the
    trap/nop/zero bytes between this function's end and the next function (or the
    end of its section): room later stages may use.
    """

    rva: int
    size: int
    name: str | None
    sources: tuple[Evidence, ...]
    fragments: tuple[Fragment, ...] = ()
    padding_after: int = 0
    inline_data: tuple[DataRange, ...] = ()

    @property
    def end_rva(self) -> int:
        """End of the entry part's instructions."""
        return self.rva + self.size

    @property
    def extent_end(self) -> int:
        """End of the entry part including the inline data that follows its code."""
        return max([self.end_rva] + [d.rva + d.size for d in self.inline_data if d.part == 0])

    @property
    def part_ranges(self) -> tuple[tuple[int, int, int], ...]:
        """(start, end, end of instructions) of each part, the entry first; ``end``
        includes the inline data after the part's code."""
        code_ends = [self.end_rva] + [f.rva + f.size for f in self.fragments]
        starts = [self.rva] + [f.rva for f in self.fragments]
        ends = list(code_ends)
        ends[0] = self.extent_end
        for data in self.inline_data:
            if data.part < len(ends):
                ends[data.part] = max(ends[data.part], data.rva + data.size)
        return tuple(zip(starts, ends, code_ends, strict=True))

    def contains(self, rva: int) -> bool:
        """True if ``rva`` lies in the entry part, a fragment or the function's data."""
        if self.rva <= rva < self.extent_end:
            return True
        if any(f.rva <= rva < f.rva + f.size for f in self.fragments):
            return True
        return any(d.rva <= rva < d.rva + d.size for d in self.inline_data)
