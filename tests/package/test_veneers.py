"""Short branches leaving the carried code reach their target through a range-extension
veneer beside the copy, and the package passes both checks.

The samples have no such branch, so the tests make one in a copy of the new build, with
the same meaning where they can: x64-clang's hp_tlv_copy_string ends with a `jmp rel32`
tail call, made a `jmp rel8` to the function laid out right after it (gcc's shape in
sqlite3's btreeNext); arm64-clang's hp_json_escape tail-calls with a `B`, made a
`B.AL` or a `TBZ wzr` (always taken) to the same target.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import capstone
import pytest

from hpatch.blockers import BlockerCause, Build
from hpatch.diff import DiffResult, diff_images
from hpatch.image import PEImage, load_image
from hpatch.package import BuildOptions, PackageBlocked, decode_package, encode_package
from hpatch.package.model import Blob, BlobKind, Package, PatchFunction, TargetKind
from hpatch.verify import Outcome, build_verified_package

from ..conftest import SAMPLES


def with_bytes(build: str, version: str, rva: int, data: bytes, path: Path) -> PEImage:
    """The stripped sample with ``data`` at ``rva``, written to ``path``."""
    source = SAMPLES / build / version / "sample.stripped.dll"
    section = load_image(source).section_at(rva)
    assert section is not None
    raw = bytearray(source.read_bytes())
    offset = section.raw_offset + rva - section.rva
    raw[offset : offset + len(data)] = data
    path.write_bytes(raw)
    return load_image(path)


def sample(build: str, version: str) -> PEImage:
    return load_image(SAMPLES / build / version / "sample.stripped.dll")


def carried(package: Package, name: str) -> PatchFunction:
    (function,) = [f for f in package.functions if f.name == name]
    return function


def code_blob(package: Package, function: PatchFunction) -> Blob:
    start = min(p.offset for p in function.parts)
    (blob,) = [b for b in package.blobs if b.kind == BlobKind.CODE and b.offset == start]
    return blob


def proven(diff: DiffResult, name: str) -> Package:
    """The package of ``diff``, proven by both checks; the function ``name`` passed."""
    package, report = build_verified_package(diff, BuildOptions())
    assert report is not None and report.passed
    (checked,) = [f for f in report.functions if f.name == name]
    assert checked.translation == Outcome.PASSED, checked.mismatches
    assert checked.emulation.outcome == Outcome.PASSED, checked.emulation
    # The veneer is plain region bytes and an ordinary fixup: the package reads back
    # as it was written, against the baseline alone.
    data = encode_package(package)
    decoded = decode_package(data, diff.old.mapped)
    assert decoded.fixups == package.fixups
    assert [b.data for b in decoded.blobs] == [b.data for b in package.blobs]
    assert encode_package(decoded) == data
    return package


def x64_tail_call(tmp_path: Path, into: int = 0) -> tuple[DiffResult, int, int]:
    """x64-clang v2 -> v3 with hp_tlv_copy_string's tail call made a `jmp rel8` to the
    function after it (``into`` bytes past its entry): the diff, the branch's RVA and
    its target."""
    new = sample("x64-clang", "v3")
    function = next(f for f in new.functions if f.name == "hp_tlv_copy_string")
    ((start, end, _),) = function.part_ranges
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    *_, last = decoder.disasm(new.read(start, end - start), start)
    assert last.mnemonic == "jmp" and last.size == 5 and last.address + 5 == end
    following = new.function_at(end)
    assert following is not None and following.rva == end  # laid right after it
    target = end + into
    jump = bytes((0xEB, target - (last.address + 2))) + b"\xcc" * 3
    changed = with_bytes("x64-clang", "v3", last.address, jump, tmp_path / "sample.dll")
    return diff_images(sample("x64-clang", "v2"), changed), last.address, target


def test_x64_rel8_tail_call_goes_through_a_veneer(tmp_path: Path) -> None:
    diff, site, target = x64_tail_call(tmp_path)
    package = proven(diff, "hp_tlv_copy_string")
    function = carried(package, "hp_tlv_copy_string")
    (part,) = function.parts
    blob = code_blob(package, function)
    # One veneer, `jmp rel32`, right after the part, bound to the old build's function.
    veneer = part.offset + part.size
    assert blob.offset + blob.size == veneer + 5
    assert blob.data[veneer - blob.offset] == 0xE9
    (fixup,) = [f for f in package.fixups if f.offset == veneer + 1]
    old = diff.old.function_at(fixup.target)
    assert fixup.target_kind == TargetKind.OLD_RVA
    assert old is not None and old.rva == fixup.target and old.name == "hp_tlv_get_u32"
    assert diff.new.function_at(target).name == "hp_tlv_get_u32"  # type: ignore[union-attr]
    # The rel8 leads to the veneer; no fixup writes it.
    field = part.offset + site + 1 - part.new_rva
    (distance,) = struct.unpack_from("<b", blob.data, field - blob.offset)
    assert field + 1 + distance == veneer
    assert not any(f.offset == field for f in package.fixups)


def test_x64_rel8_into_the_middle_of_other_code_is_refused(tmp_path: Path) -> None:
    diff, site, target = x64_tail_call(tmp_path, into=2)
    with pytest.raises(PackageBlocked) as blocked:
        build_verified_package(diff, BuildOptions())
    (blocker,) = blocked.value.blockers
    assert blocker.cause == BlockerCause.SHORT_REFERENCE_OUT_OF_REACH
    assert (blocker.rva, blocker.target_rva, blocker.build) == (site, target, Build.NEW)
    assert blocker.function == "hp_tlv_copy_string"
    assert "no function's entry" in blocker.reason


@pytest.mark.parametrize(
    ("form", "kind"),
    [
        (lambda words: 0x54000000 | (words & 0x7FFFF) << 5 | 0xE, "ARM64_BRANCH19"),  # B.AL
        (lambda words: 0x36000000 | (words & 0x3FFF) << 5 | 31, "ARM64_BRANCH14"),  # TBZ wzr
    ],
    ids=["b.al", "tbz"],
)
def test_arm64_short_tail_call_goes_through_a_veneer(
    tmp_path: Path, form: Callable[[int], int], kind: str
) -> None:
    new = sample("arm64-clang", "v2")
    function = next(f for f in new.functions if f.name == "hp_json_escape")
    ((start, end, _),) = function.part_ranges
    site = target = None
    for at in range(start, end, 4):
        (word,) = struct.unpack("<I", new.read(at, 4))
        if word & 0xFC000000 == 0x14000000:  # B
            offset = (word & 0x3FFFFFF) - ((word & 0x2000000) << 1)
            callee = new.function_at(at + 4 * offset)
            if (
                callee is not None
                and callee.rva == at + 4 * offset
                and not start <= callee.rva < end
            ):
                site, target = at, callee.rva
                break
    assert site is not None and target is not None
    word = struct.pack("<I", form((target - site) // 4))
    changed = with_bytes("arm64-clang", "v2", site, word, tmp_path / "sample.dll")
    diff = diff_images(sample("arm64-clang", "v1"), changed)
    package = proven(diff, "hp_json_escape")
    escape = carried(package, "hp_json_escape")
    (part,) = escape.parts
    blob = code_blob(package, escape)
    veneer = part.offset + part.size
    assert blob.offset + blob.size == veneer + 4
    branch = next(f for f in package.fixups if f.offset == part.offset + site - part.new_rva)
    assert (branch.kind.name, branch.target_kind, branch.target) == (
        kind,
        TargetKind.REGION,
        veneer,
    )
    jump = next(f for f in package.fixups if f.offset == veneer)
    assert (jump.kind.name, jump.target_kind) == ("ARM64_BRANCH26", TargetKind.OLD_RVA)
    old = diff.old.function_at(jump.target)
    assert old is not None and old.rva == jump.target
