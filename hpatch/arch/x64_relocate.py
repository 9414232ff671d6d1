"""x64: find every field of a piece of code that must be rebound when it is copied.

An independent decoder (capstone) from the one that fingerprints (the C table
decoder): the package builder checks the two agree on every reference.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Sequence

from capstone import x86_const

from hpatch.arch.relocate import CodeFixup, RelocationError, ShortBranch
from hpatch.arch.rewrite import X64_REL32_BY_TRAILER, Fixup
from hpatch.arch.x64_decode import LOOP_BRANCHES, displacement_size, loads_image_base
from hpatch.arch.x64_detail import Decoded, decode


def x64_code_fixups(
    code: bytes,
    code_rva: int,
    instructions: Sequence[tuple[int, int]],
    own_range: tuple[int, int],
    relocated: Sequence[int],
    image_base: int,
    short_branches: list[ShortBranch] | None = None,
) -> list[CodeFixup]:
    """The fields of ``code`` (at ``code_rva``) to rebind when it is copied elsewhere.

    ``instructions`` are the [start, end) RVA ranges holding instructions; the rest of
    ``code`` is data, of which only relocated fields are fixed up (the caller adds the
    jump-table entries it knows about). Branches and RIP-relative operands that leave
    ``own_range`` are fixed up, as is every relocated field. A rel8 branch leaving the
    code is appended to ``short_branches`` when it is given (the caller sends it through
    a veneer). RelocationError if an instruction cannot be decoded or a reference cannot
    be rebound (a rel8 branch leaving the code, without ``short_branches``).
    """
    scan = _Scan(code, code_rva, own_range, relocated, image_base, short_branches)
    for start, end in instructions:
        position = start
        chunk = code[start - code_rva : end - code_rva]
        for insn in decode(chunk, start, all_operands=False):
            if insn.address != position:
                break
            position = insn.address + insn.size
            scan.instruction(insn)
        if position != end:
            raise RelocationError(f"undecodable instruction at 0x{position:x}")
    for rva in sorted(scan.relocated - scan.covered):
        inside_code = any(start - 8 < rva < end for start, end in instructions)
        if inside_code or rva + 8 > code_rva + len(code):
            raise RelocationError(
                f"a relocated field at 0x{rva:x} is not an operand hpatch can rebind"
            )
        scan.absolute(rva, rva)
    return sorted(scan.fixups)


class _Scan:
    """The fixups of one piece of code, instruction by instruction."""

    def __init__(
        self,
        code: bytes,
        code_rva: int,
        own_range: tuple[int, int],
        relocated: Sequence[int],
        image_base: int,
        short_branches: list[ShortBranch] | None,
    ) -> None:
        self.code, self.code_rva, self.image_base = code, code_rva, image_base
        self.short_branches = short_branches
        self.lo, self.hi = own_range
        low = bisect.bisect_left(relocated, code_rva)
        high = bisect.bisect_left(relocated, code_rva + len(code))
        self.relocated = set(relocated[low:high])
        self.covered: set[int] = set()
        self.base_registers: set[int] = set()
        self.fixups: list[CodeFixup] = []

    def absolute(self, field: int, site: int) -> None:
        (value,) = struct.unpack_from("<Q", self.code, field - self.code_rva)
        self.fixups.append(CodeFixup(field, Fixup.X64_ADDR64, value - self.image_base, site))
        self.covered.add(field)

    def instruction(self, insn: Decoded) -> None:
        position = insn.address + insn.size
        imm_rva = insn.address + insn.imm_offset
        encoding = self.code[insn.address - self.code_rva : position - self.code_rva]
        disp_size = displacement_size(encoding, insn.modrm_offset, insn.disp_size)
        disp_rva = position - insn.imm_size - disp_size
        if insn.imm_size == 8 and imm_rva in self.relocated:
            self.absolute(imm_rva, insn.address)
            return
        memory = [o for o in insn.operands if o.type == x86_const.X86_OP_MEM]
        if disp_size == 8 and memory and disp_rva in self.relocated:  # mov moffs64
            self.absolute(disp_rva, insn.address)
            return
        is_call = insn.call
        is_jump = insn.jump or insn.id in LOOP_BRANCHES
        if insn.imm_size and (is_call or is_jump) and insn.operands[0].type == x86_const.X86_OP_IMM:
            target = insn.operands[0].imm
            if self.lo <= target < self.hi:
                return
            if insn.imm_size == 1 and imm_rva + 1 == position and self.short_branches is not None:
                self.short_branches.append(ShortBranch(imm_rva, 1, target, insn.address))
                return
            if insn.imm_size != 4 or imm_rva + 4 != position:
                raise RelocationError(
                    f"the {insn.imm_size * 8}-bit branch at 0x{insn.address:x} "
                    f"({insn.mnemonic} 0x{target:x}) leaves the code and cannot reach a copy"
                )
            self.fixups.append(CodeFixup(imm_rva, Fixup.X64_REL32, target, insn.address))
            return
        if not memory or not disp_size:
            return
        operand = memory[0]
        if operand.base == x86_const.X86_REG_RIP:
            target = position + operand.disp
            if loads_image_base(insn, target):
                self.base_registers.add(insn.operands[0].reg)
            if self.lo <= target < self.hi:
                return
            trailer = position - (disp_rva + 4)
            if disp_size != 4 or not 0 <= trailer < len(X64_REL32_BY_TRAILER):
                raise RelocationError(f"unexpected RIP-relative form at 0x{insn.address:x}")
            self.fixups.append(
                CodeFixup(disp_rva, X64_REL32_BY_TRAILER[trailer], target, insn.address)
            )
        elif operand.base in self.base_registers and disp_size == 4:
            self.fixups.append(
                CodeFixup(disp_rva, Fixup.X64_ADDR32NB, operand.disp & 0xFFFFFFFF, insn.address)
            )
