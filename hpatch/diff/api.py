"""``diff_images``: the function-level diff of two builds of one PE image."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hpatch.blockers import Blocker
from hpatch.cyclic_gc import collector_paused
from hpatch.diff.classify import Correspondence, FunctionChange, Status, classify
from hpatch.diff.fingerprint import fingerprint_image
from hpatch.diff.match import Match, Side, match_functions
from hpatch.diff.verdict import find_blockers
from hpatch.errors import UnsupportedError
from hpatch.image import PEImage


@dataclass(frozen=True, slots=True)
class DiffResult:
    """Every function of either build with its status, and how the builds were matched."""

    old: PEImage
    new: PEImage
    changes: tuple[FunctionChange, ...]
    matches: tuple[Match, ...]
    blockers: tuple[Blocker, ...]
    #: How targets in the old image correspond to targets in the new one.
    correspondence: Correspondence

    @property
    def hotpatchable(self) -> bool:
        return not self.blockers

    def with_status(self, status: Status) -> tuple[FunctionChange, ...]:
        return tuple(c for c in self.changes if c.status == status)

    def summary(self) -> dict[str, int]:
        counts = Counter(c.status for c in self.changes)
        return {
            "functions_old": len(self.old.functions),
            "functions_new": len(self.new.functions),
            **{status.value: counts[status] for status in Status},
        }


def diff_images(
    old: PEImage, new: PEImage, progress: Callable[[str, int, int], None] | None = None
) -> DiffResult:
    """Match and classify the functions of two builds of the same image.

    ``progress(stage, done, total)`` reports the long stages (fingerprinting each build).
    """
    if old.identity.machine != new.identity.machine:
        raise UnsupportedError(
            f"cannot diff a {old.identity.machine.name} image against a "
            f"{new.identity.machine.name} image"
        )

    def stage(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    with collector_paused():
        old_side = Side(old, fingerprint_image(old, stage("old")))
        new_side = Side(new, fingerprint_image(new, stage("new")))
        matches = match_functions(old_side, new_side)
        correspondence = Correspondence(old_side, new_side, matches)
        changes = classify(old_side, new_side, matches, correspondence)
        blockers = find_blockers(old_side, new_side, correspondence, changes)
    return DiffResult(old, new, changes, matches, blockers, correspondence)
