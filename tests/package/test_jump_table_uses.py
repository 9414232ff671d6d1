"""Only an address taken can be a jump table's base: a constant the carried code loads
(clang's 16-byte SSE range constants in libxml2's xmlParseName, whose lanes happen to
read as int32 offsets into .text) is data to bind, never a table to refuse."""

from __future__ import annotations

import pytest

from hpatch.arch import RefKind
from hpatch.blockers import BlockerCause
from hpatch.diff import Status
from hpatch.diff.classify import Correspondence
from hpatch.package import PackageBlocked, build_package
from hpatch.package.build.context import BuildOptions, Context

from ..diff.samples import sample_diff


def rodata_references(context: Context) -> list[tuple[int, int]]:
    """(site, target) of every reference of the carried code into read-only data."""
    found = []
    fingerprints = context.diff.correspondence.new.fingerprints
    for change in context.carried:
        assert change.new is not None
        for reference in fingerprints[change.new.rva].references:
            section = context.new.section_at(reference.target_rva)
            if (
                reference.kind == RefKind.DATA
                and section is not None
                and not section.is_executable
                and not section.is_writable
            ):
                found.append((reference.site_rva, reference.target_rva))
    return found


@pytest.mark.parametrize("build", ["x64-clang", "x64-gcc", "x64-clang-hotpatch"])
def test_a_load_is_never_a_tables_base(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every read-only target taken for a jump table, only the references that
    take an address (LEA) are refused as tables; the loads (mov, movdqa, ...) bind."""
    diff = sample_diff(build, "v1", "v3")
    context = Context(diff, BuildOptions())
    references = rodata_references(context)
    loads = {site for site, _ in references if not context.takes_address(site)}
    addresses = {site for site, _ in references if context.takes_address(site)}
    assert loads and addresses, "the sample's carried code both loads and takes addresses"
    assert all(context.arch.access_size(context.read, site) for site in loads)
    monkeypatch.setattr(Correspondence, "is_jump_table", lambda self, rva: True)
    with pytest.raises(PackageBlocked) as blocked:
        build_package(diff)
    refused = {b.rva for b in blocked.value.blockers if b.cause == BlockerCause.RODATA_JUMP_TABLE}
    assert refused and refused <= addresses
    assert not refused & loads


def test_a_pointer_in_data_takes_an_address() -> None:
    diff = sample_diff("x64-clang", "v1", "v3")
    context = Context(diff, BuildOptions())
    data = next(s for s in diff.new.sections if not s.is_executable)
    assert context.takes_address(data.rva)
    code = next(c.new for c in diff.changes if c.status == Status.MODIFIED and c.new)
    assert context.takes_address(code.rva + code.size + (1 << 40)) is True  # outside any section
