"""The fixup sites a package's code predicts (format version 3): the x64 length decoder
against capstone, both predictors against the fixups the package builder emits and
against capstone's reading of the sample code, hand-made ARM64 words rule by rule, and
never a failure on arbitrary bytes."""

from __future__ import annotations

import bisect
import re
import struct
from functools import cache
from pathlib import Path

import capstone
import keystone
import pytest
from capstone import x86
from hypothesis import given, settings
from hypothesis import strategies as st

from hpatch.arch import Machine
from hpatch.arch.rewrite import Fixup
from hpatch.arch.site_prediction import _x64_instruction, predict_arm64, predict_x64
from hpatch.image import load_image
from hpatch.package import build_package
from hpatch.package.format.sites import normalize_fields
from hpatch.package.model import BlobKind, Package

from ..conftest import BUILDS, SAMPLES, VERSIONS
from ..diff.samples import sample_diff
from .packages import HOTPATCHABLE_PAIRS, OPTIONS

Sites = list[tuple[int, Fixup]]

X64 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
X64.detail = True
ARM64 = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
ARM64.detail = True
KS_ARM64 = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
PAD = bytes(16)


def sample_images(arch: str) -> list[Path]:
    return [
        SAMPLES / build / version / name
        for build in BUILDS
        if build.startswith(arch)
        for version in VERSIONS
        for name in ("sample.dll", "sample.stripped.dll")
    ]


def image_id(path: Path) -> str:
    return "/".join(path.parts[-3:])


def code_parts(path: Path) -> list[bytes]:
    """The instructions of every function part of the image (no inline data)."""
    image = load_image(path)
    return [
        image.read(start, code_end - start)
        for function in image.functions
        for start, _end, code_end in function.part_ranges
        if code_end > start
    ]


# x64 ----------------------------------------------------------------------------------


def rel32_kind(tail: int) -> Fixup:
    """IMAGE_REL_AMD64_REL32_<tail>: ``tail`` instruction bytes follow the field."""
    return Fixup.X64_REL32 if tail == 0 else Fixup[f"X64_REL32_{tail}"]


def capstone_fields(instruction: capstone.CsInsn) -> tuple[int, int, int]:
    """(length, offset of a rel32 branch field or -1, offset of a RIP-relative
    displacement or -1), as capstone reads the instruction."""
    relative = any(
        op.type == capstone.CS_OP_MEM and op.mem.base == x86.X86_REG_RIP
        for op in instruction.operands
    )
    branch = (
        (instruction.group(capstone.CS_GRP_JUMP) or instruction.group(capstone.CS_GRP_CALL))
        and instruction.imm_size == 4
        and any(op.type == capstone.CS_OP_IMM for op in instruction.operands)
    )
    return (
        instruction.size,
        instruction.imm_offset if branch else -1,
        instruction.disp_offset if relative else -1,
    )


def capstone_x64_sites(code: bytes, instructions: list[capstone.CsInsn]) -> Sites:
    """The sites the format's rules give, from capstone's decoding of ``code`` at 0."""
    sites = []
    for instruction in instructions:
        size, branch, relative = capstone_fields(instruction)
        if branch >= 0:
            target = instruction.operands[0].imm
            call = instruction.group(capstone.CS_GRP_CALL)
            if call or not 0 <= target < len(code):
                sites.append((instruction.address + branch, Fixup.X64_REL32))
        elif relative >= 0:
            sites.append((instruction.address + relative, rel32_kind(size - relative - 4)))
    return sites


@pytest.mark.parametrize("path", sample_images("x64"), ids=image_id)
def test_x64_lengths_and_fields_agree_with_capstone_on_every_sample_function(path: Path) -> None:
    """A linear sweep from each part's start: every instruction capstone decodes has the
    same length, branch field and RIP-relative field; so the predicted sites are
    capstone's, up to where capstone stops (data in code)."""
    counts = {"instructions": 0, "branches": 0, "rip": 0}
    for code in code_parts(path):
        instructions = list(X64.disasm(code, 0))
        padded = code + PAD
        for instruction in instructions:
            expected = capstone_fields(instruction)
            assert _x64_instruction(padded, instruction.address) == expected, (
                f"{instruction.mnemonic} {instruction.op_str}: "
                f"{code[instruction.address : instruction.address + instruction.size].hex()}"
            )
            counts["instructions"] += 1
            counts["branches"] += expected[1] >= 0
            counts["rip"] += expected[2] >= 0
        decoded = instructions[-1].address + instructions[-1].size if instructions else 0
        predicted = [site for site in predict_x64(code) if site[0] < decoded]
        assert predicted == capstone_x64_sites(code, instructions)
    assert counts["instructions"] > 1000 and counts["branches"] > 50 and counts["rip"] > 50


