"""Proving a package: translation validation and differential emulation."""

from hpatch.verify.api import (
    DEFAULT_INPUTS,
    build_verified_package,
    validation_blockers,
    verify_package,
)
from hpatch.verify.model import (
    EmulationSummary,
    FunctionVerification,
    Mismatch,
    Outcome,
    VerifyReport,
)

__all__ = [
    "DEFAULT_INPUTS",
    "EmulationSummary",
    "FunctionVerification",
    "Mismatch",
    "Outcome",
    "VerifyReport",
    "build_verified_package",
    "validation_blockers",
    "verify_package",
]
