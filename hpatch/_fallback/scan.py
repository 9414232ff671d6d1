"""The twins of the C core's site scans and normalisers (``native/x64.c``, ``native/arm64.c``)."""

from __future__ import annotations

import bisect
import heapq
import operator
import re
import struct
from array import array
from collections.abc import Sequence
from functools import lru_cache

import capstone
from capstone import x86_const

from hpatch.arch.arm64_bits import adr_immediate, sign_extend
from hpatch.arch.base import RefKind, SiteKind
from hpatch.arch.x64_decode import LOOP_BRANCHES as _LOOPS
from hpatch.arch.x64_decode import disasm_in_pieces as _disasm_in_pieces
from hpatch.arch.x64_decode import displacement_size as _displacement_size
from hpatch.arch.x64_decode import loads_image_base as _loads_image_base
from hpatch.arch.x64_decode import x64_decoder as _x64_decoder

# The numbers the C core takes from native/constants.h, as plain ints (hot loops).
SITE_CALL, SITE_JUMP, SITE_COND_JUMP = (
    int(SiteKind.CALL),
    int(SiteKind.JUMP),
    int(SiteKind.COND_JUMP),
)
SITE_ADDRESS, SITE_LOAD = int(SiteKind.ADDRESS), int(SiteKind.LOAD)
REF_CALL, REF_BRANCH, REF_DATA = int(RefKind.CALL), int(RefKind.BRANCH), int(RefKind.DATA)
REF_ABSOLUTE, REF_IMAGE_RVA = int(RefKind.ABSOLUTE), int(RefKind.IMAGE_RVA)
REF_ADDRESS, REF_LITERAL = int(RefKind.ADDRESS), int(RefKind.LITERAL)
_RVA_LIMIT = 0xFFFFFFFF

# Zero-width lookahead so that every byte offset is a candidate, exactly as the C loop.
_X64_SITE = re.compile(rb"(?=[\xe8\xe9]|\x0f[\x80-\x8f]|[\x48-\x4f]\x8d)", re.DOTALL)
_I32 = struct.Struct("<i")

#: (sites, targets, kinds): the scanners' columns, array("I"), array("I"), array("B").
SiteColumns = tuple["array[int]", "array[int]", "array[int]"]


def _columns(rows: list[tuple[int, int, int]]) -> SiteColumns:
    """The (site, target, kind) rows as the C core's columns."""
    return (
        array("I", [row[0] for row in rows]),
        array("I", [row[1] for row in rows]),
        array("B", [row[2] for row in rows]),
    )


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


def scan_x64_sites(code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /) -> SiteColumns:
    """Byte-level scan of x64 code for rel32 branch and RIP-relative LEA sites, as
    columns (sites, targets, kinds)."""
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
    return _columns(sites)


def scan_arm64_sites(code: bytes, code_rva: int, lo_rva: int, hi_rva: int, /) -> SiteColumns:
    """Word-level scan of ARM64 code for branches, ADR/ADRP+ADD addresses and literal loads,
    as columns (sites, targets, kinds)."""
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
            target = site + 4 * sign_extend(insn & 0x03FFFFFF, 26)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_CALL if top == 0x94000000 else SITE_JUMP))
        elif (insn & 0xFF000010) == 0x54000000 or (insn & 0x7E000000) == 0x34000000:
            target = site + 4 * sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x7E000000) == 0x36000000:
            target = site + 4 * sign_extend((insn >> 5) & 0x3FFF, 14)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_COND_JUMP))
        elif (insn & 0x3B000000) == 0x18000000 and (insn & 0xC4000000) != 0xC0000000:
            target = site + 4 * sign_extend((insn >> 5) & 0x7FFFF, 19)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_LOAD))
        elif (insn & 0x9F000000) == 0x10000000:
            target = site + adr_immediate(insn)
            if lo_rva <= target < hi_rva:
                sites.append((site, target, SITE_ADDRESS))
        elif (insn & 0x9F000000) == 0x90000000 and w + 1 < count:
            nxt = words[w + 1]
            if (nxt & 0xFFC00000) == 0x91000000 and ((nxt >> 5) & 0x1F) == (insn & 0x1F):
                pages = adr_immediate(insn)
                target = (site & ~0xFFF) + pages * 4096 + ((nxt >> 10) & 0xFFF)
                if lo_rva <= target < hi_rva:
                    sites.append((site, target, SITE_ADDRESS))
    return _columns(sites)


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

    for insn in _disasm_in_pieces(_x64_decoder(), data, code_rva):
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