D32 = "78563412"
X64_ENCODINGS = {
    "vzeroupper": "c5f877",
    "vex2 rip": f"c5fc2805{D32}",
    "vex2 0f imm8": "c5f970c11b",
    "vex2 vpinsrw rip imm8": f"c5f9c405{D32}01",
    "vex2 group imm8": "c5f171d004",
    "vex3 0f3a rip imm8": f"c4e3790f05{D32}08",
    "vex3 0f38 rip": f"c4e2791805{D32}",
    "vex3 sib disp32": "c4c17e6f842480000000",
    "evex rip": f"62f17c482805{D32}",
    "evex disp8": "62f17c48284001",
    "evex 0f3a rip imm8": f"62f37d480f05{D32}08",
    "evex 0f38 rip": f"62f27d481805{D32}",
    "lock rex.w cmpxchg rip": f"f0480fb10d{D32}",
    "66 66 cs nopw": "66662e0f1f840000000000",
    "rep rex.w movsq": "f348a5",
    "66 rex.b imm16": "664181c03412",
    "fs rex.w sib no base": "64488b042528000000",
    "66 rex.w movq": "66480f6ec0",
    "66 rex.w add imm32": "664881c044332211",
    "66 rex.w mov rip imm32": f"6648c705{D32}44332211",
    "mov rax imm64": "48b80123456789abcdef",
    "mov r15 imm64": "49bf0123456789abcdef",
    "mov ax imm16": "66b83412",
    "moffs64 load": "48a10123456789abcdef",
    "moffs64 store": "a20123456789abcdef",
    "moffs32": "67a178563412",
    "test byte rip imm8": f"f605{D32}01",
    "test dword rip imm32": f"f705{D32}44332211",
    "test word rip imm16": f"66f705{D32}2211",
    "test rax imm32": "48f7c044332211",
    "test /1 byte rip imm8": f"f60d{D32}01",
    "test /1 dword rip imm32": f"f70d{D32}44332211",
    "neg dword rip": f"f71d{D32}",
    "neg eax": "f7d8",
    "neg al": "f6d8",
    "mov dword rip imm32": f"c705{D32}44332211",
    "mov qword rip imm32": f"48c705{D32}44332211",
    "mov byte rip imm8": f"c605{D32}01",
    "mov word rip imm16": f"66c705{D32}2211",
    "cmp byte rip imm8": f"803d{D32}00",
    "cmp qword rip imm32": f"48813d{D32}44332211",
    "imul rip imm32": f"6905{D32}44332211",
    "imul rip imm8": f"6b05{D32}08",
    "0f38 pshufb rip": f"660f380005{D32}",
    "0f38 movbe rip": f"0f38f005{D32}",
    "0f38 crc32 rex.w": "f2480f38f1c1",
    "0f3a palignr rip imm8": f"660f3a0f05{D32}08",
    "0f3a pextrd imm8": "660f3a16c001",
    "0f3a pinsrq rex.w imm8": "66480f3a22c001",
    "0f cmpps rip imm8": f"0fc205{D32}01",
    "0f bt imm8": "0fbae005",
    "0f shld imm8": "0fa4c104",
    "jcc rel32": f"0f84{D32}",
    "jg rel32": f"0f8f{D32}",
    "cs jcc rel32": f"2e0f84{D32}",
    "call rel32": f"e8{D32}",
    "jmp rel32": f"e9{D32}",
    "call rip": f"ff15{D32}",
    "rex.w jmp rip": f"48ff25{D32}",
    "lea rip": f"488d05{D32}",
    "jmp table sib disp32": f"ff24c5{D32}",
    "fld rip": f"d905{D32}",
    "fstp rip": f"dd1d{D32}",
    "enter": "c8100000",
    "ret imm16": "c20800",
    "int imm8": "cd29",
    "ud2": "0f0b",
    "syscall": "0f05",
    "emms": "0f77",
    "cpuid": "0fa2",
    "rdtsc": "0f31",
    "bswap": "480fc8",
    "push fs": "0fa0",
    "prefetchw rip": f"0f0d0d{D32}",
    "endbr64": "f30f1efa",
    "mov rbp disp8": "8b4500",
    "mov r12 sib": "418b0424",
    "mov abs sib": f"8b0425{D32}",
    "jrcxz": "e3fe",
    "loop": "e2fe",
}


