"""What is applied to a loaded module: at most one package (packages are cumulative)."""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

from hpatch.arch.rewrite import Redirect
from hpatch.emu.loader import Module
from hpatch.package.model import Package


@dataclass(frozen=True, slots=True)
class PlacedRedirect:
    """A redirect as written: ``written`` replaced ``original`` (the baseline's bytes)
    at ``span_va``."""

    function: str
    old_va: int
    target_va: int
    strategy: Redirect
    span_va: int
    original: bytes
    written: bytes


@dataclass(frozen=True, slots=True)
class ActivePatch:
    """The package a module runs, where its region is, and what it overwrote."""

    package: Package
    package_sha256: bytes
    region_va: int
    region_size: int
    redirects: tuple[PlacedRedirect, ...]

    @property
    def sequence(self) -> int:
        return self.package.servicing.sequence


_ACTIVE: WeakKeyDictionary[Module, ActivePatch] = WeakKeyDictionary()


def active_patch(module: Module) -> ActivePatch | None:
    """The package ``module`` runs now, or None for the baseline."""
    return _ACTIVE.get(module)


def set_active(module: Module, patch: ActivePatch | None) -> None:
    if patch is None:
        _ACTIVE.pop(module, None)
    else:
        _ACTIVE[module] = patch