#: General-purpose registers as bits: x0..x30 (31, SP or the zero register, never
#: holds a page).
_ALL_REGISTERS = 0x7FFFFFFF
#: What a call leaves undefined: x0-x18 by the calling convention, and x30 (the link).
_CALL_CLOBBERED = 0x7FFFF | 1 << 30


def _reg(number: int) -> int:
    return 1 << number if number < 31 else 0


def _fields(word: int) -> int:
    """Every register field of the word (Rt, Rn, Rt2, Rs): what an instruction whose
    shape is known but not its every form may write."""
    return (
        _reg(word & 31) | _reg((word >> 5) & 31) | _reg((word >> 10) & 31) | _reg((word >> 16) & 31)
    )


def _load_store_written(word: int) -> int:
    rt, rn = word & 31, (word >> 5) & 31
    vector = bool(word & 0x04000000)
    if (word & 0xBE000000) == 0x0C000000:  # Advanced SIMD structures
        return _reg(rn) if word & 0x00800000 else 0  # post-indexed: the base moves
    if (word & 0x3B000000) == 0x18000000:  # load literal; vector, PRFM
        return 0 if vector or word >> 30 == 3 else _reg(rt)
    if (word & 0x38000000) == 0x28000000:  # register pairs
        moved = _reg(rn) if (word >> 23) & 3 in (1, 3) else 0
        if not vector and word >> 30 == 3:
            return _fields(word)
        if vector or not word & 0x00400000:  # a vector pair, or a store
            return moved
        return moved | _reg(rt) | _reg((word >> 10) & 31)
    if (word & 0x38000000) == 0x38000000:  # single registers
        size, opc = word >> 30, (word >> 22) & 3
        moved = 0
        if word & 0x01000000:  # unsigned offset
            pass
        elif not word & 0x00200000:  # unscaled, pre- or post-indexed, unprivileged
            moved = _reg(rn) if (word >> 10) & 3 in (1, 3) else 0
        elif (word >> 10) & 3 != 2:  # atomics, LD64B (eight registers), LDRAA
            return _fields(word) | ((0xFF << rt) & _ALL_REGISTERS)
        if vector or opc == 0 or (opc == 2 and size == 3):  # vector, store, PRFM
            return moved
        if opc == 3 and size >= 2:
            return _fields(word)
        return moved | _reg(rt)
    # exclusives, CASP (Rs and Rs+1, Rt and Rt+1), tag stores
    return _fields(word) | _reg(rt + 1) | _reg(((word >> 16) & 31) + 1)


def _register_written(word: int) -> int:
    rd, op2 = word & 31, (word >> 21) & 0xF
    if not word & 0x10000000:  # logical, add/sub (shifted or extended register)
        return _reg(rd)
    if op2 == 0 and (word >> 10) & 0x3F == 0:  # add/sub with carry
        return _reg(rd)
    if op2 == 2:  # conditional compare
        return 0
    if op2 in (4, 6) or op2 & 8:  # select; one or two sources; three
        return _reg(rd)
    return _fields(word)


