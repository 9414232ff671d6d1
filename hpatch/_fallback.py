"""Pure-Python twins of every function in ``hpatch._native``.

Same signatures, same results, same errors; the parity tests hold them to it.
"""

from __future__ import annotations

import bisect
import operator
import re
import struct
from functools import cache

import capstone
from capstone import x86_const

from hpatch._fallback_rewrite import apply_fixups, encode_redirect  # noqa: F401

SITE_CALL, SITE_JUMP, SITE_COND_JUMP, SITE_ADDRESS, SITE_LOAD = 1, 2, 3, 4, 5
REF_CALL, REF_BRANCH, REF_DATA, REF_ABSOLUTE, REF_IMAGE_RVA = 1, 2, 3, 4, 5
REF_ADDRESS, REF_LITERAL = 6, 7
_RVA_LIMIT = 0xFFFFFFFF

# Zero-width lookahead so that every byte offset is a candidate, exactly as the C loop.
_X64_SITE = re.compile(rb"(?=[\xe8\xe9]|\x0f[\x80-\x8f]|[\x48-\x4f]\x8d)", re.DOTALL)
_I32 = struct.Struct("<i")


def _check_rvas(code_rva: int, lo_rva: int, hi_rva: int, length: int) -> None:
    for value, limit in (
        (code_rva, _RVA_LIMIT),
        (lo_rva, _RVA_LIMIT + 1),
        (hi_rva, _RVA_LIMIT + 1),
    ):
        if not 0 <= value <= limit:
            raise ValueError("rva out of range")
    if code_rva + length > _RVA_LIMIT + 1:
        raise ValueError("code extends past the 32-bit rva space")


def scan_x64_sites(
    code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /
) -> list[tuple[int, int, int]]:
    """Byte-level scan of x64 code for rel32 branch and RIP-relative LEA sites."""
    view = memoryview(code).cast("B")
    _check_rvas(code_rva, lo_rva, hi_rva, len(view))
    data = bytes(view)
    length = len(data)
    unpack = _I32.unpack_from
    sites: list[tuple[int, int, int]] = []
    for match in _X64_SITE.finditer(data):
        i = match.start()
        b = data[i]
        site = code_rva + i
        if b in (0xE8, 0xE9):
            if i + 5 <= length:
                target = site + 5 + unpack(data, i + 1)[0]
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_CALL if b == 0xE8 else SITE_JUMP))
        elif b == 0x0F:
            if i + 6 <= length:
                target = site + 6 + unpack(data, i + 2)[0]
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_COND_JUMP))
        elif i + 7 <= length and (data[i + 2] & 0xC7) == 0x05:
            target = site + 7 + unpack(data, i + 3)[0]
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_ADDRESS))
    return sites


def _sign_extend(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value ^ sign) - sign


def scan_arm64_sites(
    code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /
) -> list[tuple[int, int, int]]:
    """Word-level scan of ARM64 code for branches, ADR/ADRP+ADD addresses and literal loads."""
    view = memoryview(code).cast("B")
    _check_rvas(code_rva, lo_rva, hi_rva, len(view))
    if code_rva % 4:
        raise ValueError("code_rva must be 4-aligned")
    count = len(view) // 4
    words = struct.unpack_from(f"<{count}I", view)
    sites: list[tuple[int, int, int]] = []
    for w, insn in enumerate(words):
        top = insn & 0xFC000000
        site = code_rva + 4 * w
        if top in (0x94000000, 0x14000000):
            target = site + 4 * _sign_extend(insn & 0x03FFFFFF, 26)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_CALL if top == 0x94000000 else SITE_JUMP))
        elif (insn & 0xFF000010) == 0x54000000 or (insn & 0x7E000000) == 0x34000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x7E000000) == 0x36000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x3FFF, 14)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x3B000000) == 0x18000000 and (insn & 0xC4000000) != 0xC0000000:
            target = site + 4 * _sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_LOAD))
        elif (insn & 0x9F000000) == 0x10000000:
            target = site + _sign_extend((((insn >> 5) & 0x7FFFF) << 2) | ((insn >> 29) & 3), 21)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_ADDRESS))
        elif (insn & 0x9F000000) == 0x90000000 and w + 1 < count:
            nxt = words[w + 1]
            if (nxt & 0xFFC00000) == 0x91000000 and ((nxt >> 5) & 0x1F) == (insn & 0x1F):
                pages = _sign_extend((((insn >> 5) & 0x7FFFF) << 2) | ((insn >> 29) & 3), 21)
                target = (site & ~0xFFF) + pages * 4096 + ((nxt >> 10) & 0xFFF)
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_ADDRESS))
    return sites