@pytest.mark.parametrize("encoding", X64_ENCODINGS.values(), ids=X64_ENCODINGS.keys())
def test_x64_hand_written_encodings_agree_with_capstone(encoding: str) -> None:
    code = bytes.fromhex(encoding)
    instruction = next(X64.disasm(code, 0), None)
    assert instruction is not None and instruction.size == len(code), "one whole instruction"
    assert _x64_instruction(code + PAD, 0) == capstone_fields(instruction)
    assert predict_x64(code) == capstone_x64_sites(code, [instruction])


def rel32_stream(opcode: str, target: int) -> bytes:
    """Eight NOPs, a rel32 branch to ``target`` (an offset in the stream), eight NOPs."""
    field_end = 8 + len(opcode) // 2 + 4
    rel = struct.pack("<i", target - field_end)
    return b"\x90" * 8 + bytes.fromhex(opcode) + rel + b"\x90" * 8


@pytest.mark.parametrize("opcode", ["e8", "e9", "0f85", "2e0f84"])
@pytest.mark.parametrize("target", [-0x1000, -1, 0, 8, 20, 21, 22, 23, 0x1000])
def test_an_x64_jump_is_a_site_only_when_it_leaves_the_part(opcode: str, target: int) -> None:
    """A call is a site wherever it leads (a longer new part, read at the old address,
    overlaps the old code after it); a jump only when it leaves the part."""
    code = rel32_stream(opcode, target)
    instructions = list(X64.disasm(code, 0))
    assert sum(i.size for i in instructions) == len(code) == 20 + len(opcode) // 2
    branch = next(i for i in instructions if i.address == 8)
    assert branch.operands[0].imm == target
    field = 8 + len(opcode) // 2
    internal = 0 <= target < len(code) and opcode != "e8"
    expected = [] if internal else [(field, Fixup.X64_REL32)]
    assert predict_x64(code) == expected == capstone_x64_sites(code, instructions)


#: REX.W, not 66, sizes these immediates: each is checked on its own by the test above,
#: and left out of the stream so that one disagreement fails one test.
OPERAND_SIZE_CLASH = {"66 rex.w add imm32", "66 rex.w mov rip imm32"}


def test_x64_sites_of_a_stream_of_instructions() -> None:
    """A sweep keeps step with capstone over a mix of forms, and offsets add up."""
    names = [name for name in X64_ENCODINGS if name not in OPERAND_SIZE_CLASH] * 2
    code = b"".join(bytes.fromhex(X64_ENCODINGS[name]) for name in names)
    instructions = list(X64.disasm(code, 0))
    assert len(instructions) == len(names)
    assert predict_x64(code) == capstone_x64_sites(code, instructions)
    assert len(predict_x64(code)) >= 60


def test_an_x64_instruction_cut_by_the_part_end_is_not_predicted() -> None:
    code = bytes.fromhex(f"488d05{D32}e8{D32}")  # lea rax, [rip + d32]; call rel32
    assert predict_x64(code) == [(3, Fixup.X64_REL32), (8, Fixup.X64_REL32)]
    assert predict_x64(code[:-1]) == predict_x64(code)[:1]
    assert predict_x64(code[:5]) == []


# ARM64 --------------------------------------------------------------------------------

ARM64_BASE = 0x10000  # the part's address when assembling: targets below it stay positive
NOP = struct.pack("<I", 0xD503201F)
PART_WORDS = 8
AT = 12  # the instruction under test, inside an 8-word part of NOPs


def arm64(source: str, at: int = 0) -> bytes:
    encoding, _ = KS_ARM64.asm(source, ARM64_BASE + at)
    return bytes(encoding)


def adr(register: int, at: int, target: int) -> bytes:
    """ADR, built by hand: keystone 0.9.2 mis-encodes it."""
    offset = target - at
    return struct.pack(
        "<I", 0x10000000 | (offset & 3) << 29 | ((offset >> 2) & 0x7FFFF) << 5 | register
    )


