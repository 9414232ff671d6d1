"""A writable section only the new build has (a build's first initialised global gives
one): the code naming it names data only the new build has. The verdict refuses the
update for the section's appearance, a hazard, and adds no limitation for each
reference into it (expat 2.5.0's CVE-2024-50602 fix, on clang, names two new globals in
a .data the old build lacks)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hpatch.blockers import BlockerCause, BlockerClass
from hpatch.diff import diff_images
from hpatch.diff.correlate import Correlator, Resolution
from hpatch.image import load_image

from ..conftest import SAMPLES


def renamed(source: Path, old_name: bytes, new_name: bytes, path: Path) -> Path:
    """``source`` with its section ``old_name`` renamed, written to ``path``."""
    raw = bytearray(source.read_bytes())
    pe = struct.unpack_from("<I", raw, 0x3C)[0]
    count = struct.unpack_from("<H", raw, pe + 6)[0]
    optional = struct.unpack_from("<H", raw, pe + 20)[0]
    table = pe + 24 + optional
    for index in range(count):
        at = table + 40 * index
        if raw[at : at + 8].rstrip(b"\0") == old_name:
            raw[at : at + 8] = new_name.ljust(8, b"\0")
            path.write_bytes(raw)
            return path
    raise AssertionError(f"no {old_name!r} section")


@pytest.mark.parametrize("build", ["x64-clang", "x64-gcc", "arm64-clang"])
def test_references_into_an_added_section_are_new_data(build: str, tmp_path: Path) -> None:
    old = load_image(
        renamed(SAMPLES / build / "v1" / "sample.stripped.dll", b".data", b".datb", tmp_path / "o")
    )
    new = load_image(SAMPLES / build / "v3" / "sample.stripped.dll")
    diff = diff_images(old, new)
    causes = {b.cause for b in diff.blockers}
    assert BlockerCause.WRITABLE_SECTION_ADDED in causes
    assert all(b.blocker_class == BlockerClass.HAZARD for b in diff.blockers), causes
    data = next(s for s in new.sections if s.name == ".data")
    correspondence = diff.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, diff.changes)
    into_data = [
        correlator.resolve(reference)
        for change in diff.changes
        if change.new is not None and change.status.value in ("modified", "added")
        for reference in correspondence.new.fingerprints[change.new.rva].references
        if data.contains(reference.target_rva)
    ]
    assert into_data, "the carried code names the new build's .data"
    assert {r.resolution for r in into_data} == {Resolution.NEW_DATA}