@lru_cache(maxsize=1 << 16)
def _arm64_written(word: int) -> int:
    """The general-purpose registers (bits) an A64 word may change: exact where
    hpatch.arch.arm64_relocate models the instruction (every register it takes as
    written is in here), every register field where it knows the shape only, every
    register where it does not model the word at all (SVC, SVE, SME, unallocated)."""
    rd, group = word & 31, (word >> 25) & 0xF
    if group in (8, 9):  # data processing, immediate
        op, opc = (word >> 23) & 7, (word >> 29) & 3
        if op == 3:  # add/sub with tags
            return _fields(word)
        if (op == 5 and opc == 1) or (op == 6 and opc == 3):
            return _ALL_REGISTERS
        return _reg(rd)
    if group in (10, 11):  # branches, exception generation, system
        if (word & 0x7C000000) == 0x14000000:  # B, BL
            return _reg(30) if word >> 31 else 0
        if (
            (word & 0x7C000000) == 0x34000000
            or (word & 0xFE000000) == 0x54000000
            or (word & 0xFFE0001F) == 0xD4200000
        ):  # CBZ, TBZ, B.cond, BRK
            return 0
        if (word & 0xFFFFF01F) == 0xD503201F:  # hints
            crm, op2 = (word >> 8) & 0xF, (word >> 5) & 7
            if crm == 1:  # PAC and AUT of x17
                return _reg(17)
            if crm == 3 or (crm == 0 and op2 == 7):  # PAC and AUT of x30, XPACLRI
                return _reg(30)
            return 0
        if (word & 0xFFC00000) == 0xD5000000:  # system: MRS and SYSL write Rt
            return _reg(rd) if word & 0x00200000 and word & 0x00180000 else 0
        if (word & 0xFE000000) == 0xD6000000:  # branch to register
            return _reg(30) if (word >> 21) & 0xF in (1, 9) else 0
        return _ALL_REGISTERS
    if group & 5 == 4:  # loads and stores
        return _load_store_written(word)
    if group in (5, 13):  # data processing, register
        return _register_written(word)
    if group in (7, 15):  # scalar floating point and Advanced SIMD
        if (word & 0x5F20FC00) == 0x1E200000:  # conversion with a general register
            return 0 if (word >> 16) & 7 in (2, 3, 7) else _reg(rd)
        if (word & 0x5F200000) == 0x1E000000:  # conversion with a fixed-point integer
            return 0 if (word >> 16) & 7 in (2, 3) else _reg(rd)
        if (word & 0x9FE08400) == 0x0E000400 and not word & 0x20000000:  # SIMD copy
            return _reg(rd) if (word >> 11) & 0xF in (5, 7) else 0  # SMOV, UMOV
        return 0
    return _ALL_REGISTERS  # reserved, SME, SVE, unallocated


def _local_target(word: int, rva: int) -> int | None:
    """The RVA a B, B.cond, CBZ/CBNZ or TBZ/TBNZ (not BL) at ``rva`` leads to."""
    if (word & 0xFC000000) == 0x14000000:
        return rva + 4 * sign_extend(word & 0x03FFFFFF, 26)
    if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
        return rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19)
    if (word & 0x7E000000) == 0x36000000:
        return rva + 4 * sign_extend((word >> 5) & 0x3FFF, 14)
    return None


# What a word does to the control flow, for the walk of _link_pages.
_GOES_ON, _CALLS, _ENDS, _DISPATCHES = 0, 1, 2, 3
#: A register's value where no path from the part's start leads.
_NOTHING = -2


def _control(word: int) -> int:
    if (word & 0xFC000000) == 0x94000000:  # BL
        return _CALLS
    if (word & 0xFE000000) == 0xD6000000:  # branch to register
        opc = (word >> 21) & 0xF
        if opc in (1, 9):  # BLR and its authenticated forms return
            return _CALLS
        # BR and its authenticated forms (a jump table's dispatch, or a tail call);
        # RET and ERET leave for good
        return _DISPATCHES if opc in (0, 8) else _ENDS
    if (word & 0xFFFF0000) == 0 or (word & 0xFFE0001F) == 0xD4200000:  # UDF, BRK
        return _ENDS
    if (word & 0xFC000000) == 0x14000000:  # B
        return _ENDS
    return _GOES_ON


