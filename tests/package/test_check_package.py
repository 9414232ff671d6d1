"""``check_package`` gives the verdict ``build_package`` gives, without coding the region."""

from __future__ import annotations

import pytest

import hpatch.package.build as build_module
from hpatch.package import PackageBlocked, build_package, check_package, encode_package
from hpatch.package.format import code_region

from ..conftest import BUILDS
from ..diff.samples import sample_diff
from .packages import OPTIONS


@pytest.mark.parametrize("build", BUILDS)
def test_the_checked_package_codes_to_the_built_one(build: str) -> None:
    diff = sample_diff(build, "v1", "v3")
    checked = check_package(diff, OPTIONS)
    built = build_package(diff, OPTIONS)
    assert checked.coding is None and built.coding is not None
    coded = code_region(checked, diff.old.mapped, build_module._dictionary_hints(diff.old, checked))
    assert encode_package(coded) == encode_package(built)


@pytest.mark.parametrize("build", BUILDS)
def test_a_refused_update_is_refused_alike(build: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_module.data, "_MAX_CONSTANT", 0)
    diff = sample_diff(build, "v1", "v3")
    with pytest.raises(PackageBlocked) as by_check:
        check_package(diff, OPTIONS)
    with pytest.raises(PackageBlocked) as by_build:
        build_package(diff, OPTIONS)
    assert by_check.value.blockers == by_build.value.blockers
    assert by_check.value.blockers


def test_checking_does_not_code(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_coding(*_: object) -> None:
        raise AssertionError("the region was coded")

    monkeypatch.setattr(build_module, "code_region", no_coding)
    assert check_package(sample_diff("x64-clang", "v1", "v2"), OPTIONS).functions


def test_diff_json_checks_without_coding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``hpatch diff --json`` gives the verdict of a bound, valid package, and codes
    nothing: only ``-o`` writes one."""
    import json

    from hpatch.cli import main

    from ..conftest import SAMPLES

    def no_coding(*_: object) -> None:
        raise AssertionError("the region was coded")

    monkeypatch.setattr(build_module, "code_region", no_coding)
    old, new = (SAMPLES / "x64-gcc" / v / "sample.stripped.dll" for v in ("v1", "v2"))
    with pytest.raises(SystemExit) as exited:
        main(["diff", "--json", str(old), str(new)])
    assert exited.value.code in (0, None)
    document = json.loads(capsys.readouterr().out)
    assert document["hotpatchable"] is True and document["blockers"] == []
    monkeypatch.setattr(build_module.data, "_MAX_CONSTANT", 0)
    with pytest.raises(SystemExit) as exited:
        main(["diff", "--json", str(old), str(new)])
    refused = json.loads(capsys.readouterr().out)
    assert exited.value.code == 3 and refused["hotpatchable"] is False
    assert {b["cause"] for b in refused["blockers"]} >= {"new_data_too_large"}
