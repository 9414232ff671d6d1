"""What every stage of a build reads (the diff, both images, the carried changes) and
the two things they all add to: the region and the blockers."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from hpatch.arch import RefKind
from hpatch.arch.base import Arch
from hpatch.diff.api import DiffResult
from hpatch.diff.classify import FunctionChange, Status
from hpatch.diff.correlate import Correlator
from hpatch.image import Function, PEImage
from hpatch.package.build.collector import BlockerCollector
from hpatch.package.build.region import Region

if TYPE_CHECKING:  # binding builds on the context, stages on both
    from hpatch.package.build.binding import Binder


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Servicing metadata a pipeline chooses."""

    sequence: int = 1
    supersedes: tuple[int, int] | None = None
    description: str = ""
    advisory: str = ""


class Context:
    """One build's inputs and shared products."""

    def __init__(self, diff: DiffResult, options: BuildOptions) -> None:
        self.diff, self.options = diff, options
        self.old: PEImage = diff.old
        self.new: PEImage = diff.new
        self.arch: Arch = self.new.arch
        self.correlator = Correlator(
            diff.correspondence.old, diff.correspondence.new, diff.correspondence, diff.changes
        )
        self.blockers = BlockerCollector(self.new)
        self.region = Region()
        #: The new build's relocated 8-byte fields, sorted.
        self.relocated = diff.correspondence.new.relocated
        #: The modified and added functions, in new-RVA order: the code the package carries.
        self.carried: list[FunctionChange] = sorted(
            (
                c
                for c in diff.changes
                if c.new is not None and c.status in (Status.MODIFIED, Status.ADDED)
            ),
            key=lambda c: c.new.rva,  # type: ignore[union-attr]
        )

    @cached_property
    def reference_kinds(self) -> dict[tuple[int, int], RefKind]:
        """(site, target) -> kind of every reference the diff saw in the carried code."""
        fingerprints = self.diff.correspondence.new.fingerprints
        return {
            (r.site_rva, r.target_rva): r.kind
            for change in self.carried
            for r in fingerprints[change.new.rva].references  # type: ignore[union-attr]
        }

    def read(self, rva: int, size: int) -> bytes:
        """Bytes of the new image."""
        return self.new.read(rva, size)

    def takes_address(self, site_rva: int) -> bool:
        """Whether the reference at ``site_rva`` takes its target's address (an LEA, a
        pointer in data) rather than loading or storing the bytes there: only an address
        can be a jump table's base, indexed by the code that follows. A 16-byte vector
        constant whose lanes happen to read as offsets into code is loaded, not indexed."""
        section = self.new.section_at(site_rva)
        if section is None or not section.is_executable:
            return True
        return self.arch.access_size(self.read, site_rva) is None


class Stage:
    """What the code, data and unwind stages are made with: the context, the binder
    they bind fields through, and the parts of the context they use."""

    def __init__(self, context: Context, binder: Binder) -> None:
        self.context = context
        self.binder = binder
        self.region = context.region
        self.blockers = context.blockers
        self.arch = context.arch
        self.new = context.new


def runs(function: Function) -> list[list[tuple[int, int, int]]]:
    """The parts grouped into runs that touch in the new image, the entry's run first.

    A run is copied whole, so references between its parts (MSVC splits functions
    into contiguous chained fragments) keep their bytes.
    """
    ordered = sorted(function.part_ranges)
    grouped: list[list[tuple[int, int, int]]] = []
    for part in ordered:
        if grouped and grouped[-1][-1][1] == part[0]:
            grouped[-1].append(part)
        else:
            grouped.append([part])
    grouped.sort(key=lambda run: not any(p[0] == function.rva for p in run))
    return grouped