def _link_pages(words: Sequence[int], code_rva: int, lo_rva: int, hi_rva: int) -> list[int]:
    """For each word: a completion (an ADD/LDR/STR whose base register holds an ADRP's
    page on every path to it) -> the index of an ADRP of that page; an ADRP -> the
    index of the completion that gives its target; -1 otherwise.

    The pages are followed along the control flow of the part: fall-through, and the
    direct branches that stay in the code and in [lo, hi); a call (BL, BLR) keeps
    x19-x28 and x29 and clobbers the rest; a RET, BR or branch out of the part has no
    successor here. A register holds the page of one ADRP, or of one of several
    ADRPs of the same page (a class, named after the first ADRP of the part with that
    page), or something unknown, or nothing (no path from the part's start leads
    there). A head (a word where paths join) takes the meet of the states that reach
    it: a register keeps its ADRP if every path brings that ADRP (or nothing), the
    class if every path brings one of its ADRPs, else it is unknown. A register goes
    down at most three times, so a head is walked at most 94 times.

    The part's start takes every register unknown. Code that no path from it reaches
    takes what registers hold at every BR of the part (the cases of a jump table), or
    nothing: a handler the system enters, or padding, completes only the pages it
    sets itself and takes none away from the code it leads into. An ADRP's target is
    its first completion in address order, else the first completion of its class
    that a join reached.
    """
    count = len(words)
    end_rva = min(hi_rva, code_rva + 4 * count)
    targets = [-1] * count
    for w, word in enumerate(words):
        target = _local_target(word, code_rva + 4 * w)
        if target is not None and code_rva <= target < end_rva and target >= lo_rva:
            targets[w] = (target - code_rva) // 4
    controls = [_control(word) for word in words]
    # Heads: where branches lead, and where code that no path falls into starts.
    is_head = bytearray(count)
    for w in range(count):
        if targets[w] >= 0:
            is_head[targets[w]] = 1
        if controls[w] >= _ENDS and w + 1 < count:
            is_head[w + 1] = 1
    if count:
        is_head[0] = 1
    completes = [_page_offset(word) is not None for word in words]
    # Each ADRP's class: the first ADRP of the part with the same page.
    first_of_page: dict[int, int] = {}
    classes: dict[int, int] = {}
    for w, word in enumerate(words):
        if (word & 0x9F000000) == 0x90000000:
            classes[w] = first_of_page.setdefault(_adrp_page(word, code_rva + 4 * w), w)
    link = [-1] * count
    visited = bytearray(count)
    # A register's value: an ADRP's index, _NOTHING, or _NOTHING - 1 - its class
    # (absent: unknown).
    states: dict[int, dict[int, int]] = {}
    pending: list[int] = []
    queued: set[int] = set()
    dispatch = count  # the head standing for the targets of every BR
    seeds: list[int] = []

    def merge(head: int, incoming: dict[int, int]) -> None:
        state = states.get(head)
        if state is None:
            states[head] = dict(incoming)
        else:
            changed = False
            for r, value in list(state.items()):
                other = incoming.get(r)
                if other in (value, _NOTHING):
                    continue
                if other is None:
                    del state[r]
                elif value == _NOTHING:
                    state[r] = other
                else:
                    kind = classes[value] if value >= 0 else _NOTHING - 1 - value
                    if kind != (classes[other] if other >= 0 else _NOTHING - 1 - other):
                        del state[r]
                    elif value >= 0:  # two ADRPs of one page: the class
                        state[r] = _NOTHING - 1 - kind
                    else:
                        continue  # already the class
                changed = True
            if not changed:
                return
        if head not in queued:
            queued.add(head)
            heapq.heappush(pending, head)

    def walk(w: int, state: dict[int, int]) -> None:
        while True:
            word = words[w]
            visited[w] = 1
            if completes[w]:
                value = state.get((word >> 5) & 31, -1)
                link[w] = -1 if value == _NOTHING else value
            rd = word & 31
            if (word & 0x9F000000) == 0x90000000:  # ADRP
                if rd < 31:
                    state[rd] = w
            elif (word & 0xFFE0FFE0) == 0xAA0003E0:  # mov xD, xS: the page is copied
                if rd < 31:
                    source = state.get((word >> 16) & 31)
                    if source is None:
                        state.pop(rd, None)
                    else:
                        state[rd] = source
            elif state:
                lost = _arm64_written(word)
                if lost:
                    for r in [r for r in state if lost >> r & 1]:
                        del state[r]
            control = controls[w]
            if control == _CALLS:
                for r in [r for r in state if _CALL_CLOBBERED >> r & 1]:
                    del state[r]
            elif targets[w] >= 0:
                merge(targets[w], state)
            elif control == _DISPATCHES:
                merge(dispatch, state)
            if control >= _ENDS:
                return
            w += 1
            if w >= count:
                return
            if is_head[w]:
                merge(w, state)
                return

    following = 0
    while True:
        while pending:
            head = heapq.heappop(pending)
            queued.discard(head)
            if head == dispatch:
                for seed in seeds:
                    merge(seed, states[dispatch])
            else:
                walk(head, dict(states[head]))
        while following < count and visited[following]:
            following += 1
        if following == count:
            break
        # Code no path from the part's start reaches (the word is a head: the one
        # before it does not fall through); the start itself.
        seeds.append(following)
        if not following:
            merge(following, {})
        elif dispatch in states:
            merge(following, states[dispatch])
        else:
            merge(following, dict.fromkeys(range(31), _NOTHING))
    first_of_class: dict[int, int] = {}
    for w in range(count):
        value = link[w]
        if completes[w]:
            if value >= 0:
                if link[value] < 0:
                    link[value] = w
            elif value < _NOTHING:
                first_of_class.setdefault(_NOTHING - 1 - value, w)
    for w in range(count):
        if completes[w]:
            if link[w] < _NOTHING:
                link[w] = _NOTHING - 1 - link[w]
        elif w in classes and link[w] < 0:
            link[w] = first_of_class.get(classes[w], -1)
    return link


