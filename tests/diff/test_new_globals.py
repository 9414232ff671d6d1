"""A fix that adds globals (the samples' global-v3: a quota in .data, a count in .bss and
a pointer to a new string in .data) moves every global after them; the diff places
each old global in the new build (its layout), calls the inserted bytes new data the
package carries, and still blocks an update that changes an existing global (v4)."""

from __future__ import annotations

import pytest

from hpatch.diff.correlate import Correlator, Resolution
from hpatch.diff.data_layout import WritableLayout

from ..conftest import BUILDS, SAMPLES, read_truth
from .samples import sample_diff

NEW_GLOBALS = ("g_fail_quota", "g_fail_quieted", "g_fail_quiet_note")


def symbols(build: str, version: str) -> dict[str, int]:
    """Data symbol -> RVA, from the unstripped image of the samples (the globals: not
    the linker's section bounds such as __bss_start__)."""
    diff = sample_diff(build, version, version, stripped=False)
    return {
        s.name: s.rva
        for s in diff.new.symbols
        if not s.is_function and not s.name.startswith(("__", "."))
    }


@pytest.mark.parametrize("build", BUILDS)
def test_new_globals_are_no_blocker_and_only_the_fixed_code_changes(build: str) -> None:
    diff = sample_diff(build, "v3", "global-v3")
    assert diff.blockers == ()
    truth = {
        row.name
        for row in read_truth(SAMPLES / build / "global-v3" / "sample.funcs.tsv")
        if row.name in ("hp_fail", "hp_set_limit")
    }
    named = sample_diff(build, "v3", "global-v3", stripped=False)
    modified = {c.new.name for c in named.changes if c.status.value == "modified" and c.new}
    # clang inlines hp_fail into hp_set_limit; gcc calls it
    assert "hp_fail" in modified and modified <= truth | {"hp_fail"}
    assert not [c for c in named.changes if c.status.value in ("added", "removed")]


@pytest.mark.parametrize("build", BUILDS)
def test_every_old_global_keeps_its_place_and_the_new_ones_are_inserted(build: str) -> None:
    diff = sample_diff(build, "v3", "global-v3")
    old, new = symbols(build, "v3"), symbols(build, "global-v3")
    layouts: list[WritableLayout] = list(diff.correspondence.layouts.values())
    inserted = [span for layout in layouts for span in layout.inserted]
    for name in NEW_GLOBALS:
        assert any(a <= new[name] < b for a, b in inserted), name
    for name, rva in old.items():
        section = diff.old.section_at(rva)
        if section is None or not section.is_writable or name not in new:
            continue
        layout = diff.correspondence.layouts[section.name]
        assert layout.old_of(new[name]) == rva, name
        assert layout.new_of(rva) == new[name], name
    # nothing of an old global lies in the inserted bytes
    for name, rva in new.items():
        if name not in NEW_GLOBALS and name in old:
            assert not any(a <= rva < b for a, b in inserted), name


@pytest.mark.parametrize("build", BUILDS)
def test_the_fixed_code_names_the_new_globals_as_new_data(build: str) -> None:
    diff = sample_diff(build, "v3", "global-v3")
    correspondence = diff.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, diff.changes)
    new = symbols(build, "global-v3")
    spans = {
        layout.insertion_at(new[name])
        for layout in correspondence.layouts.values()
        for name in NEW_GLOBALS
        if layout.insertion_at(new[name]) is not None
    }
    found = {
        resolved.resolution
        for change in diff.changes
        if change.new is not None and change.new.rva in correlator.carried
        for resolved in correlator.resolve_function(change)
        if any(a <= resolved.reference.target_rva < b for a, b in spans if a is not None)
    }
    assert found == {Resolution.NEW_DATA}


@pytest.mark.parametrize("build", BUILDS)
def test_an_update_that_changes_an_existing_global_stays_blocked(build: str) -> None:
    causes = {b.cause.value for b in sample_diff(build, "v1", "v4").blockers}
    assert causes & {"writable_initial_value", "writable_data_resized"}
    assert all(b.blocker_class.value == "hazard" for b in sample_diff(build, "v1", "v4").blockers)


@pytest.mark.parametrize("build", BUILDS)
def test_a_field_inserted_into_a_structure_live_objects_have_stays_blocked(build: str) -> None:
    """struct-v3: hp_ring gains a field before head and tail; every ring function
    shifts their offsets by 4 and nothing else."""
    blockers = sample_diff(build, "v3", "struct-v3").blockers
    assert [b.cause.value for b in blockers] == ["struct_layout_changed"]
    (blocker,) = blockers
    assert blocker.blocker_class.value == "hazard"
    assert "moved by +4 bytes" in blocker.reason and "from 0xc on" in blocker.reason
    named = sample_diff(build, "v3", "struct-v3", stripped=False).blockers[0]
    assert "hp_ring_push" in named.where and "hp_ring_pop" in named.where


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("pair", [("v1", "v2"), ("v1", "v3"), ("v3", "import-v3")])
def test_fixes_that_keep_their_structures_show_no_layout_shift(
    build: str, pair: tuple[str, str]
) -> None:
    causes = {b.cause.value for b in sample_diff(build, *pair).blockers}
    assert "struct_layout_changed" not in causes