def _loads_image_base(insn: capstone.CsInsn, target_rva: int) -> bool:
    """``lea reg64, [rip+disp]`` aimed at RVA 0: the image base, which MSVC jump tables
    and RVA tables are indexed from."""
    destination = insn.operands[0]
    return (
        target_rva == 0
        and insn.id == x86_const.X86_INS_LEA
        and destination.type == x86_const.X86_OP_REG
        and destination.size == 8
    )


def _displacement_size(encoding: bytes, modrm_offset: int, reported: int) -> int:
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


# capstone leaves these rel8 branches out of its jump group.
_LOOPS = frozenset(
    {
        x86_const.X86_INS_LOOP,
        x86_const.X86_INS_LOOPE,
        x86_const.X86_INS_LOOPNE,
        x86_const.X86_INS_JRCXZ,
        x86_const.X86_INS_JECXZ,
    }
)


@cache
def _x64_decoder() -> capstone.Cs:
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    decoder.detail = True
    return decoder


def normalise_x64(
    code: bytes,
    code_rva: int,
    lo_rva: int,
    hi_rva: int,
    relocated: bytes,
    image_base: int,
    /,
) -> tuple[bytes, list[tuple[int, int, int]], int]:
    """Mask the position-dependent fields of x64 code at code_rva.

    A relocated 64-bit immediate or absolute offset (movabs, mov moffs) becomes an
    ABSOLUTE reference (as an RVA); a rel8/rel32 branch or call out of [lo, hi) a
    BRANCH/CALL reference; a RIP-relative operand whose target is outside [lo, hi) a
    DATA reference (a 64-bit ``lea reg, [rip + d]`` reaching RVA 0 marks ``reg`` as
    holding __ImageBase); a 32-bit displacement on such a base register an IMAGE_RVA
    reference. Masked fields become zero bytes.
    """
    view = memoryview(relocated).cast("B")
    if len(view) % 4:
        raise ValueError("relocated must hold uint32 values")
    if code_rva < 0 or code_rva + len(code) > 0x100000000:
        raise ValueError("rva out of range")
    fields = view.cast("I")
    data = bytes(code)
    masked = bytearray(data)
    references: list[tuple[int, int, int]] = []
    base_registers: set[int] = set()
    count = 0

    def is_relocated(rva: int) -> bool:
        index = bisect.bisect_left(fields, rva)
        return index < len(fields) and fields[index] == rva

    def mask(site: int, field: int, size: int, kind: int, target: int) -> None:
        masked[field - code_rva : field - code_rva + size] = bytes(size)
        references.append((site, kind, target))

    for insn in _x64_decoder().disasm(data, code_rva):
        count += 1
        next_rva = insn.address + insn.size
        imm_rva = insn.address + insn.imm_offset
        disp_size = _displacement_size(insn.bytes, insn.modrm_offset, insn.disp_size)
        # The displacement is always encoded right before the immediate.
        disp_rva = insn.address + insn.size - insn.imm_size - disp_size
        if insn.imm_size == 8 and is_relocated(imm_rva):
            (value,) = struct.unpack_from("<Q", data, imm_rva - code_rva)
            mask(insn.address, imm_rva, 8, REF_ABSOLUTE, value - image_base)
            continue
        memory = [o for o in insn.operands if o.type == x86_const.X86_OP_MEM]
        if disp_size == 8 and memory and is_relocated(disp_rva):  # mov moffs64
            (value,) = struct.unpack_from("<Q", data, disp_rva - code_rva)
            mask(insn.address, disp_rva, 8, REF_ABSOLUTE, value - image_base)
            continue
        is_call = insn.group(capstone.CS_GRP_CALL)
        is_jump = insn.group(capstone.CS_GRP_JUMP) or insn.id in _LOOPS
        if insn.imm_size and (is_call or is_jump):
            operand = insn.operands[0]
            if operand.type == x86_const.X86_OP_IMM:
                if not lo_rva <= operand.imm < hi_rva:
                    kind = REF_CALL if is_call else REF_BRANCH
                    mask(insn.address, imm_rva, insn.imm_size, kind, operand.imm)
                continue
        if not memory or not disp_size:
            continue
        operand = memory[0]
        if operand.mem.base == x86_const.X86_REG_RIP:
            target = next_rva + operand.mem.disp
            if _loads_image_base(insn, target):
                base_registers.add(insn.operands[0].reg)
            if not lo_rva <= target < hi_rva:
                mask(insn.address, disp_rva, disp_size, REF_DATA, target)
        elif operand.mem.base in base_registers and disp_size == 4:
            mask(insn.address, disp_rva, 4, REF_IMAGE_RVA, operand.mem.disp & 0xFFFFFFFF)
    return bytes(masked), references, count


