"""capstone's x64 decode with details, read straight from the C structures it fills.

The relocator reads a few fields of every instruction of the code it carries: the
encoding's offsets and sizes, the operands, whether it calls or jumps. Through
capstone's Python objects each instruction costs a copy of its detail and a Python
object per operand (15 microseconds); here one ``cs_disasm`` call decodes the code and
the fields are unpacked from the structures it returns, at the offsets capstone's own
ctypes declarations give. The decoder is capstone's either way: the relocator stays
independent of the C core's table decoder.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator
from typing import NamedTuple

import capstone
from capstone import x86 as capstone_x86

from hpatch.arch import x64_decode
from hpatch.arch.x64_decode import x64_decoder

_INSN = capstone._cs_insn
_DETAIL = capstone._cs_detail
_X86 = capstone_x86.CsX86
_OP = capstone_x86.X86Op
_VALUE = _OP.value.offset
_MEM = capstone_x86.X86OpMem

_INSN_SIZE = ctypes.sizeof(_INSN)
_ID, _ADDRESS, _SIZE, _DETAIL_POINTER, _MNEMONIC = (
    _INSN.id.offset,
    _INSN.address.offset,
    _INSN.size.offset,
    _INSN.detail.offset,
    _INSN.mnemonic.offset,
)
_X86_AT = _DETAIL.arch.offset
_GROUPS, _GROUPS_COUNT = _DETAIL.groups.offset, _DETAIL.groups_count.offset
_OP_COUNT = _X86_AT + _X86.op_count.offset
_OPERANDS = _X86_AT + _X86.operands.offset
_ENCODING = _X86_AT + _X86.encoding.offset
_MODRM_AT, _DISP_SIZE_AT, _IMM_OFFSET_AT, _IMM_SIZE_AT = (
    _ENCODING + capstone_x86.CsX86Encoding.__dict__[name].offset
    for name in ("modrm_offset", "disp_size", "imm_offset", "imm_size")
)
_DETAIL_SPAN = _X86_AT + ctypes.sizeof(_X86)
_OP_SIZE = ctypes.sizeof(_OP)
_OP_TYPE, _OP_BYTES = _OP.type.offset, _OP.size.offset
_OP_REG = _OP_IMM = _VALUE
_OP_BASE, _OP_INDEX, _OP_DISP = (
    _VALUE + _MEM.base.offset,
    _VALUE + _MEM.index.offset,
    _VALUE + _MEM.disp.offset,
)
_U16, _U32, _I64, _U64 = (struct.Struct(f"<{code}") for code in "HIqQ")


class Operand(NamedTuple):
    """An operand as capstone decodes it: its type (``X86_OP_*``), register, immediate,
    memory base, index and displacement (those its type has; zero otherwise), size."""

    type: int
    reg: int
    imm: int
    base: int
    index_register: int
    disp: int
    size: int


class Decoded(NamedTuple):
    """One instruction: where it is, capstone's id and mnemonic, where its ModRM byte,
    displacement (size as capstone says) and immediate lie, whether capstone groups it
    with calls or jumps, and its operands."""

    address: int
    size: int
    id: int
    mnemonic: str
    modrm_offset: int
    disp_size: int
    imm_offset: int
    imm_size: int
    call: bool
    jump: bool
    operands: tuple[Operand, ...]


def decode(code: bytes, address: int, *, all_operands: bool = True) -> Iterator[Decoded]:
    """The instructions of ``code`` at ``address``, up to the first byte capstone cannot
    decode (as ``Cs.disasm`` stops there). Without ``all_operands``, an instruction that
    names no address (no immediate, no displacement, no memory operand in its ModRM,
    neither a call nor a jump) is given without its operands.

    capstone fills a detail of about 2 KiB for every instruction of a call: the code is
    decoded a piece at a time (``x64_decode.in_pieces``), so that a megabyte of one-byte
    instructions costs megabytes, not gigabytes; and the instructions are given as they
    are decoded."""
    return x64_decode.in_pieces(
        lambda piece, piece_address: _decode_piece(piece, piece_address, all_operands),
        code,
        address,
    )


def _decode_piece(code: bytes, address: int, all_operands: bool) -> list[Decoded]:
    decoder = x64_decoder()
    first = ctypes.POINTER(_INSN)()
    count = capstone._cs.cs_disasm(decoder.csh, code, len(code), address, 0, ctypes.byref(first))
    if count == 0:
        return []
    try:
        raw = ctypes.string_at(first, count * _INSN_SIZE)
        return [
            _one(code, address, raw, index * _INSN_SIZE, all_operands) for index in range(count)
        ]
    finally:
        capstone._cs.cs_free(first, count)


def _one(code: bytes, code_address: int, raw: bytes, at: int, all_operands: bool) -> Decoded:
    (pointer,) = _U64.unpack_from(raw, at + _DETAIL_POINTER)
    (address,) = _U64.unpack_from(raw, at + _ADDRESS)
    detail = ctypes.string_at(pointer, _DETAIL_SPAN)
    groups = detail[_GROUPS : _GROUPS + detail[_GROUPS_COUNT]]
    modrm, disp_size = detail[_MODRM_AT], detail[_DISP_SIZE_AT]
    imm_offset, imm_size = detail[_IMM_OFFSET_AT], detail[_IMM_SIZE_AT]
    call, jump = capstone.CS_GRP_CALL in groups, capstone.CS_GRP_JUMP in groups
    count = detail[_OP_COUNT]
    names_nothing = not (all_operands or imm_size or disp_size or call or jump)
    # no ModRM byte, or one of mod 3: register operands only
    if names_nothing and (not modrm or code[address - code_address + modrm] >> 6 == 3):
        count = 0
    operands = []
    for index in range(count):
        op = _OPERANDS + index * _OP_SIZE
        kind = _U32.unpack_from(detail, op + _OP_TYPE)[0]
        if kind == capstone_x86.X86_OP_MEM:
            operand = Operand(
                kind,
                0,
                0,
                _U32.unpack_from(detail, op + _OP_BASE)[0],
                _U32.unpack_from(detail, op + _OP_INDEX)[0],
                _I64.unpack_from(detail, op + _OP_DISP)[0],
                detail[op + _OP_BYTES],
            )
        elif kind == capstone_x86.X86_OP_IMM:
            imm = _I64.unpack_from(detail, op + _OP_IMM)[0]
            operand = Operand(kind, 0, imm, 0, 0, 0, detail[op + _OP_BYTES])
        else:
            reg = _U32.unpack_from(detail, op + _OP_REG)[0]
            operand = Operand(kind, reg, 0, 0, 0, 0, detail[op + _OP_BYTES])
        operands.append(operand)
    mnemonic = raw[at + _MNEMONIC : at + _MNEMONIC + 32].split(b"\0", 1)[0]
    return Decoded(
        address,
        _U16.unpack_from(raw, at + _SIZE)[0],
        _U32.unpack_from(raw, at + _ID)[0],
        mnemonic.decode("ascii", "replace"),
        modrm,
        disp_size,
        imm_offset,
        imm_size,
        call,
        jump,
        tuple(operands),
    )
