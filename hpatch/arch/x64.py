"""AMD64: .pdata/UNWIND_INFO decoding, reference-site scanning, code extents, padding."""

from __future__ import annotations

import ctypes
import re
import struct
import threading
from collections.abc import Iterable, Sequence

import capstone
from capstone import x86_const

from hpatch._backend import core
from hpatch.arch.base import (
    Arch,
    Machine,
    NormalisedCode,
    ReadRva,
    RefKind,
    SiteColumns,
    SiteKind,
    UnwindEntry,
    UnwindFormat,
)
from hpatch.arch.code_shape import CodeShape
from hpatch.arch.relocate import CalleeReads, CodeFixup, ShortBranch
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.arch.site_prediction import predict_x64
from hpatch.arch.x64_relocate import x64_code_fixups
from hpatch.errors import ImageFormatError

#: Mnemonics whose immediate operand is a code address.
_BRANCHES = ("j", "call", "loop")
_RIP_DISPLACEMENT = re.compile(r"rip [+-] 0x[0-9a-f]+")
#: Base registers whose displacements are stack slots, not structure fields.
_FRAME_REGISTERS = frozenset((x86_const.X86_REG_RSP, x86_const.X86_REG_RBP))
#: capstone's 64-bit registers by their encoding number (REX.R and ModRM reg).
_REG64 = (
    x86_const.X86_REG_RAX,
    x86_const.X86_REG_RCX,
    x86_const.X86_REG_RDX,
    x86_const.X86_REG_RBX,
    x86_const.X86_REG_RSP,
    x86_const.X86_REG_RBP,
    x86_const.X86_REG_RSI,
    x86_const.X86_REG_RDI,
    x86_const.X86_REG_R8,
    x86_const.X86_REG_R9,
    x86_const.X86_REG_R10,
    x86_const.X86_REG_R11,
    x86_const.X86_REG_R12,
    x86_const.X86_REG_R13,
    x86_const.X86_REG_R14,
    x86_const.X86_REG_R15,
)

UNW_FLAG_EHANDLER = 0x1
UNW_FLAG_UHANDLER = 0x2
UNW_FLAG_CHAININFO = 0x4
RUNTIME_FUNCTION_INDIRECT = 0x1
#: ``GS_HANDLER_DATA`` flag: an aligned-frame offset and alignment follow.
UNW_GS_FLAG_HAS_ALIGNMENT = 4
_RUNTIME_FUNCTION = struct.Struct("<III")
_MAX_CHAIN_DEPTH = 32
_MAX_EXTENT_BYTES = 1 << 20

# x64 __GSHandlerCheck: passes HandlerData (DispatcherContext + 0x38) in r8 to
# __GSHandlerCheckCommon, which reads the GS_HANDLER_DATA (a cookie offset whose low
# three bits are flags, then with UNW_GS_FLAG_HAS_ALIGNMENT an aligned base offset and
# an alignment) and tail-calls __security_check_cookie. Both are matched, since the
# callee is what reads the data; runtime versions differ in how the callee masks the
# frame offset it reads from the unwind info (not the handler data).
_GS_HANDLER_CHECK = CodeShape.of_bytes(
    "4883ec28 4d8b4138 488bca 498bd1 e8???????? b801000000 4883c428 c3"
)
_GS_CALL = 14  # offset of the call to __GSHandlerCheckCommon
_GS_COMMON_DATA = (
    "4053 458b18 488bda 4183e3f8 4c8bc9 41f60004 4c8bd1 7413 418b4008 4d635004 f7d8"
    "4c03d1 4863c8 4c23d1 4963c3 4a8b1410 488b4310 8b4808 488b4308 f64401030f"
)
_GS_HANDLER_CHECK_COMMON = (
    CodeShape.of_bytes(
        _GS_COMMON_DATA + "7410 0fb6440103 b9f0ffffff 4823c1 4c03c8 4c33ca 498bc9 5b e9????????"
    ),
    CodeShape.of_bytes(
        _GS_COMMON_DATA + "740b 0fb6440103 83e0f0 4c03c8 4c33ca 498bc9 5b e9????????"
    ),
)

_RETURNS = frozenset({"ret", "retf", "retfq", "iretq", "iretd", "iret"})


def _entry_points(decoder: capstone.Cs) -> tuple[int, ...]:
    """What the C core needs to decode through ``decoder``'s capstone handle: the
    handle, cs_disasm_iter, cs_malloc and cs_free, and where a cs_insn holds its
    size, mnemonic and operand text (capstone's own declaration of the structure).
    Valid as long as ``decoder`` lives: its owner keeps both."""
    library = capstone._cs
    insn = capstone._cs_insn

    def address(function: object) -> int:
        return ctypes.cast(function, ctypes.c_void_p).value or 0  # type: ignore[arg-type]

    return (
        decoder.csh.value,
        address(library.cs_disasm_iter),
        address(library.cs_malloc),
        address(library.cs_free),
        insn.size.offset,
        insn.mnemonic.offset,
        insn.op_str.offset,
    )


