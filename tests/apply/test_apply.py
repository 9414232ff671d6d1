"""Apply, replace and roll back sample packages; the patched functions behave like the new build."""

from __future__ import annotations

import pytest

from hpatch.apply import ApplyOptions, active_patch, apply_package, rollback
from hpatch.emu.memory import Protection

from .support import BUGS, BUILDS, REBASED, outcomes, package, process

ALLOW = ApplyOptions(allow_unsigned=True)


@pytest.fixture(scope="module", params=BUILDS)
def build(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def expected(build: str) -> dict[str, list[object]]:
    return {version: outcomes(process(build, version)) for version in ("v1", "v2", "v3")}


def test_the_bugs_misbehave_on_v1_and_not_after_their_fix(expected: dict) -> None:
    for index, bug in enumerate(BUGS):
        assert isinstance(expected["v1"][index], tuple), bug["id"]
        fixed = expected[f"v{bug['fixed_in']}"][index]
        assert fixed == bug["after"]["returns"], bug["id"]


@pytest.mark.parametrize("base", [None, REBASED], ids=["preferred", "rebased"])
def test_apply_replace_rollback_match_v2_v3_v1(
    build: str, expected: dict, base: int | None
) -> None:
    target = process(build, "v1", base)
    loaded = target.module_pages(target.main_module)
    assert outcomes(target) == expected["v1"]

    report = apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    assert report.outcome == "applied" and report.sequence == 2
    assert {r.function for r in report.redirects} >= {"hp_json_escape", "hp_array_unpack"}
    assert outcomes(target) == expected["v2"]

    report = apply_package(target, package(build, "v1", "v3", 3), options=ALLOW)
    assert report.outcome == "replaced" and report.replaced_sequence == 2
    assert outcomes(target) == expected["v3"]
    # The replaced package's region is gone: one patch region, package 3's.
    regions = [r for r in target.space.regions if "package" in r.name]
    assert [r.va for r in regions] == [report.region_va]

    rollback(target)
    assert active_patch(target.main_module) is None
    assert outcomes(target) == expected["v1"]
    assert target.module_pages(target.main_module) == loaded
    assert not [r for r in target.space.regions if "package" in r.name]


def test_redirects_land_in_region_and_are_read_only_executable(build: str) -> None:
    target = process(build)
    report = apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    for redirect in report.redirects:
        assert report.region_va <= redirect.new_va < report.region_va + report.region_size
        assert target.space.protection_at(redirect.old_va) == Protection.RX
    assert target.space.protection_at(report.region_va) == Protection.RX
    # The patch code is registered for stack walks, as RtlAddFunctionTable would.
    patched = package(build, "v1", "v2", 2)
    if patched.unwind:
        entry = target.function_tables.lookup(report.region_va + patched.unwind[0].begin_offset)
        assert entry is not None and entry.image_base == target.main_module.base


def test_same_package_twice_is_a_no_op(build: str) -> None:
    target = process(build)
    apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    before = target.space.state()
    again = apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    assert again.outcome == "already applied" and again.redirects == ()
    assert target.space.state() == before


@pytest.mark.parametrize("base", [None, REBASED], ids=["preferred", "rebased"])
def test_rollback_restores_every_byte_and_protection(build: str, base: int | None) -> None:
    target = process(build, "v1", base)
    fresh = target.space.state()
    apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    assert target.space.state() != fresh
    apply_package(target, package(build, "v1", "v3", 3), options=ALLOW)
    rollback(target)
    assert target.space.state() == fresh