def _page_offset(word: int) -> int | None:
    """The byte offset a page-offset instruction adds to its base register, if it is one.

    ADD (immediate, 64-bit, no shift) and LDR/STR (unsigned immediate, scaled by the
    access size) complete an ADRP.
    """
    if (word & 0xFFC00000) == 0x91000000:
        return (word >> 10) & 0xFFF
    if (word & 0x3B000000) == 0x39000000:
        scale = word >> 30
        if word & 0x04000000 and (word >> 23) & 1:  # 128-bit vector register
            scale = 4
        return ((word >> 10) & 0xFFF) << scale
    return None


def _is_store(word: int) -> bool:
    """STR/STRB/STRH (unsigned immediate) and STP: the low register field is read, not written."""
    return (word & 0x3B400000) == 0x39000000 or (word & 0x3A400000) == 0x28000000


def normalise_arm64(
    code: bytes,
    code_rva: int,
    lo_rva: int,
    hi_rva: int,
    relocated: bytes,
    image_base: int,
    /,
) -> tuple[bytes, list[tuple[int, int, int]], int]:
    """Mask the position-dependent fields of ARM64 code at code_rva.

    A B/BL, B.cond, CBZ/CBNZ or TBZ/TBNZ whose target is outside [lo, hi) becomes a
    CALL (BL) or BRANCH reference; every ADR an ADDRESS reference to its target, every
    ADRP an ADDRESS reference to the page, or to the address of the first ADD/LDR/STR
    that completes it (each completion is an ADDRESS reference too); LDR (literal) a
    LITERAL reference. Masked fields become zero bits; a trailing partial word is kept.
    Instruction words hold no base-relocated fields: ``relocated`` and ``image_base``
    are checked and otherwise unused.
    """
    # Arguments are taken in order, then checked, as the C extension does.
    data = bytes(memoryview(code).cast("B"))
    code_rva, lo_rva, hi_rva = (operator.index(v) for v in (code_rva, lo_rva, hi_rva))
    fields = memoryview(relocated).cast("B")
    operator.index(image_base)
    if len(fields) % 4:
        raise ValueError("relocated must hold uint32 values")
    _check_rvas(code_rva, lo_rva, hi_rva, len(data))
    count = len(data) // 4
    words = list(struct.unpack_from(f"<{count}I", data))
    references: list[tuple[int, int, int]] = []
    # register -> (index in references of its ADRP, page address)
    pages: dict[int, tuple[int, int]] = {}
    completed: set[int] = set()
    for index, word in enumerate(words):
        rva = code_rva + 4 * index
        written = word & 0x1F
        if (word & 0x7C000000) == 0x14000000:  # B / BL imm26
            target = rva + 4 * _sign_extend(word & 0x03FFFFFF, 26)
            if not lo_rva <= target < hi_rva:
                words[index] = word & 0xFC000000
                references.append((rva, REF_CALL if word & 0x80000000 else REF_BRANCH, target))
            continue
        if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
            target = rva + 4 * _sign_extend((word >> 5) & 0x7FFFF, 19)  # B.cond, CBZ/CBNZ
            if not lo_rva <= target < hi_rva:
                words[index] = word & ~(0x7FFFF << 5)
                references.append((rva, REF_BRANCH, target))
            continue
        if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ imm14
            target = rva + 4 * _sign_extend((word >> 5) & 0x3FFF, 14)
            if not lo_rva <= target < hi_rva:
                words[index] = word & ~(0x3FFF << 5)
                references.append((rva, REF_BRANCH, target))
            continue
        if (word & 0x1F000000) == 0x10000000:  # ADR / ADRP
            immediate = _sign_extend((((word >> 5) & 0x7FFFF) << 2) | ((word >> 29) & 3), 21)
            words[index] = word & ~((0x7FFFF << 5) | (3 << 29))
            if word & 0x80000000:
                page = (rva & ~0xFFF) + immediate * 4096
                pages[written] = (len(references), page)
                references.append((rva, REF_ADDRESS, page))
            else:
                pages.pop(written, None)
                references.append((rva, REF_ADDRESS, rva + immediate))
            continue
        if (word & 0x3B000000) == 0x18000000 and (word & 0xC4000000) != 0xC0000000:
            target = rva + 4 * _sign_extend((word >> 5) & 0x7FFFF, 19)  # LDR literal
            words[index] = word & ~(0x7FFFF << 5)
            references.append((rva, REF_LITERAL, target))
            pages.pop(written, None)
            continue
        offset = _page_offset(word)
        base = (word >> 5) & 0x1F
        if offset is not None and base in pages:
            adrp_index, page = pages[base]
            target = page + offset
            words[index] = word & ~(0xFFF << 10)
            references.append((rva, REF_ADDRESS, target))
            if adrp_index not in completed:
                # the ADRP names the page; what it means is its first completion
                completed.add(adrp_index)
                references[adrp_index] = (references[adrp_index][0], REF_ADDRESS, target)
        if not _is_store(word):
            pages.pop(written, None)
    return struct.pack(f"<{count}I", *words) + data[4 * count :], references, count