def _adrp_page(word: int, rva: int) -> int:
    pages = adr_immediate(word)
    return (rva & ~0xFFF) + pages * 4096


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
    that completes it in address order (each completion is an ADDRESS reference too:
    an ADD (immediate, 64-bit) or LDR/STR (unsigned immediate) whose base register
    holds the ADRP's page on every path to it, see ``_link_pages``); LDR (literal) a
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
    data_words = struct.unpack_from(f"<{count}I", data)
    words = list(data_words)
    references: list[tuple[int, int, int]] = []
    link = _link_pages(data_words, code_rva, lo_rva, hi_rva)
    for index, word in enumerate(words):
        rva = code_rva + 4 * index
        if (word & 0x7C000000) == 0x14000000:  # B / BL imm26
            target = rva + 4 * sign_extend(word & 0x03FFFFFF, 26)
            if not lo_rva <= target < hi_rva:
                words[index] = word & 0xFC000000
                references.append((rva, REF_CALL if word & 0x80000000 else REF_BRANCH, target))
            continue
        if (word & 0xFF000010) == 0x54000000 or (word & 0x7E000000) == 0x34000000:
            target = rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19)  # B.cond, CBZ/CBNZ
            if not lo_rva <= target < hi_rva:
                words[index] = word & ~(0x7FFFF << 5)
                references.append((rva, REF_BRANCH, target))
            continue
        if (word & 0x7E000000) == 0x36000000:  # TBZ / TBNZ imm14
            target = rva + 4 * sign_extend((word >> 5) & 0x3FFF, 14)
            if not lo_rva <= target < hi_rva:
                words[index] = word & ~(0x3FFF << 5)
                references.append((rva, REF_BRANCH, target))
            continue
        if (word & 0x1F000000) == 0x10000000:  # ADR / ADRP
            words[index] = word & ~((0x7FFFF << 5) | (3 << 29))
            if word & 0x80000000:
                # the ADRP names the page; what it means is its first completion
                target = _adrp_page(word, rva)
                if link[index] >= 0:
                    target += _page_offset(data_words[link[index]]) or 0
            else:
                immediate = adr_immediate(word)
                target = rva + immediate
            references.append((rva, REF_ADDRESS, target))
            continue
        if (word & 0x3B000000) == 0x18000000 and (word & 0xC4000000) != 0xC0000000:
            target = rva + 4 * sign_extend((word >> 5) & 0x7FFFF, 19)  # LDR literal
            words[index] = word & ~(0x7FFFF << 5)
            references.append((rva, REF_LITERAL, target))
            continue
        adrp = link[index]
        if adrp >= 0:  # an ADD/LDR/STR completing the page of the ADRP at words[adrp]
            page = _adrp_page(data_words[adrp], code_rva + 4 * adrp)
            words[index] = word & ~(0xFFF << 10)
            references.append((rva, REF_ADDRESS, page + (_page_offset(word) or 0)))
    return struct.pack(f"<{count}I", *words) + data[4 * count :], references, count
