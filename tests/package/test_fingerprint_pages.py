"""The builder checks the relocator's fixups against the references the diff saw. The
diff's ARM64 scan takes a register for an ADRP's page until the next write in address
order; the relocator follows it along the control flow. Where the scan sees a page
completed that the flow rules out, after an ADRP of that page, the relocator's answer
stands (tests/arch/test_arm64_relocate.py has the shape on hand-made words); any other
reference without a field still refuses the package."""

from __future__ import annotations

import dataclasses

import pytest

from hpatch.arch import Reference, RefKind
from hpatch.blockers import BlockerCause
from hpatch.diff import DiffResult
from hpatch.package import PackageBlocked, build_package

from ..diff.samples import sample_diff

# hp_json_escape of the ARM64 sample v2: ADRP x27 (page 0x4000) at 0x2028, completed
# at 0x2040; a call at 0x20e0; a store through x29 (a stack slot) at 0x20e4.
FUNCTION = 0x2000
ADRP = 0x2028
CALL = 0x20E0
PLAIN_STORE = 0x20E4


def diff_seeing(monkeypatch: pytest.MonkeyPatch, site: int, target: int) -> DiffResult:
    """The sample diff, with the new build's fingerprint of hp_json_escape naming
    ``target`` from ``site`` as well."""
    diff = sample_diff("arm64-clang", "v1", "v2")
    fingerprints = diff.correspondence.new.fingerprints
    fingerprint = fingerprints[FUNCTION]
    assert any(r.site_rva == ADRP and r.target_rva // 4096 == 4 for r in fingerprint.references)
    extra = Reference(site, RefKind.ADDRESS, target)
    monkeypatch.setitem(
        fingerprints,
        FUNCTION,
        dataclasses.replace(fingerprint, references=(*fingerprint.references, extra)),
    )
    return diff


def test_a_completion_the_flow_rules_out_after_an_adrp_of_its_page_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build_package(diff_seeing(monkeypatch, PLAIN_STORE, 0x4004))


@pytest.mark.parametrize(
    ("site", "target"),
    [
        (PLAIN_STORE, 0x7004),  # no ADRP of the code sets that page
        (0x2018, 0x4004),  # before the only ADRP of that page
        (CALL, 0x4004),  # the relocator rebinds the site as something else
    ],
)
def test_any_other_reference_without_a_field_is_refused(
    monkeypatch: pytest.MonkeyPatch, site: int, target: int
) -> None:
    with pytest.raises(PackageBlocked) as blocked:
        build_package(diff_seeing(monkeypatch, site, target))
    (blocker,) = blocked.value.blockers
    assert blocker.cause == BlockerCause.FIELD_NOT_LOCATED
    assert (blocker.rva, blocker.target_rva) == (site, target)
