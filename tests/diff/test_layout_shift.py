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
