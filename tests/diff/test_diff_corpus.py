"""Real MSVC-built pairs: the diff completes, and every modified verdict has evidence."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hpatch.blockers import BlockerCause
from hpatch.diff import Status, diff_images, fingerprint_function
from hpatch.image import load_image

from ..conftest import corpus_binaries

PAIRS = sorted({(pair_id, Path(str(p)).parent) for pair_id, _, p in corpus_binaries()})


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("pair_id", "folder"), PAIRS, ids=[p for p, _ in PAIRS])
def test_corpus_pair_diffs_with_evidence(pair_id: str, folder: Path) -> None:
    old_path, new_path = (next(folder.glob(f"{which}.*")) for which in ("old", "new"))
    old, new = load_image(old_path), load_image(new_path)
    result = diff_images(old, new)
    summary = result.summary()
    assert summary["unchanged"] + summary["modified"] + summary["removed"] == len(old.functions)
    assert summary["unchanged"] + summary["modified"] + summary["added"] == len(new.functions)
    for blocker in result.blockers:
        assert blocker.where and blocker.reason
        # A fragment of an unchanged function binds to its old counterpart's fragment.
        assert blocker.cause != BlockerCause.FRAGMENT_OF_UNCHANGED_FUNCTION, blocker
    modified = list(result.with_status(Status.MODIFIED))
    for change in random.Random(pair_id).sample(modified, min(25, len(modified))):
        assert change.old is not None and change.new is not None
        before = fingerprint_function(old, change.old)
        after = fingerprint_function(new, change.new)
        if before.digest != after.digest:
            assert change.reason == "code differs"
            continue
        # Same normalised code: the evidence is a reference that no longer corresponds.
        if len(before.references) != len(after.references):
            continue
        assert change.differing_references is not None, change
        a, b = change.differing_references
        assert a in before.references and b in after.references
        assert a.kind != b.kind or not result.correspondence.same(a.target_rva, b.target_rva)
    for change in random.Random(pair_id).sample(
        list(result.with_status(Status.UNCHANGED)), min(25, summary["unchanged"])
    ):
        assert change.old is not None and change.new is not None
        assert (
            fingerprint_function(old, change.old).digest
            == fingerprint_function(new, change.new).digest
        )
