"""Diffs of the stripped sample builds: correct matches, no spurious changes."""

from __future__ import annotations

import pytest

from hpatch.diff import MatchRule, Status, diff_images
from hpatch.diff.match import _Matcher
from hpatch.image import load_image

from ..conftest import BUILDS, SAMPLES, read_truth
from .samples import sample_diff
from .test_fingerprint import rebase

PAIRS = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"), ("v1", "v4"))


def names_by_rva(build: str, version: str) -> dict[int, str]:
    rows = read_truth(SAMPLES / build / version / "sample.funcs.tsv")
    return {row.rva: row.name for row in rows if not row.parent}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_stripped_builds_match_the_same_functions(build: str, old: str, new: str) -> None:
    result = sample_diff(build, old, new)
    old_names, new_names = names_by_rva(build, old), names_by_rva(build, new)
    for match in result.matches:
        assert old_names[match.old_rva] == new_names[match.new_rva], match
    # Every function present in both versions is matched, none is left out.
    common = set(old_names.values()) & set(new_names.values())
    assert {old_names[m.old_rva] for m in result.matches} == common
    assert {MatchRule.FINGERPRINT, MatchRule.NAME} & {m.rule for m in result.matches}


@pytest.mark.parametrize("build", BUILDS)
def test_an_image_against_itself_and_a_rebased_copy_has_no_changes(build: str) -> None:
    path = SAMPLES / build / "v1" / "sample.stripped.dll"
    original = load_image(path)
    for other in (load_image(path), load_image(rebase(path.read_bytes(), 0x7FF6_0000_0000))):
        result = diff_images(original, other)
        summary = result.summary()
        assert summary["unchanged"] == len(original.functions)
        assert summary["modified"] == summary["added"] == summary["removed"] == 0


@pytest.mark.parametrize("build", BUILDS)
def test_month_one_changes_exactly_the_fixed_functions(build: str) -> None:
    result = sample_diff(build, "v1", "v2")
    new_names = names_by_rva(build, "v2")
    modified = {new_names[c.new.rva] for c in result.with_status(Status.MODIFIED) if c.new}
    added = {new_names[c.new.rva] for c in result.with_status(Status.ADDED) if c.new}
    # bugs A (hp_json_escape) and B (hp_array_unpack); hp_version returns a new constant
    assert modified == {"hp_json_escape", "hp_array_unpack", "hp_version"}
    assert added == {"mul_overflows_u32"}
    assert result.with_status(Status.REMOVED) == ()
    for change in result.with_status(Status.MODIFIED):
        assert change.reason


def diff_truth(build: str, old: str, new: str) -> dict[str, set[str]]:
    lines = (SAMPLES / build / f"diff-{old}-{new}.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["name", "status", "old_rva", "new_rva"]
    rows = [line.split("\t") for line in lines[1:]]
    return {
        status: {r[0] for r in rows if r[1] == status}
        for status in ("modified", "added", "removed")
    }


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_stripped_diff_equals_the_compiler_truth(build: str, old: str, new: str) -> None:
    """The truth comes from the compiler's objects (samples/tools/difftruth.py)."""
    result = sample_diff(build, old, new)
    old_names, new_names = names_by_rva(build, old), names_by_rva(build, new)
    found = {
        "modified": {new_names[c.new.rva] for c in result.with_status(Status.MODIFIED) if c.new},
        "added": {new_names[c.new.rva] for c in result.with_status(Status.ADDED) if c.new},
        "removed": {old_names[c.old.rva] for c in result.with_status(Status.REMOVED) if c.old},
    }
    assert found == diff_truth(build, old, new)
    assert result.hotpatchable == (new != "v4")


@pytest.mark.parametrize("build", BUILDS)
def test_growing_one_early_function_reports_only_that_function(build: str) -> None:
    """grown-v1 is v1 with DllMain grown, so every later function moves."""
    old_names, new_names = names_by_rva(build, "v1"), names_by_rva(build, "grown-v1")
    moved = {
        name for rva, name in new_names.items() if {v: k for k, v in old_names.items()}[name] != rva
    }
    assert len(moved) > 80
    result = sample_diff(build, "v1", "grown-v1")
    modified = [c for c in result.changes if c.status != Status.UNCHANGED]
    assert [(c.status, new_names[c.new.rva]) for c in modified if c.new] == [
        (Status.MODIFIED, "DllMain")
    ]
    assert (
        len(modified) == 1 and modified[0].match and modified[0].match.rule == MatchRule.ENTRY_POINT
    )
    assert result.hotpatchable


@pytest.mark.parametrize("build", ["x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang"])
def test_functions_held_at_the_same_data_slot_are_paired_as_the_full_diff_pairs_them(
    build: str,
) -> None:
    """The data-slot rule on its own (nothing matched before it) pairs the functions
    the samples' handler tables in .data hold, exactly as the whole diff does."""
    diff = sample_diff(build, "v1", "v3")
    matcher = _Matcher(diff.correspondence.old, diff.correspondence.new)
    slots = matcher.data_slots()
    assert slots, "the samples keep function pointers in .data"
    taken = matcher.by_data_slot()
    assert taken == len({old for old, *_ in slots}) > 0
    truth = {m.old_rva: m.new_rva for m in diff.matches}
    assert all(truth[old] == match.new_rva for old, match in matcher.forward.items())
    assert {m.rule for m in matcher.forward.values()} == {MatchRule.DATA_SLOT}
