"""Applying hotpatch packages to an emulated process: checks, redirects, rollback."""

from hpatch.apply.applier import ApplyOptions, ApplyReport, RedirectReport, apply_package, rollback
from hpatch.apply.state import ActivePatch, active_patch

__all__ = [
    "ActivePatch",
    "ApplyOptions",
    "ApplyReport",
    "RedirectReport",
    "active_patch",
    "apply_package",
    "rollback",
]
