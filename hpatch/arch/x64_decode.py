"""x64 decoding helpers on capstone that more than one decoder needs: the relocator
(arch/x64_relocate.py) and the C core's pure-Python twin (hpatch/_fallback/scan.py) read
displacements, loop branches and image-base loads the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from typing import Any, Protocol, TypeVar

import capstone
from capstone import x86_const

# capstone leaves these rel8 branches out of its jump group.
LOOP_BRANCHES = frozenset(
    {
        x86_const.X86_INS_LOOP,
        x86_const.X86_INS_LOOPE,
        x86_const.X86_INS_LOOPNE,
        x86_const.X86_INS_JRCXZ,
        x86_const.X86_INS_JECXZ,
    }
)


_T = TypeVar("_T", bound="_Located")

#: Bytes of code one capstone call decodes (it fills a detail of about 2 KiB for every
#: instruction of a call), and the longest x64 instruction.
PIECE = 4096
LONGEST = 15


class _Located(Protocol):
    @property
    def address(self) -> int: ...
    @property
    def size(self) -> int: ...


def in_pieces(
    decode: Callable[[bytes, int], Iterable[_T]], code: bytes, address: int
) -> Iterator[_T]:
    """The instructions ``decode(code, address)`` gives, ``decode`` called on a piece of
    ``PIECE`` bytes at a time, each from where the last one's last instruction ended:
    the same instructions, with capstone's memory bounded by the piece rather than by
    the code."""
    at = 0
    while at < len(code):
        piece = code[at : at + PIECE]
        end = at
        for insn in decode(piece, address + at):
            end = insn.address + insn.size - address
            yield insn
        if end == at or at + len(piece) >= len(code) or end <= at + len(piece) - LONGEST:
            return  # nothing decoded, the code's end, or a byte that starts no instruction
        at = end  # an instruction the piece's end cut off starts the next piece


def disasm_in_pieces(decoder: capstone.Cs, code: bytes, address: int) -> Iterator[Any]:
    """``decoder.disasm(code, address)``, a piece at a time (``in_pieces``)."""
    return in_pieces(decoder.disasm, code, address)


@cache
def x64_decoder() -> capstone.Cs:
    """A capstone x64 decoder with instruction details (one per process)."""
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoder.detail = True
    return decoder


class _Operand(Protocol):
    @property
    def type(self) -> int: ...
    @property
    def size(self) -> int: ...


class _Instruction(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def operands(self) -> Sequence[_Operand]: ...


def loads_image_base(insn: _Instruction, target_rva: int) -> bool:
    """``lea reg64, [rip+disp]`` aimed at RVA 0: the image base, which MSVC jump tables
    and RVA tables are indexed from. ``insn``: capstone's, or as x64_detail decodes it."""
    destination = insn.operands[0]
    return (
        target_rva == 0
        and insn.id == x86_const.X86_INS_LEA
        and destination.type == x86_const.X86_OP_REG
        and destination.size == 8
    )


def displacement_size(encoding: bytes, modrm_offset: int, reported: int) -> int:
    """Bytes of displacement, from the ModRM/SIB bytes themselves.

    capstone's disp_size follows the operand-size prefix (it says 2 for the disp32 of
    ``66 0F 6E 05 ...``); the encoding decides. Without a ModRM byte (mov moffs) its
    report stands.
    """
    if not modrm_offset:
        return reported
    modrm = encoding[modrm_offset]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 0
    if mod == 1:
        return 1
    if mod == 2:
        return 4
    if rm == 5:
        return 4
    # MOV to or from CR/DR (0F 20-23) ignores mod: no SIB byte follows an rm of 4.
    if rm == 4 and modrm_offset + 1 < len(encoding) and (encoding[modrm_offset + 1] & 7) == 5:
        return 4
    return 0
