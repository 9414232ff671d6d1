"""Discovery asks the arch where a linear decode finds references: each machine's quick
answer is the one its normaliser's references give."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpatch.arch import Arch
from hpatch.image import load_image

from ..conftest import SAMPLES


@pytest.mark.parametrize(
    "path",
    sorted(SAMPLES.glob("*/v1/sample.dll")),
    ids=lambda p: p.parent.parent.name,
)
def test_reference_sites_are_the_normalisers(path: Path) -> None:
    image = load_image(path)
    arch = image.arch
    assert type(arch).reference_sites is not Arch.reference_sites
    found = 0
    for function in image.functions:
        code = image.read(function.rva, function.size)
        sites = arch.reference_sites(code, function.rva)
        assert sites == Arch.reference_sites(arch, code, function.rva), hex(function.rva)
        found += len(sites)
    assert found > 100
