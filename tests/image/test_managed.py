"""A .NET image of IL only holds no native code to replace: it is refused when read,
naming the file; the same image without the ILONLY flag (mixed code) is read."""

from __future__ import annotations

import struct

import pefile
import pytest

from hpatch.errors import UnsupportedError
from hpatch.image import load_image

from ..conftest import SAMPLES

COR20_SIZE = 72


def with_clr_header(build: str, flags: int) -> bytes:
    """The sample with a CLR runtime header (IMAGE_COR20_HEADER) at the start of its
    first read-only data section, named by data directory 14."""
    pe = pefile.PE(str(SAMPLES / build / "v1" / "sample.stripped.dll"), fast_load=True)
    section = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".rdata")
    header = struct.pack("<IHH", COR20_SIZE, 2, 5) + bytes(8) + struct.pack("<I", flags)
    pe.set_bytes_at_rva(section.VirtualAddress, header.ljust(COR20_SIZE, b"\0"))
    directory = pe.OPTIONAL_HEADER.DATA_DIRECTORY[14]
    directory.VirtualAddress, directory.Size = section.VirtualAddress, COR20_SIZE
    return bytes(pe.write())


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_an_il_only_image_is_refused(build: str) -> None:
    with pytest.raises(UnsupportedError, match="IL only") as refused:
        load_image(with_clr_header(build, flags=0x1), name="managed.dll")
    assert str(refused.value).startswith("managed.dll: ")
    # a mixed image (native code beside the IL) is read as any other
    assert load_image(with_clr_header(build, flags=0x0), name="mixed.dll").functions
