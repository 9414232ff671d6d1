"""The builder's refusals are blockers with a cause and a place in the new build."""

from __future__ import annotations

import dataclasses

import pytest

import hpatch.package.build.data
from hpatch.arch.relocate import RelocationError
from hpatch.blockers import BlockerCause, BlockerClass, BlockerKind, Build, function_label
from hpatch.diff import Status
from hpatch.image import Function
from hpatch.package import PackageBlocked, build_package

from ..conftest import BUILDS
from ..diff.samples import sample_diff


def refused(build: str) -> tuple[PackageBlocked, dict[str, Function]]:
    """The blockers of building v1 -> v3, and its carried functions by label."""
    diff = sample_diff(build, "v1", "v3")
    with pytest.raises(PackageBlocked) as blocked:
        build_package(diff)
    carried = {
        function_label(c.new): c.new
        for c in diff.changes
        if c.new is not None and c.status in (Status.MODIFIED, Status.ADDED)
    }
    return blocked.value, carried


@pytest.mark.parametrize("build", BUILDS)
def test_new_data_the_package_cannot_carry(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no new constant small enough to carry, each is refused where it lies and each
    field naming one where the field is."""
    monkeypatch.setattr(hpatch.package.build.data, "_MAX_CONSTANT", 0)
    blocked, carried = refused(build)
    causes = {b.cause for b in blocked.blockers}
    assert causes == {BlockerCause.NEW_DATA_TOO_LARGE, BlockerCause.NEW_DATA_NOT_CARRIED}
    too_large = {b.rva: b for b in blocked.blockers if b.cause == BlockerCause.NEW_DATA_TOO_LARGE}
    for blocker in blocked.blockers:
        assert blocker.kind == BlockerKind.UNRESOLVED_REFERENCE
        assert blocker.blocker_class == BlockerClass.LIMITATION
        assert blocker.build == Build.NEW and blocker.rva is not None
        if blocker.cause == BlockerCause.NEW_DATA_TOO_LARGE:
            assert blocker.section == ".rdata" and blocker.function is None
            assert blocker.end_rva is not None and blocker.rva < blocker.end_rva
            assert blocker.where == f"new data at 0x{blocker.rva:x}"
        else:
            assert blocker.function in carried
            assert carried[blocker.function].contains(blocker.rva)
            assert blocker.target_rva in too_large


@pytest.mark.parametrize("build", ["x64-gcc", "arm64-clang"])
def test_code_the_relocator_refuses(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise RelocationError("undecodable instruction at 0x1234")

    diff = sample_diff(build, "v1", "v3")
    monkeypatch.setattr(type(diff.new.arch), "code_fixups", refuse)
    blocked, carried = refused(build)
    assert {b.cause for b in blocked.blockers} == {BlockerCause.RELOCATION_ERROR}
    assert sorted((b.function, b.rva) for b in blocked.blockers) == sorted(
        (label, function.rva) for label, function in carried.items()
    )
    assert all(b.reason == "undecodable instruction at 0x1234" for b in blocked.blockers)


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_a_redirect_the_builder_cannot_fit_is_placed_in_the_old_build(
    build: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    diff = sample_diff(build, "v1", "v2")
    monkeypatch.setattr(type(diff.old.arch), "redirect_strategy", lambda *_: None)
    with pytest.raises(PackageBlocked) as blocked:
        build_package(dataclasses.replace(diff, blockers=()))
    modified = {c.old.rva: c.old for c in diff.with_status(Status.MODIFIED) if c.old is not None}
    assert {b.rva for b in blocked.value.blockers} == set(modified)
    for blocker in blocked.value.blockers:
        assert blocker.kind == BlockerKind.TOO_SMALL
        assert blocker.cause == BlockerCause.NO_REDIRECT_ROOM
        assert blocker.build == Build.OLD
        assert blocker.function == function_label(modified[blocker.rva])  # type: ignore[index]


@pytest.mark.parametrize("build", ["x64-clang"])
def test_a_blocked_diff_is_refused_with_its_own_blockers(build: str) -> None:
    diff = sample_diff(build, "v1", "v4")
    with pytest.raises(PackageBlocked) as blocked:
        build_package(diff)
    assert blocked.value.blockers == diff.blockers
    assert all(b.blocker_class == BlockerClass.HAZARD for b in blocked.value.blockers)


@pytest.mark.parametrize("build", ["x64-gcc", "arm64-clang"])
def test_carried_data_has_a_bound(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """New data, and the new data it points at in turn, is carried up to a bound."""
    monkeypatch.setattr(hpatch.package.build.data, "_MAX_CONSTANT_CLOSURE", 0)
    with pytest.raises(PackageBlocked) as blocked:
        build_package(sample_diff(build, "v1", "v3"))
    causes = [b.cause for b in blocked.value.blockers]
    assert set(causes) == {BlockerCause.NEW_DATA_TOO_LARGE, BlockerCause.NEW_DATA_NOT_CARRIED}
    (too_large,) = [b for b in blocked.value.blockers if b.cause == BlockerCause.NEW_DATA_TOO_LARGE]
    assert "in turn, exceed 0 bytes" in too_large.reason
