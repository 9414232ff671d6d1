"""The architecture interface: everything machine-specific sits behind it."""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from array import array

    from hpatch.arch.relocate import CalleeReads, CodeFixup, ShortBranch
    from hpatch.arch.rewrite import Fixup, Redirect

ReadRva = Callable[[int, int], bytes]
"""Reads ``size`` bytes at an RVA of the mapped image; raises ImageFormatError out of range."""


class Machine(IntEnum):
    """IMAGE_FILE_MACHINE_* values hpatch supports."""

    AMD64 = 0x8664
    ARM64 = 0xAA64


#: Machines hpatch does not handle, by their IMAGE_FILE_MACHINE_* names, for messages.
_OTHER_MACHINES = {0x14C: "I386", 0x1C4: "ARMNT", 0xA641: "ARM64EC", 0xA64E: "ARM64X"}


def machine_name(value: int) -> str:
    """IMAGE_FILE_MACHINE_* by its spec name (AMD64, ARM64, I386, ...); another value
    as its number, ``0x.... (unknown)``."""
    if value in Machine._value2member_map_:
        return Machine(value).name
    return _OTHER_MACHINES.get(value, f"0x{value:04x} (unknown)")


class SiteKind(IntEnum):
    """What a code reference does with its target (same numbers as the C extension)."""

    CALL = 1
    JUMP = 2
    COND_JUMP = 3
    ADDRESS = 4
    LOAD = 5  # a PC-relative load from the target (ARM64 LDR literal)


class RefKind(IntEnum):
    """What an instruction operand that names another place in the image means."""

    CALL = 1  # direct call (x64 E8, ARM64 BL)
    BRANCH = 2  # direct jump, conditional or not, out of the function
    DATA = 3  # x64 RIP-relative operand (memory access or LEA)
    ABSOLUTE = 4  # an absolute address the loader relocates
    IMAGE_RVA = 5  # an offset from __ImageBase (MSVC x64 table indexing)
    ADDRESS = 6  # ARM64 ADR, or ADRP with the ADD/LDR/STR that completes it
    LITERAL = 7  # ARM64 LDR (literal)


class UnwindFormat(IntEnum):
    """How a machine's unwind data describes a frame: what a stack unwinder decodes."""

    UNWIND_INFO = 1  # x64 UNWIND_INFO: unwind codes, chained and indirect entries
    XDATA = 2  # ARM64 .xdata records and packed unwind data


class Reference(NamedTuple):
    """An operand of the instruction at ``site_rva`` that names ``target_rva``.

    Its bits are masked in the normalised code: what stays comparable is what the
    reference points at, which the diff resolves under its match. A tuple: large
    images have hundreds of thousands.
    """

    site_rva: int
    kind: RefKind
    target_rva: int


#: RefKind by value, without the enum's call overhead.
REF_KINDS = {int(kind): kind for kind in RefKind}


@dataclass(frozen=True, slots=True)
class NormalisedCode:
    """Code with every position-dependent field masked, and what those fields named."""

    code: bytes
    references: tuple[Reference, ...]
    instruction_count: int

    @classmethod
    def from_core(cls, result: tuple[bytes, list[tuple[int, int, int]], int]) -> NormalisedCode:
        """From a core normaliser's (masked code, (site, kind, target) list, count)."""
        code, references, count = result
        return cls(
            code,
            tuple(Reference(site, REF_KINDS[kind], target) for site, kind, target in references),
            count,
        )


@dataclass(frozen=True, slots=True)
class UnwindEntry:
    """One .pdata entry, decoded.

    ``parent_rva`` is the start of the function this entry is a fragment of: the
    root of an x64 UNW_FLAG_CHAININFO chain, or for ARM64 fragments (packed flag 2,
    or unwind codes that open with ``end_c``) ``None`` until the image folds it
    into the function that precedes it.
    """

    begin_rva: int
    end_rva: int
    unwind_rva: int | None
    is_fragment: bool
    parent_rva: int | None = None
    #: No prolog and no unwind codes: the entry neither builds nor assumes a frame.
    frameless: bool = False


