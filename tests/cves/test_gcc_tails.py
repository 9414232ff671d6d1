"""sqlite3's x64-gcc updates of the CVE corpus (../shared/cves), skipped when it is not
built: gcc's btreeNext clone tail-calls the function laid out right after it with a
`jmp rel8`, which reaches the old function from the package through a range-extension
veneer; and v2's new tables of pointers to new strings (the column type names) are
carried with the strings they point at. Each update packages, passes both checks (a
carried function stores two function pointers through a random pointer argument, off
the 8-byte grid emulation compares memory in: they still compare as addresses), and
reports the modified functions the ground truth names."""

from __future__ import annotations

import json

import pytest

from hpatch.arch.rewrite import Fixup
from hpatch.diff import Status, diff_images
from hpatch.image import load_image
from hpatch.package import BuildOptions
from hpatch.package.model import BlobKind, Package, TargetKind
from hpatch.verify import Outcome, build_verified_package

from ..conftest import CVE_ABSENT, cve_pairs

PAIRS = {pair.pair_id: pair for pair in cve_pairs()}
#: The pairs, and whether the new build has the new tables of pointers to new strings.
TAILS = {
    "sqlite3-x64-gcc-v0-v1": False,
    "sqlite3-x64-gcc-v1-v2": True,
    "sqlite3-x64-gcc-v0-v2": True,
}


def veneers(package: Package) -> list[tuple[str, int]]:
    """(function, region offset) of each veneer: a `jmp rel32` after the function's parts
    in its code blob, its field an X64_REL32 fixup."""
    fixups = {f.offset: f for f in package.fixups}
    found = []
    for function in package.functions:
        start = min(p.offset for p in function.parts)
        end = max(p.offset + p.size for p in function.parts)
        (blob,) = [b for b in package.blobs if b.kind == BlobKind.CODE and b.offset == start]
        for at in range(end, blob.offset + blob.size, 5):
            assert blob.data[at - blob.offset] == 0xE9
            assert fixups[at + 1].kind == Fixup.X64_REL32
            found.append((function.name or f"sub_{function.new_rva:x}", at))
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pair_id", sorted(TAILS))
def test_gcc_tail_calls_and_new_string_tables_package(pair_id: str) -> None:
    pair = PAIRS.get(pair_id)
    if pair is None:
        pytest.skip(CVE_ABSENT)
    diff = diff_images(load_image(pair.old), load_image(pair.new))
    truth = json.loads(pair.truth.read_text())
    names = {start: name for name, (start, _end) in truth["old_funcs"].items()}
    modified = {names.get(c.old.rva) for c in diff.with_status(Status.MODIFIED) if c.old}
    assert modified == set(truth["modified"])
    # As `hpatch diff -o` does: built, then proven by both checks (or refused).
    package, report = build_verified_package(diff, BuildOptions())
    assert report is not None and report.passed
    assert all(f.translation == Outcome.PASSED for f in report.functions)

    # The carried btreeNext clone reaches sqlite3BtreeNext's clone, unchanged and laid
    # right after it, through one veneer bound to the old build's copy of it.
    ((name, at),) = veneers(package)
    function = next(f for f in package.functions if (f.name or f"sub_{f.new_rva:x}") == name)
    (part,) = function.parts
    jump = next(f for f in package.fixups if f.offset == at + 1)
    assert jump.target_kind == TargetKind.OLD_RVA
    following = next(m.new_rva for m in diff.matches if m.old_rva == jump.target)
    assert 0 < following - (part.new_rva + part.size) < 16
    assert diff.new.function_at(following).rva == following  # type: ignore[union-attr]

    # Pointers in carried data to other new data are bound into the package's own copy.
    rodata = [b for b in package.blobs if b.kind == BlobKind.RODATA]

    def in_rodata(offset: int) -> bool:
        return any(b.offset <= offset < b.offset + b.size for b in rodata)

    chained = [
        f
        for f in package.fixups
        if f.kind == Fixup.X64_ADDR64
        and in_rodata(f.offset)
        and f.target_kind == TargetKind.REGION
        and in_rodata(f.target)
    ]
    assert bool(chained) == TAILS[pair_id]