def capstone_arm64_target(word: bytes, at: int) -> tuple[str, int]:
    """(mnemonic, PC-relative target as an offset in the part) of ``word`` at ``at``."""
    instruction = next(ARM64.disasm(word, ARM64_BASE + at))
    immediates = re.findall(r"#(-?0x[0-9a-f]+|-?\d+)", instruction.op_str)
    return instruction.mnemonic, int(immediates[-1], 0) - ARM64_BASE


def in_part(word: bytes, at: int = AT) -> bytes:
    return NOP * (at // 4) + word + NOP * (PART_WORDS - at // 4 - 1)


BRANCHES = {
    "b #{}": Fixup.ARM64_BRANCH26,
    "bl #{}": Fixup.ARM64_BRANCH26,
    "b.ne #{}": Fixup.ARM64_BRANCH19,
    "cbz x3, #{}": Fixup.ARM64_BRANCH19,
    "cbnz w5, #{}": Fixup.ARM64_BRANCH19,
    "ldr x0, #{}": Fixup.ARM64_BRANCH19,
    "ldr w1, #{}": Fixup.ARM64_BRANCH19,
    "ldrsw x2, #{}": Fixup.ARM64_BRANCH19,
    "ldr q0, #{}": Fixup.ARM64_BRANCH19,
    "ldr d1, #{}": Fixup.ARM64_BRANCH19,
    "tbz x3, #40, #{}": Fixup.ARM64_BRANCH14,
    "tbnz w3, #3, #{}": Fixup.ARM64_BRANCH14,
}
PART_SIZE = 4 * PART_WORDS
INSIDE = (0, AT, PART_SIZE - 4)
OUTSIDE = (-0x4000, -4, PART_SIZE, 0x4000)


@pytest.mark.parametrize("source", BRANCHES, ids=lambda s: s.split(" #")[0])
@pytest.mark.parametrize("target", INSIDE + OUTSIDE)
def test_an_arm64_branch_or_literal_is_a_site_only_when_it_leaves_the_part(
    source: str, target: int
) -> None:
    """BL, like an x64 call, is a site wherever it leads."""
    word = arm64(source.format(hex(ARM64_BASE + target)), AT)
    assert capstone_arm64_target(word, AT)[1] == target
    internal = target in INSIDE and not source.startswith("bl ")
    expected = [] if internal else [(AT, BRANCHES[source])]
    assert predict_arm64(in_part(word)) == expected


@pytest.mark.parametrize("target", [0, 1, AT, PART_SIZE - 1, -1, PART_SIZE, -0x4000, 0x4001])
def test_an_arm64_adr_is_a_site_only_when_it_leaves_the_part(target: int) -> None:
    word = adr(2, AT, target)
    assert capstone_arm64_target(word, AT) == ("adr", target)
    expected = [] if 0 <= target < PART_SIZE else [(AT, Fixup.ARM64_REL21)]
    assert predict_arm64(in_part(word)) == expected


def test_an_arm64_prefetch_literal_is_not_a_site() -> None:
    word = arm64(f"prfm pldl1keep, #{ARM64_BASE + 0x4000:#x}", AT)
    assert capstone_arm64_target(word, AT) == ("prfm", 0x4000)
    assert predict_arm64(in_part(word)) == []


@pytest.mark.parametrize("target", [0, 0x1000, 0x5000, -0x3000])
def test_every_arm64_adrp_is_a_site(target: int) -> None:
    word = arm64(f"adrp x0, #{ARM64_BASE + target:#x}", AT)
    assert capstone_arm64_target(word, AT) == ("adrp", target & ~0xFFF)
    assert predict_arm64(in_part(word)) == [(AT, Fixup.ARM64_PAGEBASE_REL21)]


PAGE_OFFSETS = {
    "add x1, x8, #0x20": Fixup.ARM64_PAGEOFFSET_12A,
    "add w1, w8, #0x20": Fixup.ARM64_PAGEOFFSET_12A,
    "ldr x1, [x8, #0x10]": Fixup.ARM64_PAGEOFFSET_12L,
    "str w1, [x8, #4]": Fixup.ARM64_PAGEOFFSET_12L,
    "ldrb w1, [x8, #1]": Fixup.ARM64_PAGEOFFSET_12L,
    "strh w1, [x8, #2]": Fixup.ARM64_PAGEOFFSET_12L,
    "ldr q0, [x8, #0x10]": Fixup.ARM64_PAGEOFFSET_12L,
    "str d2, [x8, #8]": Fixup.ARM64_PAGEOFFSET_12L,
}
ADRP_X8 = f"adrp x8, #{ARM64_BASE + 0x5000:#x}"


@pytest.mark.parametrize("source", PAGE_OFFSETS)
def test_the_page_offset_after_an_adrp_of_its_base_is_a_site(source: str) -> None:
    code = arm64(ADRP_X8) + NOP + arm64(source)
    assert predict_arm64(code) == [
        (0, Fixup.ARM64_PAGEBASE_REL21),
        (8, PAGE_OFFSETS[source]),
    ]
    other_base = source.replace("x8", "x9").replace("w8", "w9")
    assert predict_arm64(arm64(ADRP_X8) + arm64(other_base)) == [(0, Fixup.ARM64_PAGEBASE_REL21)]
    assert predict_arm64(arm64(source) + arm64(ADRP_X8)) == [(4, Fixup.ARM64_PAGEBASE_REL21)]


@pytest.mark.parametrize(
    "source", ["ldr x1, [x8], #8", "ldr x1, [x8, #8]!", "ldr x1, [x8, x2]", "ldur x1, [x8, #-8]"]
)
def test_other_addressing_modes_are_not_page_offsets(source: str) -> None:
    assert predict_arm64(arm64(ADRP_X8) + arm64(source)) == [(0, Fixup.ARM64_PAGEBASE_REL21)]


@pytest.mark.parametrize("between", [0, 1, 7, 8, 9])
def test_an_adrp_pairs_within_the_eight_previous_sites(between: int) -> None:
    """The window counts predicted sites (here external calls), not words: internal
    branches and NOPs in between do not count."""
    filler = b"".join(arm64(f"bl #{ARM64_BASE - 0x1000:#x}", 4 * (1 + i)) for i in range(between))
    internal = b"".join(arm64(f"b #{ARM64_BASE:#x}", 4 * (1 + between + i)) for i in range(12))
    code = arm64(ADRP_X8) + filler + internal + NOP * 30 + arm64("add x0, x8, #0x10")
    sites = predict_arm64(code)
    expected = [(0, Fixup.ARM64_PAGEBASE_REL21)]
    expected += [(4 * (1 + i), Fixup.ARM64_BRANCH26) for i in range(between)]
    if between < 8:
        expected.append((len(code) - 4, Fixup.ARM64_PAGEOFFSET_12A))
    assert sites == expected


def capstone_arm64_site(word: bytes, at: int, size: int) -> Fixup | bool | None:
    """The site capstone's reading of ``word`` says, or True where the ADRP pair rule
    decides (ADD, LDR/STR with an unsigned offset), False where capstone cannot read it."""
    instruction = next(ARM64.disasm(word, ARM64_BASE + at), None)
    if instruction is None:
        return False
    mnemonic = instruction.mnemonic
    if mnemonic == "adrp":
        return Fixup.ARM64_PAGEBASE_REL21
    literal = mnemonic in ("ldr", "ldrsw") and not any(
        op.type == capstone.CS_OP_MEM for op in instruction.operands
    )
    kinds = {"b": Fixup.ARM64_BRANCH26, "bl": Fixup.ARM64_BRANCH26, "adr": Fixup.ARM64_REL21}
    kinds |= dict.fromkeys(("cbz", "cbnz"), Fixup.ARM64_BRANCH19)
    kinds |= dict.fromkeys(("tbz", "tbnz"), Fixup.ARM64_BRANCH14)
    if mnemonic.startswith("b.") or literal:
        kind: Fixup | None = Fixup.ARM64_BRANCH19
    else:
        kind = kinds.get(mnemonic)
    if kind is not None:
        target = capstone_arm64_target(word, at)[1]
        return None if 0 <= target < size and mnemonic != "bl" else kind
    if mnemonic in ("add", "mov", "prfm") or mnemonic.startswith(("ldr", "str")):
        return True
    return None


@pytest.mark.parametrize("path", sample_images("arm64"), ids=image_id)
def test_arm64_sites_agree_with_capstone_on_every_sample_function(path: Path) -> None:
    """Branches, literals, ADR and ADRP as capstone reads them; ADD/LDR/STR sites only
    where the pair rule applies (checked against the builder's fixups below)."""
    counts = {"sites": 0, "pairs": 0}
    for code in code_parts(path):
        predicted = dict(predict_arm64(code))
        for at in range(0, len(code) - 3, 4):
            expected = capstone_arm64_site(code[at : at + 4], at, len(code))
            if expected is True:
                counts["pairs"] += at in predicted
                assert predicted.get(at) in (
                    None,
                    Fixup.ARM64_PAGEOFFSET_12A,
                    Fixup.ARM64_PAGEOFFSET_12L,
                )
            elif expected is not False:
                counts["sites"] += expected is not None
                assert predicted.get(at) == expected, code[at : at + 4].hex()
    assert counts["sites"] > 100 and counts["pairs"] > 20


# against the package builder ------------------------------------------------------------

PACKAGE_CASES = [(build, old, new) for build in BUILDS for old, new in HOTPATCHABLE_PAIRS]


@cache
def normalized_package(build: str, old: str, new: str) -> Package:
    """The built package with its fields as the format reads them when predicting."""
    return normalize_fields(build_package(sample_diff(build, old, new), OPTIONS))


@pytest.mark.parametrize("case", PACKAGE_CASES, ids="-".join)
def test_predictions_match_the_fixups_the_builder_emits(case: tuple[str, str, str]) -> None:
    """Where a part predicts a site and the builder put a fixup, the kinds agree; and
    nearly every fixup of carried code is predicted (the rest are data in code)."""
    package = normalized_package(*case)
    predictor = predict_arm64 if case[0].startswith("arm64") else predict_x64
    starts = [blob.offset for blob in package.blobs]
    fixups = {fixup.offset: fixup for fixup in package.fixups}
    in_code = {
        offset
        for offset in fixups
        if package.blobs[bisect.bisect_right(starts, offset) - 1].kind == BlobKind.CODE
    }
    predicted: dict[int, Fixup] = {}
    for function in package.functions:
        for part in function.parts:
            blob = package.blobs[bisect.bisect_right(starts, part.offset) - 1]
            assert blob.kind == BlobKind.CODE
            code = blob.data[part.offset - blob.offset : part.offset - blob.offset + part.size]
            for at, kind in predictor(code):
                predicted[part.offset + at] = kind
    wrong = {
        hex(at): (fixups[at].kind.name, kind.name)
        for at, kind in predicted.items()
        if at in fixups and fixups[at].kind != kind
    }
    assert not wrong, f"(emitted, predicted): {wrong}"
    assert len(in_code) >= 10
    assert len(in_code & set(predicted)) >= 0.9 * len(in_code)


# any bytes ------------------------------------------------------------------------------

INTERESTING = [0x0F, 0x38, 0x3A, 0x05, 0x15, 0x25, 0x48, 0x66, 0x67, 0xF0, 0xF2, 0xF3]
INTERESTING += [0xC4, 0xC5, 0x62, 0xE8, 0xE9, 0x80, 0x81, 0xF6, 0xF7, 0xA1, 0xB8, 0xC7]
BYTES = st.lists(st.one_of(st.integers(0, 255), st.sampled_from(INTERESTING)), max_size=200)
X64_TAILS = {rel32_kind(tail): tail for tail in range(6)}
ARM64_KINDS = {kind for kind in Fixup if kind.machine == Machine.ARM64}


@settings(max_examples=400, deadline=None)
@given(BYTES.map(bytes))
def test_any_bytes_give_sorted_sites_inside_the_code(code: bytes) -> None:
    x64 = predict_x64(code)
    assert [at for at, _ in x64] == sorted({at for at, _ in x64})
    for at, kind in x64:
        assert at >= 0 and at + 4 + X64_TAILS[kind] <= len(code)
    word_aligned = predict_arm64(code)
    assert [at for at, _ in word_aligned] == sorted({at for at, _ in word_aligned})
    for at, kind in word_aligned:
        assert at % 4 == 0 and at >= 0 and at + 4 <= len(code) and kind in ARM64_KINDS


@settings(max_examples=400, deadline=None)
@given(BYTES.filter(bool).map(bytes))
def test_an_x64_instruction_holds_its_fields(code: bytes) -> None:
    """A rel32 branch field ends the instruction; a RIP-relative displacement lies
    inside it."""
    length, branch, relative = _x64_instruction(code + PAD, 0)
    assert length >= 1
    assert branch == -1 or branch + 4 == length
    assert relative == -1 or (branch == -1 and relative > 0 and relative + 4 <= length)
