"""The structure-layout check decodes less than the whole of both builds of a function:
what it decodes must be what decoding the whole would give."""

from __future__ import annotations

import pytest

from hpatch.diff.layout_shift import _texts_in_steps, _Words
from hpatch.image import PEImage, load_image

from ..conftest import BUILDS, SAMPLES


def _image(build: str) -> PEImage:
    return load_image(SAMPLES / build / "v1" / "sample.dll")


@pytest.mark.parametrize("build", [b for b in BUILDS if b.startswith("x64")])
def test_texts_in_steps_are_the_whole_decode(build: str) -> None:
    image = _image(build)
    for function in image.functions:
        code = image.read(function.rva, function.size)
        # Whole functions, one cut off inside an instruction, and one with bytes that
        # start no instruction in the middle: the stream stops where the decode does.
        for piece in (code, code[:-1], code[:40] + b"\x0f\x0b\xff\xff" * 3 + code[40:]):
            whole = image.arch.instruction_texts(piece, function.rva)
            assert list(_texts_in_steps(image, piece, function.rva)) == whole


def test_each_word_decoded_once_is_the_batch_decode() -> None:
    image = _image("arm64-clang")
    words = _Words(image)
    for function in image.functions:
        code = image.read(function.rva, function.size)
        batch = [code[at : at + 4] for at in range(0, len(code), 4)]
        texts = words.texts(batch)
        decoded = image.arch.instruction_texts(b"".join(batch), 0)
        if texts is None:
            assert len(decoded) < len(batch)  # a word of data among the code
            continue
        fields = words.fields(batch)
        assert fields == image.arch.field_offsets(b"".join(batch), 0)
        for text, (_, _, whole), (shape, offsets) in zip(texts, decoded, fields, strict=True):
            if text != whole:
                # Capstone writes a target below 10 in decimal, which the text keeps: a
                # PC-relative word's text can follow where it is decoded, its fields not.
                assert text.split(" ", 1)[0] == whole.split(" ", 1)[0]
                assert "target" in shape and not offsets


class _Code:
    """An image as the check reads it: a machine and code at RVAs."""

    def __init__(self, arch: object, parts: dict[int, bytes]) -> None:
        self.arch = arch
        self.parts = parts

    def read(self, rva: int, size: int) -> bytes:
        return self.parts[rva][:size]


def _assemble(source: str) -> bytes:
    import keystone

    encoding, _ = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN).asm(source)
    return bytes(encoding)


def _arm64_change(entry: tuple[str, str], tail: tuple[str, str]) -> tuple[object, object, object]:
    """Two builds of an ARM64 function of two parts, and the change pairing them."""
    from hpatch.arch.arm64 import Arm64
    from hpatch.diff.classify import FunctionChange, Status
    from hpatch.image import Function
    from hpatch.image.model import Fragment

    arch = Arm64()
    builds, functions = [], []
    for entry_code, tail_code in zip(entry, tail, strict=True):
        head, rest = _assemble(entry_code), _assemble(tail_code)
        builds.append(_Code(arch, {0x1000: head, 0x2000: rest}))
        functions.append(
            Function(0x1000, len(head), None, (), fragments=(Fragment(0x2000, len(rest)),))
        )
    change = FunctionChange(Status.MODIFIED, functions[0], functions[1], None, "code differs")
    return builds[0], builds[1], change


_ENTRY = (
    "ldr x0, [x19, #0x40]; ldr x1, [x19, #0x48]; str x1, [x20, #0x50]",
    "ldr x0, [x19, #0x48]; ldr x1, [x19, #0x50]; str x1, [x20, #0x58]",
)


def test_a_shift_in_every_part_is_a_layout_shift() -> None:
    from hpatch.diff.layout_shift import _only_shift

    old, new, change = _arm64_change(
        _ENTRY, ("ldr x2, [x19, #0x60]; ret", "ldr x2, [x19, #0x68]; ret")
    )
    assert _only_shift(old, new, change, (_Words(old), _Words(new))) == (8, 0x40)


def test_a_part_that_changes_otherwise_is_no_layout_shift() -> None:
    # The entry parts differ by a shift alone; the second part adds an instruction.
    from hpatch.diff.layout_shift import _only_shift

    old, new, change = _arm64_change(
        _ENTRY, ("ldr x2, [x19, #0x60]; nop; ret", "ldr x2, [x19, #0x68]; add x2, x2, #1; ret")
    )
    assert _only_shift(old, new, change, (_Words(old), _Words(new))) is None
    old, new, change = _arm64_change(_ENTRY, ("ldr x2, [x19, #0x60]; ret", "mov x2, #0; ret"))
    assert _only_shift(old, new, change, (_Words(old), _Words(new))) is None


def test_x64_displacements_from_the_image_base_are_not_field_offsets() -> None:
    from capstone import x86_const

    from hpatch.arch.x64 import X64

    arch = X64()
    # lea r14, [rip - 0x82607] at 0x82600: the image base, as MSVC loads it
    lea = bytes.fromhex("4c8d35f9d9f7ff")
    assert arch.image_base_registers(lea, 0x82600) == {x86_const.X86_REG_R14}
    assert arch.image_base_registers(lea, 0x82604) == frozenset()  # another target
    assert arch.image_base_registers(b"\x90" + lea, 0x825FF) == {x86_const.X86_REG_R14}
    # movzx eax, byte ptr [r8 + r14 + 0xbc150]: a table indexed from the image base
    table = bytes.fromhex("430fb6843050c10b00")
    ((shape, offsets),) = arch.field_offsets(table, 0x82750)
    assert offsets == (0xBC150,) and "field" in shape
    bases = frozenset({x86_const.X86_REG_R14})
    ((shape, offsets),) = arch.field_offsets(table, 0x82750, bases)
    assert offsets == () and "image" in shape
    # mov rax, [r14 + 0x10] with r14 the base register: also an RVA
    ((shape, offsets),) = arch.field_offsets(bytes.fromhex("498b4610"), 0x1000, bases)
    assert offsets == () and "image" in shape
    # a scaled index is an array's, not the image base's
    ((_, offsets),) = arch.field_offsets(bytes.fromhex("438b04b0"), 0x1000, bases)
    assert offsets == (0,)