class X64(Arch):
    """The AMD64 architecture."""

    machine = Machine.AMD64
    name = "x64"
    instruction_alignment = 1
    pdata_entry_size = 12
    pdata_end_field = 4  # BeginAddress, EndAddress, UnwindData
    pdata_unwind_field = 8
    rva_fixup = Fixup.X64_ADDR32NB
    pointer_fixup = Fixup.X64_ADDR64
    unwind_format = UnwindFormat.UNWIND_INFO
    return_instruction = b"\xc3"  # ret
    trap_instruction = b"\xcc"  # int3
    hybrid_name = "ARM64EC"
    data_by_page = False  # RIP-relative: any byte
    region_reach = (1 << 31) - 64  # rel32, less a margin
    redirect_size = 5  # jmp rel32
    two_stage_padding = 5  # jmp rel32 before the function, then jmp -7 at its entry
    two_stage_entry = 2

    def __init__(self) -> None:
        self._cs_lite = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs_detail = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs_detail.detail = True
        # Handles of their own for the C core's extent walk, which decodes through one
        # without the GIL: one per thread, as capstone is thread-safe only so.
        self._extent_handles = threading.local()

    @property
    def _extent_decoder(self) -> tuple[int, ...]:
        """The C core's entry points into this thread's capstone handle for the walk."""
        handles = self._extent_handles
        try:
            return handles.decoder
        except AttributeError:
            handles.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            handles.decoder = _entry_points(handles.cs)
            return handles.decoder

    # .pdata -------------------------------------------------------------

    def _prolog_shape(self, read: ReadRva, unwind_rva: int) -> tuple[int, int]:
        """(SizeOfProlog, CountOfCodes) of the unwind info at ``unwind_rva``."""
        if unwind_rva & RUNTIME_FUNCTION_INDIRECT:
            return -1, -1
        header = read(unwind_rva, 4)
        return header[1], header[2]

    def _chain_root(self, read: ReadRva, unwind_rva: int, begin_rva: int) -> tuple[int, int] | None:
        """Follow UNW_FLAG_CHAININFO links to the primary entry; (begin, end) or None if primary."""
        root: tuple[int, int] | None = None
        seen: set[int] = set()
        while True:
            if unwind_rva & RUNTIME_FUNCTION_INDIRECT:
                begin, end, unwind_rva = _RUNTIME_FUNCTION.unpack(read(unwind_rva & ~1, 12))
                root = (begin, end)
            else:
                header = read(unwind_rva, 4)
                version, flags, count = header[0] & 7, header[0] >> 3, header[2]
                if version not in (1, 2):
                    raise ImageFormatError(
                        f"unwind info at rva 0x{unwind_rva:x} (function 0x{begin_rva:x}) "
                        f"has unknown version {version}"
                    )
                if not flags & UNW_FLAG_CHAININFO:
                    return root
                chained_at = unwind_rva + 4 + 2 * (count + (count & 1))
                begin, end, unwind_rva = _RUNTIME_FUNCTION.unpack(read(chained_at, 12))
                root = (begin, end)
            if begin >= end:
                raise ImageFormatError(f"chained unwind info of function 0x{begin_rva:x} is empty")
            if unwind_rva in seen or len(seen) > _MAX_CHAIN_DEPTH:
                raise ImageFormatError(f"unwind info chain of function 0x{begin_rva:x} loops")
            seen.add(unwind_rva)

    def decode_unwind_entries(self, pdata: bytes, read: ReadRva) -> list[UnwindEntry]:
        entries: list[UnwindEntry] = []
        for begin, end, unwind_rva in _RUNTIME_FUNCTION.iter_unpack(pdata[: len(pdata) // 12 * 12]):
            if begin == 0 and end == 0 and unwind_rva == 0:
                continue  # zero padding at the end of the table
            if begin >= end:
                raise ImageFormatError(f".pdata entry 0x{begin:x}..0x{end:x} is empty or inverted")
            root = self._chain_root(read, unwind_rva, begin)
            prolog_size, code_count = self._prolog_shape(read, unwind_rva)
            # No prolog but unwind codes: every code applies from the first byte, so
            # the code runs inside another function's frame (gcc's ``.cold`` parts).
            continuation = root is None and prolog_size == 0 and code_count > 0
            entries.append(
                UnwindEntry(
                    begin_rva=begin,
                    end_rva=end,
                    unwind_rva=unwind_rva & ~RUNTIME_FUNCTION_INDIRECT,
                    is_fragment=root is not None or continuation,
                    parent_rva=root[0] if root is not None else None,
                    frameless=root is None and prolog_size == 0 and code_count == 0,
                )
            )
        return entries

    # code ---------------------------------------------------------------

    def scan_sites(
        self, code: bytes | memoryview, code_rva: int, lo_rva: int, hi_rva: int
    ) -> SiteColumns:
        return SiteColumns(*core.scan_x64_sites(code, code_rva, lo_rva, hi_rva))

    def normalise(
        self,
        code: bytes,
        code_rva: int,
        own_range: tuple[int, int],
        relocated: bytes,
        image_base: int,
    ) -> NormalisedCode:
        return NormalisedCode.from_core(
            core.normalise_x64(code, code_rva, own_range[0], own_range[1], relocated, image_base)
        )

    def reference_sites(self, code: bytes, code_rva: int) -> list[int]:
        _, references, _ = core.normalise_x64(code, code_rva, code_rva, code_rva, b"", 0)
        return [site for site, _, _ in references]

    def instruction_texts(self, code: bytes, code_rva: int) -> list[tuple[int, int, str]]:
        texts = []
        for address, size, mnemonic, operands in self._cs_lite.disasm_lite(code, code_rva):
            # Addresses that only follow the code's own placement are left out.
            if mnemonic.startswith(_BRANCHES):
                operands = "target" if operands.startswith("0x") else operands
            elif "rip" in operands:
                operands = _RIP_DISPLACEMENT.sub("rip", operands)
            texts.append((address - code_rva, size, f"{mnemonic} {operands}"))
        return texts

    def image_base_registers(self, code: bytes, code_rva: int) -> frozenset[int]:
        # The scanner's address sites aimed at RVA 0: lea r64, [rip + disp32], a REX.W
        # prefix (R for r8-r15), 8D, then the ModRM byte naming the register.
        sites, _, kinds = self.scan_sites(code, code_rva, 0, 1)
        found = set()
        for site, kind in zip(sites, kinds, strict=True):
            if kind == SiteKind.ADDRESS:
                rex, modrm = code[site - code_rva], code[site - code_rva + 2]
                found.add(_REG64[(rex & 4) << 1 | (modrm >> 3 & 7)])
        return frozenset(found)

    def field_offsets(
        self, code: bytes, code_rva: int, image_bases: frozenset[int] = frozenset()
    ) -> list[tuple[str, tuple[int, ...]]]:
        found = []
        for insn in self._cs_detail.disasm(code, code_rva):
            branch = insn.group(x86_const.X86_GRP_JUMP) or insn.group(x86_const.X86_GRP_CALL)
            shape, offsets = [insn.mnemonic], []
            for operand in insn.operands:
                if operand.type == x86_const.X86_OP_REG:
                    shape.append(insn.reg_name(operand.reg))
                elif operand.type == x86_const.X86_OP_IMM:
                    shape.append("target" if branch else str(operand.imm))
                elif operand.type == x86_const.X86_OP_MEM:
                    mem = operand.mem
                    base = mem.base
                    parts = [str(base), str(mem.index), str(mem.scale), str(operand.size)]
                    if base in (x86_const.X86_REG_RIP, 0) and mem.index == 0:
                        parts.append("address")
                    elif base in image_bases or (mem.index in image_bases and mem.scale == 1):
                        parts.append("image")  # an RVA from the image base
                    elif base in _FRAME_REGISTERS or base == 0:
                        parts.append(str(mem.disp))
                    else:
                        parts.append("field")
                        offsets.append(mem.disp)
                    shape.append("[" + ",".join(parts) + "]")
            found.append((" ".join(shape), tuple(offsets)))
        return found

    def access_size(self, read: ReadRva, site_rva: int) -> int | None:
        try:
            code = read(site_rva, 15)
        except ImageFormatError:
            return None
        decoder = self._cs_detail
        for insn in decoder.disasm(code, site_rva, 1):
            if insn.id == x86_const.X86_INS_LEA:
                return None
            for operand in insn.operands:
                if (
                    operand.type == x86_const.X86_OP_MEM
                    and operand.mem.base == x86_const.X86_REG_RIP
                ):
                    return operand.size or None
        return None

    def canonical_code(self, normalised: NormalisedCode, code_rva: int) -> bytes:
        # The masked short forms (EB rel8, 7x rel8) become their near forms (E9 rel32,
        # 0F 8x rel32); their displacements are zero either way.
        code = normalised.code
        pieces = []
        position = 0
        for reference in normalised.references:
            if reference.kind != RefKind.BRANCH:
                continue
            offset = reference.site_rva - code_rva
            if not 0 <= offset < len(code) or offset < position:
                continue
            opcode = code[offset]
            if opcode == 0xEB:
                near = b"\xe9\0\0\0\0"
            elif 0x70 <= opcode <= 0x7F:
                near = bytes((0x0F, opcode + 0x10)) + bytes(4)
            else:
                continue
            pieces += [code[position:offset], near]
            position = offset + 2
        if not pieces:
            return code
        pieces.append(code[position:])
        return b"".join(pieces)

    def code_extent(
        self, read: ReadRva, start_rva: int, bound_rva: int, roots: Sequence[int] = ()
    ) -> int | None:
        bound_rva = min(bound_rva, start_rva + _MAX_EXTENT_BYTES)
        if bound_rva <= start_rva:
            return None
        code = read(start_rva, bound_rva - start_rva)
        return core.x64_code_extent(code, start_rva, roots, self._extent_decoder)

    def instruction_starts(self, read: ReadRva, start_rva: int, end_rva: int) -> frozenset[int]:
        code = read(start_rva, end_rva - start_rva)
        return frozenset(address for address, _, _, _ in self._cs_lite.disasm_lite(code, start_rva))

    def import_thunk(self, read: ReadRva, rva: int) -> tuple[int, int] | None:
        code = read(rva, 6)
        if code[:2] != b"\xff\x25":
            return None
        return 6, rva + 6 + struct.unpack_from("<i", code, 2)[0]

    def falls_through(self, read: ReadRva, start_rva: int, end_rva: int) -> bool:
        code = read(start_rva, end_rva - start_rva)
        last = None
        position = start_rva
        for address, size, mnemonic, _ in self._cs_lite.disasm_lite(code, start_rva):
            last, position = mnemonic, address + size
        if last is None or position != end_rva:
            return False  # no clean decode up to the end: claim nothing
        return last not in _RETURNS and last not in ("jmp", "call", "int3", "ud2", "hlt")

    def last_instruction_end(self, read: ReadRva, start_rva: int, end_rva: int) -> int:
        last = start_rva
        code = read(start_rva, end_rva - start_rva)
        for address, size, mnemonic, _ in self._cs_lite.disasm_lite(code, start_rva):
            if mnemonic not in ("nop", "int3"):
                last = address + size
        return last

    def load_size(self, read: ReadRva, site_rva: int) -> int:
        return 0  # the x64 scanner reports no LOAD sites: its constants live in data sections

    def padding_length(self, data: bytes | memoryview, offset: int) -> int:
        return core.x64_padding_length(data, offset)

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
        return x64_code_fixups(
            code, code_rva, instructions, own_range, relocated, image_base, short_branches
        )

    def veneer(self) -> tuple[bytes, int, Fixup]:
        return b"\xe9" + bytes(4), 1, Fixup.X64_REL32  # jmp rel32

    def veneer_target(self, code: bytes, va: int) -> int | None:
        if len(code) < 5 or code[0] != 0xE9:
            return None
        return va + 5 + struct.unpack_from("<i", code, 1)[0]

    def unwind_record_size(self, read: ReadRva, unwind_rva: int) -> tuple[int, bool, int | None]:
        flags_version, _prolog, count, _frame = read(unwind_rva, 4)
        flags = flags_version >> 3
        size = 4 + 2 * ((count + 1) & ~1)
        if flags & UNW_FLAG_CHAININFO:
            return size + _RUNTIME_FUNCTION.size, False, unwind_rva + size
        return size, bool(flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER)), None

    def gs_handler_check_at(self, read: ReadRva, rva: int) -> bool:
        if not _GS_HANDLER_CHECK.matches(read, rva):
            return False
        (displacement,) = struct.unpack("<i", read(rva + _GS_CALL + 1, 4))
        callee = rva + _GS_CALL + 5 + displacement
        return any(shape.matches(read, callee) for shape in _GS_HANDLER_CHECK_COMMON)

    def gs_handler_data_size(self, read: ReadRva, data_rva: int) -> int:
        (cookie_offset,) = struct.unpack("<I", read(data_rva, 4))
        return 12 if cookie_offset & UNW_GS_FLAG_HAS_ALIGNMENT else 4

    def predict_sites(self, code: bytes) -> list[tuple[int, Fixup]]:
        return predict_x64(code)

    def redirect_strategy(
        self, room: int, padding_before: int, first_instruction: int
    ) -> Redirect | None:
        if room >= Redirect.X64_JMP_REL32.span[1]:
            return Redirect.X64_JMP_REL32
        if padding_before >= self.two_stage_padding and first_instruction >= self.two_stage_entry:
            return Redirect.X64_TWO_STAGE
        return None

    def disassemble(self, code: bytes, va: int) -> tuple[int, str]:
        for _, size, mnemonic, op_str in self._cs_lite.disasm_lite(code, va, 1):
            return size, f"{mnemonic} {op_str}".strip()
        return 0, "(bad)"
