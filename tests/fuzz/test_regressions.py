"""What fuzzing the C core against its twin found, one test per fix."""

from __future__ import annotations

import struct

import pytest

from hpatch import _fallback, _native

SCANNERS = ("scan_x64_sites", "scan_arm64_sites")


def _both(name: str, *args: object) -> tuple[tuple[object, ...], tuple[object, ...]]:
    outcomes = []
    for module in (_native, _fallback):
        try:
            outcomes.append(("ok", getattr(module, name)(*args)))
        except Exception as exc:  # the exception is what is compared
            outcomes.append((type(exc).__name__, str(exc)))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("name", SCANNERS)
@pytest.mark.parametrize(
    "rvas", [(1 << 64, 0, 1), (0, -(1 << 70), 1), (0, 0, (1 << 64) + 4), (1 << 63, 0, 1)]
)
def test_scanner_rvas_past_64_bits_are_out_of_range(name: str, rvas: tuple[int, ...]) -> None:
    # was OverflowError from the "L" format in C, ValueError in the twin
    native, twin = _both(name, b"\xe8\0\0\0\0\0\0\0", *rvas)
    assert native == twin == ("ValueError", "rva out of range")


@pytest.mark.parametrize("code_rva", [(1 << 63) - 1, (1 << 63) - 5, 1 << 63, 1 << 64, 1 << 70])
def test_x64_code_rva_near_the_64_bit_limit_is_out_of_range(code_rva: int) -> None:
    # code_rva + len(code) overflowed a long long in C (UBSan: signed integer overflow)
    native, twin = _both("normalise_x64", b"\x90" * 8, code_rva, 0, 1, b"", 0x1_4000_0000)
    assert native == twin == ("ValueError", "rva out of range")


@pytest.mark.parametrize("lo, hi", [(-(1 << 70), 1 << 70), (1 << 64, -(1 << 64)), (0, 1 << 63)])
def test_x64_branch_range_may_be_any_integers(lo: int, hi: int) -> None:
    code = b"\xe8\x00\x00\x00\x00\xeb\xfe"  # call next; jmp self
    native, twin = _both("normalise_x64", code, 0x1000, lo, hi, b"", 0x1_4000_0000)
    assert native == twin and native[0] == "ok"


MOVABS = b"\x48\xb8" + (0x8000_0000_0000_0000).to_bytes(8, "little")  # movabs rax, imm64
MOFFS = b"\x48\xa1" + (0xFFFF_F800_0000_1000).to_bytes(8, "little")  # mov rax, [moffs64]


@pytest.mark.parametrize("code", [MOVABS, MOFFS], ids=["movabs", "moffs"])
@pytest.mark.parametrize(
    "image_base",
    [0x1_4000_0000, 0, 0xFFFF_F800_0000_0000, (1 << 64) - 1, -1, -(1 << 63), 1 << 70],
    ids=hex,
)
def test_absolute_targets_are_the_unsigned_va_minus_the_image_base(
    code: bytes, image_base: int
) -> None:
    # C read the field as a signed 64-bit number and subtracted the image base in 64
    # bits: a negative target, or a signed overflow (UBSan) for VAs of 2^63 and up;
    # and it refused image bases past 2^63 (a kernel-mode image) with OverflowError.
    relocated = struct.pack("<I", 0x1000 + 2)
    native, twin = _both(
        "normalise_x64", code, 0x1000, 0x1000, 0x1000 + len(code), relocated, image_base
    )
    assert native == twin
    (reference,) = native[1][1]
    assert reference == (0x1000, 4, int.from_bytes(code[2:], "little") - image_base)


@pytest.mark.parametrize("start", [1, 2, 3])
def test_x64_relocated_rvas_at_any_alignment(start: int) -> None:
    # C read them through a uint32_t pointer into the buffer: a misaligned load
    # (UBSan) for a slice such as this; make sanitize runs this under UBSan
    relocated = memoryview(bytes(start) + struct.pack("<2I", 0x1002, 0x2000))[start:]
    native, twin = _both("normalise_x64", MOVABS, 0x1000, 0, 1, relocated, 0x1000)
    assert native == twin
    assert native[1][1] == [(0x1000, 4, (1 << 63) - 0x1000)]


@pytest.mark.parametrize(
    "name, args",
    [
        ("scan_x64_sites", ["CODE", 0, 0, 1]),
        ("scan_arm64_sites", ["CODE", 0, 0, 1]),
        ("normalise_arm64", ["CODE", 0, 0, 1, b"", 0]),
        ("normalise_arm64", [b"", 0, 0, 1, "CODE", 0]),
        ("normalise_x64", [b"", 0, 0, 1, "CODE", 0]),
    ],
)
def test_non_contiguous_buffers_are_type_errors(name: str, args: list[object]) -> None:
    # "y*" raised BufferError; the twins' memoryview.cast raises TypeError
    strided = memoryview(bytearray(range(32)))[::2]
    args = [strided if a == "CODE" else a for a in args]
    native, twin = _both(name, *args)
    assert native[0] == twin[0] == "TypeError"


def test_x64_refuses_non_contiguous_code() -> None:
    # the twin copies any buffer with bytes(): a known divergence of the twin
    with pytest.raises(TypeError):
        _native.normalise_x64(memoryview(bytearray(32))[::2], 0, 0, 1, b"", 0)
