"""What a release task returns, and the entries of pairs it could not service: shared by
the local pool (``run``) and the Dask executor (``cluster``), which import it and not
each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpatch.package import BuildOptions
from hpatch.package.model import Package
from hpatch.release.pairing import Pair
from hpatch.text import plain


class Status:
    """The status of a binary in a release (the manifest's ``status`` values)."""

    UNCHANGED = "unchanged"
    PACKAGED = "packaged"
    BLOCKED = "blocked"
    ERROR = "error"
    ADDED = "added"
    REMOVED = "removed"
    ALL = (UNCHANGED, PACKAGED, BLOCKED, ERROR, ADDED, REMOVED)


@dataclass(frozen=True, slots=True)
class Settings:
    """What every task of a run shares: the servicing fields and how to prove."""

    options: BuildOptions
    inputs: int = 100
    emulate: bool = True


@dataclass(slots=True)
class Outcome:
    """What a task found for one pair: its manifest entry (without the package's
    digest, which exists only once the caller has signed and encoded it), the unsigned
    package when there is one, and seconds per stage (kept out of the manifest)."""

    entry: dict[str, Any]
    package: Package | None = None
    timings: dict[str, float] = field(default_factory=dict)


def new_entry(path: str, status: str, machine: str | None = None) -> dict[str, Any]:
    """A manifest entry: every key always present, null where it does not apply."""
    return {
        "path": path,
        "status": status,
        "machine": machine,
        "old_sha256": None,
        "new_sha256": None,
        "identical": None,
        "functions": None,
        "package": None,
        "blockers": [],
        "error": None,
    }


Task = Callable[[Pair, Settings], Outcome]


def failed_outcome(pair: Pair, exc: BaseException) -> Outcome:
    """The ``error`` entry of a pair whose task raised instead of returning."""
    message = f"the worker servicing it failed: {type(exc).__name__}: {plain(exc)}"
    return Outcome(new_entry(pair.path, Status.ERROR) | {"error": message})


def died_outcome(pair: Pair) -> Outcome:
    """The ``error`` entry of a pair whose every worker died running it. Every executor
    words it alike: the manifest does not depend on which one ran."""
    message = "the worker process servicing it died"
    return Outcome(new_entry(pair.path, Status.ERROR) | {"error": message})
