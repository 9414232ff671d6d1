"""A new import that only carried code uses is no blocker (the package carries a slot for
it), and the import directory's tables are not writable globals."""

from __future__ import annotations

import pytest

from hpatch.diff import diff_images
from hpatch.diff.correlate import Correlator, Resolution
from hpatch.image import load_image

from ..conftest import BUILDS, CVE_ABSENT, cve_pairs
from .samples import sample_diff

NGHTTP2 = [p for p in cve_pairs() if p.pair_id.startswith("nghttp2-") and "-v0-v1" in p.pair_id]


@pytest.mark.parametrize("build", BUILDS)
def test_a_new_import_used_by_carried_code_resolves_to_a_slot_to_carry(build: str) -> None:
    diff = sample_diff(build, "v3", "import-v3")
    assert diff.blockers == ()
    (added,) = [i for i in diff.new.imports if i.name == "host_log_count"]
    assert not any(i.name == "host_log_count" for i in diff.old.imports)
    correspondence = diff.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, diff.changes)
    resolutions = [
        resolved
        for change in diff.changes
        if change.new is not None and change.new.rva in correlator.carried
        for resolved in correlator.resolve_function(change)
        if resolved.reference.target_rva == added.iat_rva
    ]
    assert resolutions
    assert {r.resolution for r in resolutions} == {Resolution.NEW_IMPORT}
    assert {r.detail for r in resolutions} == {"new import samplehost.dll!host_log_count"}


def test_gnu_lds_writable_idata_grows_with_the_import_and_holds_no_globals() -> None:
    diff = sample_diff("x64-gcc", "v3", "import-v3")
    old, new = (
        next(s for s in image.sections if s.name == ".idata") for image in (diff.old, diff.new)
    )
    assert old.is_writable and new.virtual_size > old.virtual_size
    assert diff.old.import_ranges == ((old.rva, old.rva + old.virtual_size),)
    assert diff.new.import_ranges == ((new.rva, new.rva + new.virtual_size),)
    assert diff.blockers == ()


@pytest.mark.skipif(not NGHTTP2, reason=CVE_ABSENT)
@pytest.mark.parametrize("pair", NGHTTP2, ids=[p.pair_id for p in NGHTTP2])
def test_nghttp2_gains_an_import_and_is_refused_for_its_data_changes_only(pair) -> None:  # type: ignore[no-untyped-def]
    result = diff_images(load_image(pair.old), load_image(pair.new))
    old_names = {(i.dll.lower(), i.name) for i in result.old.imports}
    added = {i.name for i in result.new.imports if (i.dll.lower(), i.name) not in old_names}
    assert "GetTickCount64" in added
    # the new export, and the session and option structures the fix grows (every
    # function touching a later field shifts alike): hazards only
    causes = [b.cause.value for b in result.blockers]
    assert causes[0] == "export_added" and set(causes[1:]) == {"struct_layout_changed"}
    assert all(b.blocker_class.value == "hazard" for b in result.blockers)