class SiteColumns(NamedTuple):
    """Direct references from code, as columns: the instruction at ``sites[i]`` reaches
    ``targets[i]``, and ``kinds[i]`` is a SiteKind value.

    Fixed-width arrays (``array("I")``, ``array("I")``, ``array("B")``), as the scanners
    of the core hand them back: a 20 MB DLL has hundreds of thousands of sites, and a
    tuple each cost 120 bytes where the columns cost 9. ``zip(*columns)`` gives the
    ``(site_rva, target_rva, kind)`` rows.
    """

    sites: array[int]
    targets: array[int]
    kinds: array[int]


class Arch(ABC):
    """Operations the rest of hpatch asks of a machine instead of branching on it."""

    machine: Machine
    name: str
    #: Every function start and instruction is aligned to this many bytes.
    instruction_alignment: int
    #: Bytes per .pdata (RUNTIME_FUNCTION) entry.
    pdata_entry_size: int
    #: Where in an entry its end RVA lies (None: the entry has none; the unwind data
    #: gives the length) and where the RVA of its unwind data, or packed unwind data.
    pdata_end_field: int | None
    pdata_unwind_field: int
    #: The fixup kinds of a 32-bit RVA in data (function tables, jump tables) and of a
    #: 64-bit address in data (pointers).
    rva_fixup: Fixup
    pointer_fixup: Fixup
    #: The form of the unwind data the entries name.
    unwind_format: UnwindFormat
    #: A return instruction, and a trap (what fills code that nothing may run).
    return_instruction: bytes
    trap_instruction: bytes
    #: What an image of this machine that carries CHPE metadata is (ARM64EC, ARM64X).
    hybrid_name: str
    #: Whether code reaches data by page and offset (ARM64 ADRP and ADD/LDR/STR), so data
    #: carried into the region keeps its offset within its page.
    data_by_page: bool
    #: How far the patch region may lie from the image (bytes between any byte of one and
    #: any byte of the other), so that every branch and PC-relative field between them
    #: reaches: what a package states as its REGION_REACH prerequisite.
    region_reach: int
    #: Bytes a one-instruction redirect overwrites at a function's entry.
    redirect_size: int
    #: A function too short for that may still be redirected in two stages: a jump in
    #: the padding before it (this many bytes) and a short jump over its first
    #: instruction (at least ``two_stage_entry`` bytes). 0: no such form.
    two_stage_padding: int = 0
    two_stage_entry: int = 0
    #: Whether a primary .pdata entry may continue the function before it: ARM64 unwind
    #: data cannot chain, so MSVC gives each stage of a shrink-wrapped frame an entry of
    #: its own, run into from the stage before (x64 chains such a stage's unwind data to
    #: the function's instead, and a primary entry there always starts a function).
    pdata_stages_continue: bool = False

    def pdata_unwind_is_rva(self, field: bytes) -> bool:
        """Whether an entry's unwind field (its 4 bytes) is an RVA of unwind data, rather
        than unwind data packed into the field."""
        return True

    def pdata_function_length(self, word: int, read_u32: Callable[[int], int]) -> int | None:
        """Bytes of code an entry without an end field (``pdata_end_field`` None) covers,
        from its unwind field ``word``: the length packed into it, or the one in the header
        of the unwind data at the RVA it holds (``read_u32(rva)``, whose errors pass
        through); None for a form that covers nothing. Not asked of machines whose
        entries hold their end."""
        return None

    @abstractmethod
    def decode_unwind_entries(self, pdata: bytes, read: ReadRva) -> list[UnwindEntry]:
        """Decode a .pdata table (and the unwind records it points at)."""

    @abstractmethod
    def scan_sites(
        self, code: bytes | memoryview, code_rva: int, lo_rva: int, hi_rva: int
    ) -> SiteColumns:
        """Candidate direct references in ``code`` whose targets lie in [lo_rva, hi_rva),
        in site order."""

    @abstractmethod
    def normalise(
        self,
        code: bytes,
        code_rva: int,
        own_range: tuple[int, int],
        relocated: bytes,
        image_base: int,
    ) -> NormalisedCode:
        """Mask the position-dependent fields of ``code`` (at ``code_rva``).

        References whose target lies in ``own_range`` ([start, end) of the function part
        itself) keep their bytes: moving the part does not change them. ``relocated``
        is a buffer of the sorted uint32 RVAs of base-relocated fields; ``image_base``
        turns the addresses they hold into RVAs.
        """

    def reference_sites(self, code: bytes, code_rva: int) -> list[int]:
        """Sites of the references a linear decode of ``code`` (at ``code_rva``) finds, in
        order: those of ``normalise`` with no own range, relocations or image base.
        Machines may answer without building the references (discovery asks this of
        thousands of functions)."""
        normalised = self.normalise(code, code_rva, (code_rva, code_rva), b"", 0)
        return [reference.site_rva for reference in normalised.references]

    def canonical_code(self, normalised: NormalisedCode, code_rva: int) -> bytes:
        """The masked code with every out-of-part branch in one encoding, for comparing
        two builds: a linker or assembler picks a short or a near form by distance, and
        the two forms of a branch to the same place do the same thing. Machines with one
        form per branch return the masked code as it is."""
        return normalised.code

    def field_offsets(
        self, code: bytes, code_rva: int, image_bases: frozenset[int] = frozenset()
    ) -> list[tuple[str, tuple[int, ...]]]:
        """Per instruction of ``code``: its shape (mnemonic and operands, with branch
        targets, PC-relative addresses and structure field offsets left out) and the
        field offsets it accesses (displacements from a base register other than the
        stack and frame pointers, and other than ``image_bases``, registers that hold the
        image base: see ``image_base_registers``). Two builds of a function whose shapes
        agree and whose field offsets differ by one shift read a structure whose layout
        changed."""
        return []

    def image_base_registers(self, code: bytes, code_rva: int) -> frozenset[int]:
        """Registers ``code`` loads with the image base, whose displacements are RVAs
        (MSVC x64 indexes its tables from the image base), not field offsets."""
        return frozenset()

    def instruction_texts(self, code: bytes, code_rva: int) -> list[tuple[int, int, str]]:
        """(offset in ``code``, size, text) of each instruction: a cheap first look before
        field_offsets, which then decodes only the instructions whose text differs."""
        return []

    def access_size(self, read: ReadRva, site_rva: int) -> int | None:
        """Bytes the memory operand of the instruction at ``site_rva`` loads or stores,
        or None when it does not access memory there (an address taken) or the machine
        cannot tell from that instruction alone."""
        return None

    @abstractmethod
    def code_extent(
        self, read: ReadRva, start_rva: int, bound_rva: int, roots: Sequence[int] = ()
    ) -> int | None:
        """End RVA of the code reachable from ``start_rva`` (and ``roots``, such as the
        targets of a jump table) without leaving [start, bound).

        Follows branches inside the range, stops at returns, unconditional jumps and
        traps; returns ``None`` when something undecodable is reached or the code runs
        into ``bound_rva``.
        """

    @abstractmethod
    def instruction_starts(self, read: ReadRva, start_rva: int, end_rva: int) -> frozenset[int]:
        """RVAs of the instructions of a linear decode of [start_rva, end_rva)."""

    @abstractmethod
    def load_size(self, read: ReadRva, site_rva: int) -> int:
        """Bytes read by the PC-relative load at ``site_rva`` (a LOAD site)."""

    @abstractmethod
    def padding_length(self, data: bytes | memoryview, offset: int) -> int:
        """Length of the inter-function padding (traps, nops, zeros) at ``offset``."""

    @abstractmethod
    def import_thunk(self, read: ReadRva, rva: int) -> tuple[int, int] | None:
        """(size, IAT slot RVA) if an import thunk (a jump through one IAT slot) is at ``rva``."""

    @abstractmethod
    def falls_through(self, read: ReadRva, start_rva: int, end_rva: int) -> bool:
        """True if the code of [start, end) runs on past ``end``: its last instruction
        neither returns, jumps, traps nor calls (a final call is taken to be a call
        that does not return, the way compilers end functions)."""

    @abstractmethod
    def last_instruction_end(self, read: ReadRva, start_rva: int, end_rva: int) -> int:
        """End of the last non-padding instruction of a linear decode of [start, end)."""

    def runs_on(
        self,
        read: ReadRva,
        start_rva: int,
        end_rva: int,
        spans: Sequence[tuple[int, int]] = (),
        entries: Iterable[int] = (),
    ) -> bool:
        """True if the code of [start, end) can run on past its last instruction (past
        any padding): that instruction falls through and is reached. ``spans``: every
        part of the function, whose branches may lead into [start, end); ``entries``:
        other places control reaches there (jump table targets)."""
        return self.falls_through(
            read, start_rva, self.last_instruction_end(read, start_rva, end_rva)
        )

    @abstractmethod
    def code_fixups(
        self,
        code: bytes,
        code_rva: int,
        instructions: Sequence[tuple[int, int]],
        own_range: tuple[int, int],
        relocated: Sequence[int],
        image_base: int,
        indirect_targets: Iterable[int] = (),
        short_branches: list[ShortBranch] | None = None,
        callee_reads: CalleeReads | None = None,
    ) -> list[CodeFixup]:
        """The fields of ``code`` to rebind when it is copied elsewhere.

        ``instructions`` are the [start, end) ranges of instructions (the rest is
        data); references into ``own_range`` keep their bytes when it moves whole.
        ``relocated`` lists the sorted RVAs of base-relocated fields;
        ``indirect_targets`` the in-code targets of the code's jump tables. A branch
        leaving the code whose field no fixup kind writes (x64 rel8) is appended to
        ``short_branches`` when it is given, for the caller to send through a veneer;
        a machine whose short branches have fixup kinds of their own (ARM64 BRANCH19,
        BRANCH14) reports them as fixups. ``callee_reads`` tells what a function the
        code calls reads first (see ``registers_read_first``); without it, a value
        left in an argument register at a call is taken as handed on. RelocationError
        when the copy could not be proven right.
        """

    @abstractmethod
    def veneer(self) -> tuple[bytes, int, Fixup]:
        """A range-extension veneer: the bytes of an unconditional direct jump of the
        machine's longest direct reach, the offset of its field in them, and the fixup
        kind that binds the field to the jump's target."""

    @abstractmethod
    def veneer_target(self, code: bytes, va: int) -> int | None:
        """Where the veneer at the start of ``code`` (placed at ``va``) jumps; None when
        ``code`` starts with anything but the form ``veneer`` makes."""

    def extends_through_veneer(self, read: ReadRva, fixup: CodeFixup) -> bool:
        """Whether ``fixup`` is the field of a direct branch whose kind reaches less far
        than the patch region may lie from the image, and which a veneer beside the
        copy can extend (ARM64 B.cond, CBZ/CBNZ, TBZ/TBNZ; not a literal load or an
        ADR, which name data). False where narrow branches have no fixup kind (x64
        reports them as ShortBranch)."""
        return False

    @abstractmethod
    def unwind_record_size(self, read: ReadRva, unwind_rva: int) -> tuple[int, bool, int | None]:
        """(bytes, names an exception handler, RVA of a chained RUNTIME_FUNCTION or None)
        of the unwind record at ``unwind_rva`` (x64 UNWIND_INFO, ARM64 .xdata)."""

    @abstractmethod
    def gs_handler_check_at(self, read: ReadRva, rva: int) -> bool:
        """Whether the code at ``rva`` is the runtime's statically linked __GSHandlerCheck
        (how it is told apart in a stripped image: by its exact code)."""

    @abstractmethod
    def gs_handler_data_size(self, read: ReadRva, data_rva: int) -> int:
        """Bytes of the GS handler data at ``data_rva`` (frame offsets, no RVAs)."""

    @abstractmethod
    def predict_sites(self, code: bytes) -> list[tuple[int, Fixup]]:
        """The fixup sites a carried part's bytes predict (``arch/site_prediction.py``, a
        rule of the package format): (offset in the part, Fixup), ascending."""

    @abstractmethod
    def redirect_strategy(
        self, room: int, padding_before: int, first_instruction: int
    ) -> Redirect | None:
        """The redirect for an entry with ``room`` bytes up to the next function,
        ``padding_before`` bytes of padding before it and a first instruction of
        ``first_instruction`` bytes; None if none fits."""

    def jump_table_targets(
        self, read: ReadRva, table_rva: int, lo_rva: int, hi_rva: int, limit_rva: int
    ) -> list[int]:
        """Targets of a table of int32 offsets, relative to the table, into [lo, hi).

        This is the jump-table form of clang x64 and MSVC ARM64. The table ends at
        ``limit_rva`` or at the first entry that does not land in the range.
        """
        targets: list[int] = []
        while table_rva + 4 * (len(targets) + 1) <= limit_rva:
            (offset,) = struct.unpack("<i", read(table_rva + 4 * len(targets), 4))
            target = table_rva + offset
            if not lo_rva <= target < hi_rva or target % self.instruction_alignment:
                break
            targets.append(target)
        return targets

    def registers_read_first(
        self, read: ReadRva, start_rva: int, registers: frozenset[int]
    ) -> bool:
        """Whether the function at ``start_rva`` may read one of ``registers`` (general
        register numbers) before writing it, on any path; True when it cannot tell."""
        return True

    def packed_table_width(self, read: ReadRva, site_rva: int) -> int | None:
        """For code at ``site_rva`` that takes a table's address and dispatches through
        it with signed entries narrower than a word, each counting instructions from
        the table (MSVC ARM64's compressed switch): the entry width, 1 or 2 bytes;
        None for any other use (and on machines without the form)."""
        return None

    def packed_table_targets(
        self, read: ReadRva, table_rva: int, width: int, lo_rva: int, hi_rva: int, limit_rva: int
    ) -> list[int]:
        """Targets in [lo, hi) of a table of signed ``width``-byte entries counting
        instructions from the table; it ends at ``limit_rva``, or at the first entry
        that leads outside [lo, hi) or into the table itself."""
        code = "b" if width == 1 else "h"
        step = self.instruction_alignment
        targets: list[int] = []
        while table_rva + width * (len(targets) + 1) <= limit_rva:
            (entry,) = struct.unpack(f"<{code}", read(table_rva + width * len(targets), width))
            target = table_rva + step * entry
            if not lo_rva <= target < hi_rva or table_rva <= target < table_rva + width * (
                len(targets) + 1
            ):
                break
            targets.append(target)
        return targets

    def dispatch_targets(
        self, read: ReadRva, start_rva: int, end_rva: int, bound_rva: int
    ) -> list[int]:
        """Targets in [start, bound) of the jump tables the code of [start, end) indexes
        in a form of the machine's own, with the table's length taken from the code
        (``jump_table_targets`` reads int32 tables, which need neither); none here."""
        return []

    def jump_table_size(
        self, read: ReadRva, table_rva: int, code_start: int, limit_rva: int
    ) -> int:
        """Bytes of a table of int32 offsets, relative to it, into [code_start, table).

        Returns 0 if there is no such table at ``table_rva``.
        """
        return 4 * len(self.jump_table_targets(read, table_rva, code_start, table_rva, limit_rva))

    def rva_table_size(self, read: ReadRva, table_rva: int, code_start: int, limit_rva: int) -> int:
        """Bytes of a table of image-relative uint32 offsets into [code_start, table).

        This is the jump-table form MSVC x64 places after a function's code (entries
        are RVAs, addressed through ``__ImageBase``). Fewer than two entries is no table.
        """
        size = 0
        while table_rva + size + 4 <= limit_rva:
            (target,) = struct.unpack("<I", read(table_rva + size, 4))
            if not code_start <= target < table_rva or target % self.instruction_alignment:
                break
            size += 4
        return size if size >= 8 else 0

    @abstractmethod
    def disassemble(self, code: bytes, va: int) -> tuple[int, str]:
        """(length, text) of the instruction at the start of ``code`` placed at ``va``;
        (0, "(bad)") where no instruction decodes. For reports, not for analysis."""
