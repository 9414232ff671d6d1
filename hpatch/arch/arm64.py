"""ARM64: .pdata (packed and .xdata forms), reference-site scanning, code extents, padding."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence

import capstone
from capstone import arm64_const

from hpatch._backend import core
from hpatch.arch.arm64_bits import adr_immediate, sign_extend
from hpatch.arch.arm64_relocate import (
    ARGUMENT_REGISTERS,
    CALL_CLOBBERED,
    RESULT_REGISTERS,
    arm64_code_fixups,
    direct_branch,
)
from hpatch.arch.base import (
    Arch,
    Machine,
    NormalisedCode,
    ReadRva,
    SiteColumns,
    UnwindEntry,
    UnwindFormat,
)
from hpatch.arch.code_shape import CodeShape
from hpatch.arch.relocate import CalleeReads, CodeFixup, ShortBranch
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.arch.site_prediction import predict_arm64
from hpatch.errors import ImageFormatError

#: Base registers whose displacements are stack slots, not structure fields.
_FRAME_REGISTERS = frozenset((arm64_const.ARM64_REG_SP, arm64_const.ARM64_REG_X29))
_ADDRESS = re.compile(r"#0x[0-9a-f]+$")
#: Instructions whose immediate is an address relative to the instruction.
_PC_RELATIVE = frozenset(
    ("adr", "adrp", "bl", "b", "cbz", "cbnz", "tbz", "tbnz", "ldr", "ldrsw", "prfm")
)

PDATA_UNPACKED, PDATA_PACKED, PDATA_PACKED_FRAGMENT, PDATA_RESERVED = 0, 1, 2, 3
UNWIND_CODE_END_C = 0xE5
NOP = 0xD503201F
_ENTRY = struct.Struct("<II")
_WORD = struct.Struct("<I")
_MAX_EXTENT_BYTES = 1 << 20


# ARM64 __GSHandlerCheck: reads the one signed word of HandlerData (DispatcherContext
# + 0x38), masks its two flag bits, and passes the frame's cookie to
# __security_check_cookie, which sees nothing of the data.
_GS_HANDLER_CHECK = CodeShape.of_words(
    (
        0xD503237F,  # pacibsp
        0xA9BF7BFD,  # stp x29, x30, [sp, #-0x10]!
        0x910003FD,  # mov x29, sp
        0xF9401C68,  # ldr x8, [x3, #0x38]
        0xB9800108,  # ldrsw x8, [x8]
        0x927EF509,  # and x9, x8, #~3
        0xF8616928,  # ldr x8, [x9, x1]
        0xCB080128,  # sub x8, x9, x8
        0x8B010108,  # add x8, x8, x1
        0xD1002100,  # sub x0, x8, #8
        (0x94000000, 0xFC000000),  # bl __security_check_cookie
        0x52800020,  # mov w0, #1
        0xA8C17BFD,  # ldp x29, x30, [sp], #0x10
        0xD50323FF,  # autibsp
        0xD65F03C0,  # ret
    )
)


def _is_trap_or_padding(word: int) -> bool:
    # UDF #imm16 (including the all-zero word) and BRK #imm16.
    return (word & 0xFFFF0000) == 0 or (word & 0xFFE0001F) == 0xD4200000


def _branch(word: int, rva: int) -> tuple[int | None, bool]:
    """(in-function target or None, stops fall-through) for a control-flow word."""
    direct = direct_branch(word, rva)
    if direct is not None:
        target, conditional, call = direct
        return (None if call else target), not (conditional or call)
    if (word & 0xFE1FFC1F) == 0xD61F0000:  # BR / RET / ERET-class register branches
        opc = (word >> 21) & 0xF
        return None, opc in (0, 2)  # BR, RET (BLR continues)
    if (word & 0xFFFFFBFF) == 0xD65F0BFF:  # RETAA / RETAB
        return None, True
    if (word & 0xFEFFF800) == 0xD61F0800:  # BRAA / BRAB / BRAAZ / BRABZ
        return None, True
    return None, False


#: How far before a table's dispatch the bounds check and the table's address may be.
_DISPATCH_WINDOW = 16


#: Instructions followed from a callee's entry, on all paths, before giving up
#: (registers_read_first).
_READ_FIRST_STEPS = 256


def _register_number(name: str) -> int:
    """x0..x30 and w0..w30 by number; any other register (sp, the vector and flag
    registers, xzr) as -1."""
    if name[:1] in ("x", "w") and name[1:].isdigit():
        return int(name[1:])
    return -1


#: LDRSB/LDRSH (register offset), 64- and 32-bit destination: the entry width.
_SIGNED_ENTRY_LOADS = {0x38A00800: 1, 0x38E00800: 1, 0x78A00800: 2, 0x78E00800: 2}
#: ADD xD, xT, xE, LSL #2 (shifted register) and ADD xD, xT, wE, SXTW #2 (extended).
_SCALED_ADDS = (0x8B000800, 0x8B20C800)


def _compressed_table(
    words: Sequence[int], br: int, code_rva: int
) -> tuple[int, int, int, int] | None:
    """(table RVA, base RVA, entry width, entry count) of the compressed jump table
    that the BR at ``words[br]`` dispatches through (see Arm64.dispatch_targets)."""
    target_register = words[br] >> 5 & 0x1F
    add = words[br - 1]
    # ADD xD, xB, xE, LSL #2 (shifted register), or ADD xD, xB, wE, UXTW #2.
    if add & 0xFFE0FC00 not in (0x8B000800, 0x8B204800) or add & 0x1F != target_register:
        return None
    base_register, entry_register = add >> 5 & 0x1F, add >> 16 & 0x1F
    load = base_rva = None
    table_register = index_register = width = 0
    lo = max(0, br - _DISPATCH_WINDOW)
    for at in range(br - 2, lo - 1, -1):
        word = words[at]
        # LDRB wE, [xT, xK] or LDRH wE, [xT, xK, LSL #1]
        kind = word & 0xFFE0FC00
        if load is None and word & 0x1F == entry_register and kind in (0x38606800, 0x78607800):
            load = at
            width = 1 if kind == 0x38606800 else 2
            table_register, index_register = word >> 5 & 0x1F, word >> 16 & 0x1F
        if base_rva is None and (word & 0x9F00001F) == 0x10000000 | base_register:  # ADR xB
            base_rva = code_rva + 4 * at + adr_immediate(word)
    if load is None or base_rva is None:
        return None
    table_rva = offset = count = None
    for at in range(load - 1, lo - 1, -1):
        word = words[at]
        if (
            offset is None
            and (word & 0xFFC003FF) == 0x91000000 | table_register << 5 | table_register
        ):
            offset = word >> 10 & 0xFFF  # ADD xT, xT, #:lo12:table
        elif (
            table_rva is None
            and offset is not None
            and (word & 0x9F00001F) == (0x90000000 | table_register)
        ):  # ADRP xT, table
            pages = adr_immediate(word)
            table_rva = ((code_rva + 4 * at) & ~0xFFF) + pages * 4096 + offset
        # CMP xK, #imm / CMP wK, #imm (SUBS into the zero register, unshifted), then
        # B.HI past the last entry or B.HS at the first one past the table.
        if (
            count is None
            and (word & 0x7FC0001F) == 0x7100001F
            and word >> 5 & 0x1F == index_register
        ):
            condition = words[at + 1] & 0xFF00001F
            if condition in (0x54000008, 0x54000002):
                count = (word >> 10 & 0xFFF) + (condition == 0x54000008)
    if table_rva is None or count is None:
        return None
    return table_rva, base_rva, width, count


class Arm64(Arch):
    """The ARM64 (AArch64) architecture."""

    machine = Machine.ARM64
    name = "arm64"
    instruction_alignment = 4
    pdata_entry_size = 8
    pdata_end_field = None  # BeginAddress, then UnwindData or packed unwind data
    pdata_unwind_field = 4
    rva_fixup = Fixup.ARM64_ADDR32NB
    pointer_fixup = Fixup.ARM64_ADDR64
    unwind_format = UnwindFormat.XDATA
    return_instruction = _WORD.pack(0xD65F03C0)  # ret
    trap_instruction = _WORD.pack(0xD4200000)  # brk #0
    hybrid_name = "ARM64X"
    data_by_page = True  # ADRP, then the low 12 bits
    region_reach = (1 << 27) - 64  # B/BL imm26, less a margin
    redirect_size = 4  # B imm26
    pdata_stages_continue = True

    def __init__(self) -> None:
        self._cs_lite = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        self._cs_detail = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        self._cs_detail.detail = True

    def pdata_unwind_is_rva(self, field: bytes) -> bool:
        return not field[0] & 3  # Flag 0: an .xdata RVA; else packed unwind data

    def pdata_function_length(self, word: int, read_u32: Callable[[int], int]) -> int | None:
        flag = word & 3
        if flag == PDATA_RESERVED:
            return None
        if flag:
            return ((word >> 2) & 0x7FF) * 4  # packed: Function Length, in words
        return (read_u32(word) & 0x3FFFF) * 4  # the .xdata header's Function Length

    def instruction_texts(self, code: bytes, code_rva: int) -> list[tuple[int, int, str]]:
        texts = []
        for address, size, mnemonic, operands in self._cs_lite.disasm_lite(code, code_rva):
            # Addresses that only follow the code's own placement are left out.
            if mnemonic in _PC_RELATIVE or mnemonic.startswith("b."):
                operands = _ADDRESS.sub("target", operands)
            texts.append((address - code_rva, size, f"{mnemonic} {operands}"))
        return texts

    def field_offsets(
        self, code: bytes, code_rva: int, image_bases: frozenset[int] = frozenset()
    ) -> list[tuple[str, tuple[int, ...]]]:
        found = []
        for insn in self._cs_detail.disasm(code, code_rva):
            pc_relative = insn.mnemonic in _PC_RELATIVE or insn.group(arm64_const.ARM64_GRP_JUMP)
            shape, offsets = [insn.mnemonic], []
            for operand in insn.operands:
                if operand.type == arm64_const.ARM64_OP_REG:
                    shape.append(insn.reg_name(operand.reg))
                elif operand.type == arm64_const.ARM64_OP_IMM:
                    if pc_relative:
                        shape.append("target")
                    elif self._field_address(insn):
                        # ADD Xd, Xn, #imm: the address of a field, read or written later
                        shape.append("field")
                        offsets.append(operand.imm)
                    else:
                        shape.append(str(operand.imm))
                elif operand.type == arm64_const.ARM64_OP_MEM:
                    mem = operand.mem
                    parts = [str(mem.base), str(mem.index)]
                    if mem.base in _FRAME_REGISTERS or mem.index:
                        parts.append(str(mem.disp))
                    else:
                        parts.append("field")
                        offsets.append(mem.disp)
                    shape.append("[" + ",".join(parts) + "]")
                else:
                    shape.append(str(operand.type))
            found.append((" ".join(shape), tuple(offsets)))
        return found

    @staticmethod
    def _field_address(insn: capstone.CsInsn) -> bool:
        """ADD of an unshifted immediate to a 64-bit register other than SP and FP."""
        operands = insn.operands
        return (
            insn.mnemonic == "add"
            and len(operands) == 3
            and operands[1].type == arm64_const.ARM64_OP_REG
            and operands[1].reg not in _FRAME_REGISTERS
            and insn.reg_name(operands[1].reg).startswith("x")
            and operands[2].shift.type == arm64_const.ARM64_SFT_INVALID
        )

    # .pdata -------------------------------------------------------------

    def _xdata_entry(self, read: ReadRva, begin: int, xdata_rva: int) -> UnwindEntry:
        if xdata_rva % 4:
            raise ImageFormatError(
                f".xdata of function 0x{begin:x} is misaligned (0x{xdata_rva:x})"
            )
        (header,) = _WORD.unpack(read(xdata_rva, 4))
        length = (header & 0x3FFFF) * 4
        version = (header >> 18) & 3
        packed_epilog = (header >> 21) & 1
        epilog_count = (header >> 22) & 0x1F
        code_words = (header >> 27) & 0x1F
        cursor = xdata_rva + 4
        if version != 0:
            raise ImageFormatError(f".xdata of function 0x{begin:x} has unknown version {version}")
        if epilog_count == 0 and code_words == 0:
            (extended,) = _WORD.unpack(read(cursor, 4))
            epilog_count, code_words = extended & 0xFFFF, (extended >> 16) & 0xFF
            cursor += 4
        if length == 0:
            raise ImageFormatError(f".xdata of function 0x{begin:x} gives a zero length")
        if packed_epilog:
            if code_words and epilog_count >= code_words * 4:
                raise ImageFormatError(
                    f".xdata of function 0x{begin:x}: epilog code index {epilog_count} is past "
                    f"its {code_words * 4} unwind code bytes"
                )
        else:
            scopes = read(cursor, 4 * epilog_count)
            for (scope,) in _WORD.iter_unpack(scopes):
                if (scope & 0x3FFFF) * 4 >= length:
                    raise ImageFormatError(
                        f".xdata of function 0x{begin:x}: epilog scope starts past the function"
                    )
            cursor += 4 * epilog_count
        codes = read(cursor, 4 * code_words)
        is_fragment = bool(codes) and codes[0] == UNWIND_CODE_END_C
        return UnwindEntry(begin, begin + length, xdata_rva, is_fragment)

    def decode_unwind_entries(self, pdata: bytes, read: ReadRva) -> list[UnwindEntry]:
        entries: list[UnwindEntry] = []
        for begin, unwind in _ENTRY.iter_unpack(pdata[: len(pdata) // 8 * 8]):
            if begin == 0 and unwind == 0:
                continue  # zero padding at the end of the table
            if begin % 4:
                raise ImageFormatError(f".pdata entry for 0x{begin:x} is not 4-aligned")
            flag = unwind & 3
            if flag == PDATA_UNPACKED:
                entries.append(self._xdata_entry(read, begin, unwind))
            elif flag == PDATA_RESERVED:
                raise ImageFormatError(f".pdata entry for 0x{begin:x} uses the reserved flag 3")
            else:
                length = ((unwind >> 2) & 0x7FF) * 4
                if length == 0:
                    raise ImageFormatError(f".pdata entry for 0x{begin:x} gives a zero length")
                entries.append(
                    UnwindEntry(begin, begin + length, None, flag == PDATA_PACKED_FRAGMENT)
                )
        return entries

    # code ---------------------------------------------------------------

    def scan_sites(
        self, code: bytes | memoryview, code_rva: int, lo_rva: int, hi_rva: int
    ) -> SiteColumns:
        return SiteColumns(*core.scan_arm64_sites(code, code_rva, lo_rva, hi_rva))

    def normalise(
        self,
        code: bytes,
        code_rva: int,
        own_range: tuple[int, int],
        relocated: bytes,
        image_base: int,
    ) -> NormalisedCode:
        return NormalisedCode.from_core(
            core.normalise_arm64(code, code_rva, own_range[0], own_range[1], relocated, image_base)
        )

    def reference_sites(self, code: bytes, code_rva: int) -> list[int]:
        _, references, _ = core.normalise_arm64(code, code_rva, code_rva, code_rva, b"", 0)
        return [site for site, _, _ in references]

    def code_extent(
        self, read: ReadRva, start_rva: int, bound_rva: int, roots: Sequence[int] = ()
    ) -> int | None:
        bound_rva = min(bound_rva, start_rva + _MAX_EXTENT_BYTES)
        bound_rva -= (bound_rva - start_rva) % 4
        if start_rva % 4 or bound_rva <= start_rva:
            return None
        code = read(start_rva, bound_rva - start_rva)
        pending = [start_rva, *(r for r in roots if start_rva <= r < bound_rva)]
        visited: set[int] = set()
        end = start_rva
        while pending:
            rva = pending.pop()
            while rva not in visited:
                if not start_rva <= rva < bound_rva:
                    return None
                (word,) = _WORD.unpack_from(code, rva - start_rva)
                visited.add(rva)
                if _is_trap_or_padding(word):
                    if (word & 0xFFE0001F) == 0xD4200000:
                        end = max(end, rva + 4)  # BRK is a deliberate trap inside the body
                    break
                end = max(end, rva + 4)
                target, stops = _branch(word, rva)
                if target is not None and start_rva <= target < bound_rva:
                    pending.append(target)
                if stops:
                    break
                rva += 4
        return end

    def packed_table_width(self, read: ReadRva, site_rva: int) -> int | None:
        """MSVC's compressed switch, the table right in the code::

        adr   xT, table
        ldrsb xE, [xT, wK, uxtw]      (ldrsh xE, [xT, wK, uxtw #1])
        add   xD, xT, xE, lsl #2
        br    xD
        """
        if site_rva % 4:
            return None
        try:
            words = struct.unpack("<5I", read(site_rva, 20))
        except ImageFormatError:
            return None
        if words[0] & 0x9F000000 != 0x10000000:  # ADR
            return None
        table = words[0] & 0x1F
        for at in (1, 2):  # the load next, or after one more instruction
            load, add, br = words[at], words[at + 1], words[at + 2]
            width = _SIGNED_ENTRY_LOADS.get(load & 0xFFE00C00)
            entry = load & 0x1F
            if (
                width is not None
                and load >> 5 & 0x1F == table
                and add & 0xFFE0FC00 in _SCALED_ADDS
                and add >> 5 & 0x1F == table
                and add >> 16 & 0x1F == entry
                and br & 0xFFFFFC1F == 0xD61F0000
                and br >> 5 & 0x1F == add & 0x1F
            ):
                return width
        return None

    def dispatch_targets(
        self, read: ReadRva, start_rva: int, end_rva: int, bound_rva: int
    ) -> list[int]:
        """clang's compressed tables: unsigned byte or halfword entries counting words
        from a label the code takes with ADR, ``count`` of them as a ``cmp`` bounds::

            cmp   xK, #count-1 ; b.hi default
            adrp  xT, table ; add xT, xT, :lo12:table
            adr   xB, base
            ldrb  wE, [xT, xK]            (ldrh wE, [xT, xK, lsl #1])
            add   xD, xB, xE, lsl #2
            br    xD
        """
        start_rva += -start_rva % 4
        count = (end_rva - start_rva) // 4
        if count < 4:
            return []
        words = struct.unpack(f"<{count}I", read(start_rva, 4 * count))
        found: list[int] = []
        for index, word in enumerate(words):
            if (word & 0xFFFFFC1F) != 0xD61F0000 or index < 3:  # BR xD
                continue
            table = _compressed_table(words, index, start_rva)
            if table is None:
                continue
            table_rva, base_rva, width, count = table
            try:
                raw = read(table_rva, width * count)
            except ImageFormatError:
                continue
            entries = raw if width == 1 else struct.unpack(f"<{count}H", raw)
            found.extend(
                t for t in (base_rva + 4 * e for e in entries) if start_rva <= t < bound_rva
            )
        return sorted(set(found))

    def instruction_starts(self, read: ReadRva, start_rva: int, end_rva: int) -> frozenset[int]:
        return frozenset(range(start_rva - start_rva % 4 + (4 if start_rva % 4 else 0), end_rva, 4))

    def import_thunk(self, read: ReadRva, rva: int) -> tuple[int, int] | None:
        if rva % 4:
            return None
        adrp, ldr, br = struct.unpack("<III", read(rva, 12))
        # ADRP X16, page ; LDR X16, [X16, #off] ; BR X16
        if (adrp & 0x9F00001F) != 0x90000010 or (ldr & 0xFFC003FF) != 0xF9400210:
            return None
        if br != 0xD61F0200:
            return None
        pages = adr_immediate(adrp)
        slot = (rva & ~0xFFF) + pages * 4096 + ((ldr >> 10) & 0xFFF) * 8
        return 12, slot

    def falls_through(self, read: ReadRva, start_rva: int, end_rva: int) -> bool:
        if end_rva - start_rva < 4 or (end_rva - start_rva) % 4:
            return False
        (word,) = _WORD.unpack(read(end_rva - 4, 4))
        is_call = (word & 0xFC000000) == 0x94000000 or (word & 0xFFFFFC1F) == 0xD63F0000
        if _is_trap_or_padding(word) or is_call:
            return False
        return not _branch(word, end_rva - 4)[1]

    def runs_on(
        self,
        read: ReadRva,
        start_rva: int,
        end_rva: int,
        spans: Sequence[tuple[int, int]] = (),
        entries: Iterable[int] = (),
    ) -> bool:
        end = self.last_instruction_end(read, start_rva, end_rva)
        if not self.falls_through(read, start_rva, end):
            return False
        # A word after a return, a jump or a trap is reached only by a branch: a constant
        # placed there (MSVC's literals and fill) decodes as an instruction never run.
        targets = set(entries)
        for span_start, span_end in {*spans, (start_rva, end)}:
            code = read(span_start, (span_end - span_start) // 4 * 4)
            for index, (word,) in enumerate(_WORD.iter_unpack(code)):
                target = _branch(word, span_start + 4 * index)[0]
                if target is not None:
                    targets.add(target)
        reached = True  # the part's first word, and each word the one before runs into
        for index, (word,) in enumerate(_WORD.iter_unpack(read(start_rva, end - start_rva))):
            rva = start_rva + 4 * index
            reached = reached or rva in targets
            if rva == end - 4:
                break
            if _is_trap_or_padding(word) or _branch(word, rva)[1]:
                reached = False
        return reached

    def last_instruction_end(self, read: ReadRva, start_rva: int, end_rva: int) -> int:
        code = read(start_rva, end_rva - start_rva)
        last = start_rva
        for index, (word,) in enumerate(_WORD.iter_unpack(code[: len(code) // 4 * 4])):
            if word not in (0, NOP):
                last = start_rva + 4 * index + 4
        return last

    def load_size(self, read: ReadRva, site_rva: int) -> int:
        (word,) = _WORD.unpack(read(site_rva, 4))
        opc, vector = word >> 30, (word >> 26) & 1
        if vector:
            return {0: 4, 1: 8, 2: 16}.get(opc, 0)
        return {0: 4, 1: 8, 2: 4}.get(opc, 0)

    def padding_length(self, data: bytes | memoryview, offset: int) -> int:
        i = offset
        while i + 4 <= len(data):
            (word,) = _WORD.unpack_from(data, i)
            if word not in (0, NOP):
                break
            i += 4
        return i - offset

    # relocation -----------------------------------------------------------

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
        # Every ARM64 branch field has a fixup kind: short ones come back as fixups.
        return arm64_code_fixups(
            code,
            code_rva,
            instructions,
            own_range,
            relocated,
            image_base,
            indirect_targets,
            callee_reads,
        )

    def registers_read_first(
        self, read: ReadRva, start_rva: int, registers: frozenset[int], depth: int = 3
    ) -> bool:
        """Follows the callee from its entry along every path (into the functions it
        calls, ``depth`` deep), each until the registers it still carries are written
        or one is read; an indirect branch, a trap, a fault or more than
        _READ_FIRST_STEPS instructions decide nothing (True). A call ends the life of
        the argument registers (the callee's own, per the AAPCS64), a return that of
        all but the result registers."""
        pending: list[tuple[int, frozenset[int]]] = [(start_rva, registers)]
        seen: set[tuple[int, frozenset[int]]] = set()
        steps = 0
        while pending:
            at, live = pending.pop()
            while live and (at, live) not in seen:
                seen.add((at, live))
                steps += 1
                if steps > _READ_FIRST_STEPS or at % 4:
                    return True
                try:
                    code = read(at, 4)
                except ImageFormatError:
                    return True
                insn = next(self._cs_detail.disasm(code, at), None)
                if insn is None:
                    return True
                reads, writes = (
                    {_register_number(insn.reg_name(r)) for r in group}
                    for group in insn.regs_access()
                )
                if live & reads:
                    return True
                (word,) = _WORD.unpack(code)
                branch = direct_branch(word, at)
                if branch is not None:
                    target, conditional, call = branch
                    if call:  # BL: the callee gets what is left, then it is gone
                        passed = live & ARGUMENT_REGISTERS
                        if passed and (
                            depth == 0 or self.registers_read_first(read, target, passed, depth - 1)
                        ):
                            return True
                        live = live - CALL_CLOBBERED
                        at += 4
                        continue
                    if conditional:
                        pending.append((target, live))
                        at += 4
                        continue
                    at = target  # B
                    continue
                if (word & 0xFFFFFC1F) == 0xD65F0000:  # RET
                    if live & RESULT_REGISTERS:
                        return True
                    break
                if insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL):
                    return True  # an indirect branch or call
                if _is_trap_or_padding(word):
                    return True
                live = live - writes
                at += 4
        return False

    def veneer(self) -> tuple[bytes, int, Fixup]:
        return _WORD.pack(0x14000000), 0, Fixup.ARM64_BRANCH26  # B

    def veneer_target(self, code: bytes, va: int) -> int | None:
        if len(code) < 4:
            return None
        (word,) = _WORD.unpack_from(code)
        if word & 0xFC000000 != 0x14000000:
            return None
        return va + 4 * sign_extend(word & 0x3FFFFFF, 26)

    def extends_through_veneer(self, read: ReadRva, fixup: CodeFixup) -> bool:
        if fixup.kind not in (Fixup.ARM64_BRANCH19, Fixup.ARM64_BRANCH14):
            return False
        (word,) = _WORD.unpack(read(fixup.field_rva, 4))
        branch = direct_branch(word, fixup.field_rva)
        return branch is not None and branch[1]  # conditional: not a literal load

    def unwind_record_size(self, read: ReadRva, unwind_rva: int) -> tuple[int, bool, int | None]:
        (header,) = _WORD.unpack(read(unwind_rva, 4))
        epilogs, code_words, size = (header >> 22) & 0x1F, header >> 27, 4
        if epilogs == 0 and code_words == 0:  # extended header
            (extended,) = _WORD.unpack(read(unwind_rva + 4, 4))
            epilogs, code_words, size = extended & 0xFFFF, (extended >> 16) & 0xFF, 8
        if not header & (1 << 21):  # E clear: epilog scopes follow the header
            size += 4 * epilogs
        return size + 4 * code_words, bool(header & (1 << 20)), None

    def gs_handler_check_at(self, read: ReadRva, rva: int) -> bool:
        return _GS_HANDLER_CHECK.matches(read, rva)

    def gs_handler_data_size(self, read: ReadRva, data_rva: int) -> int:
        return 4  # one signed cookie offset; the handler masks its two flag bits

    def predict_sites(self, code: bytes) -> list[tuple[int, Fixup]]:
        return predict_arm64(code)

    def redirect_strategy(
        self, room: int, padding_before: int, first_instruction: int
    ) -> Redirect | None:
        return Redirect.ARM64_B if room >= Redirect.ARM64_B.span[1] else None

    def disassemble(self, code: bytes, va: int) -> tuple[int, str]:
        for _, size, mnemonic, op_str in self._cs_lite.disasm_lite(code, va, 1):
            return size, f"{mnemonic} {op_str}".strip()
        return 0, "(bad)"
