"""The x64 decode read from capstone's structures is capstone's own decode."""

from __future__ import annotations

from pathlib import Path

import capstone
import pytest

from hpatch.arch.x64_decode import x64_decoder
from hpatch.arch.x64_detail import Decoded, decode
from hpatch.image import load_image

from ..conftest import BUILDS, SAMPLES


def _as_capstone_says(insn: capstone.CsInsn) -> Decoded:
    return Decoded(
        insn.address,
        insn.size,
        insn.id,
        insn.mnemonic,
        insn.modrm_offset,
        insn.disp_size,
        insn.imm_offset,
        insn.imm_size,
        insn.group(capstone.CS_GRP_CALL),
        insn.group(capstone.CS_GRP_JUMP),
        tuple(_operand(op) for op in insn.operands),
    )


def _operand(op: capstone.x86.X86Op) -> tuple[int, ...]:
    if op.type == capstone.x86.X86_OP_MEM:
        return (op.type, 0, 0, op.mem.base, op.mem.index, op.mem.disp, op.size)
    if op.type == capstone.x86.X86_OP_IMM:
        return (op.type, 0, op.imm, 0, 0, 0, op.size)
    return (op.type, op.reg, 0, 0, 0, 0, op.size)


@pytest.mark.parametrize("build", [b for b in BUILDS if b.startswith("x64")])
def test_every_instruction_of_the_samples_decodes_as_capstone_decodes_it(build: str) -> None:
    image = load_image(SAMPLES / build / "v1" / "sample.dll")
    decoded = 0
    for function in image.functions:
        code = bytes(image.read(function.rva, function.size))
        ours = list(decode(code, function.rva))
        theirs = [_as_capstone_says(i) for i in x64_decoder().disasm(code, function.rva)]
        assert ours == theirs
        decoded += len(ours)
    assert decoded > 1000


def test_operands_left_out_only_where_no_address_is_named() -> None:
    # mov eax, ecx (register form) | mov eax, [rcx+8] | call rel32 | mov rax, imm64 | push rbx
    code = bytes.fromhex("89c8 8b4108 e800000000 48b88877665544332211 53".replace(" ", ""))
    full = list(decode(code, 0x1000))
    short = list(decode(code, 0x1000, all_operands=False))
    assert [i.mnemonic for i in full] == ["mov", "mov", "call", "movabs", "push"]
    assert [len(i.operands) for i in short] == [0, 2, 1, 2, 0]
    assert [i._replace(operands=()) for i in short] == [i._replace(operands=()) for i in full]
    assert short[1].operands == full[1].operands and short[1].operands[1].disp == 8


def test_bytes_that_start_no_instruction_end_the_decode() -> None:
    assert list(decode(b"", 0)) == []
    # 06 (push es) is no instruction in 64-bit mode; a lone 0f is cut off
    for code, sizes in ((b"\x90\x06\x90", [1]), (b"\x90\x90\x0f", [1, 1])):
        assert [i.size for i in decode(code, 0x1000)] == sizes
        theirs = [(i.address, i.size) for i in x64_decoder().disasm(code, 0x1000)]
        assert [(i.address, i.size) for i in decode(code, 0x1000)] == theirs


@pytest.mark.parametrize("piece", [16, 23, 64])
def test_decoded_a_piece_at_a_time_as_at_once(piece: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpatch.arch.x64_decode

    image = load_image(SAMPLES / "x64-clang" / "v1" / "sample.dll")
    codes = [bytes(image.read(f.rva, f.size)) for f in image.functions]
    # and code that stops decoding: past the first piece, and in a piece's last bytes
    codes += [codes[0][:40] + b"\x06" + codes[0], codes[0][: piece - 3] + b"\x06\x90\x90"]
    whole = [list(decode(code, 0x1000)) for code in codes]
    monkeypatch.setattr(hpatch.arch.x64_decode, "PIECE", piece)
    for code, expected in zip(codes, whole, strict=True):
        assert list(decode(code, 0x1000)) == expected
        theirs = [(i.address, i.size) for i in x64_decoder().disasm(code, 0x1000)]
        assert [(i.address, i.size) for i in expected] == theirs
        # capstone's own objects, a piece at a time, as the C core's twin reads them
        pieces = hpatch.arch.x64_decode.disasm_in_pieces(x64_decoder(), code, 0x1000)
        assert [(i.address, i.size, i.op_str) for i in pieces] == [
            (i.address, i.size, i.op_str) for i in x64_decoder().disasm(code, 0x1000)
        ]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux's /proc only")
def test_long_code_is_decoded_in_bounded_memory() -> None:
    # 256 Ki one-byte instructions: capstone's details for all at once would be 500 MB.
    # The high-water mark of the new program's memory (VmHWM; ru_maxrss would count the
    # forking test process too).
    import os
    import subprocess
    import sys

    program = (
        "from hpatch.arch.x64_detail import decode\n"
        "count = sum(1 for _ in decode(b'\\x90' * (1 << 18), 0x1000, all_operands=False))\n"
        "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print(count, peak.split()[1])\n"
    )
    # The program runs as a user runs it, without the sanitizer run's preloaded runtime
    # (capstone's RTLD_DEEPBIND load and ASan do not mix outside its test harness).
    unsanitized = {
        key: value
        for key, value in os.environ.items()
        if key not in ("LD_PRELOAD", "HPATCH_SANITIZED_NATIVE", "HPATCH_REQUIRE_NATIVE")
    }
    output = subprocess.check_output([sys.executable, "-c", program], env=unsanitized)
    count, peak_kib = map(int, output.split())
    assert count == 1 << 18
    assert peak_kib < 150 << 10
