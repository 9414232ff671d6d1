"""What verification found, as immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    """The result of one check on one patched function."""

    PASSED = "passed"
    FAILED = "failed"
    #: Differential emulation only: the function could not be run to a comparable
    #: end (the reason says why); never counted as a pass.
    NOT_EMULATED = "not_emulated"
    #: The check was not run (``--no-emulation``, or the static check failed first).
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Where the patched old image and the new build disagree.

    ``patched_va`` is an address in the process running the old image with the
    package applied, ``new_va`` the corresponding one in the process running the new
    build; the instructions are as disassembled there (empty for data).
    """

    patched_va: int
    new_va: int
    patched_instruction: str
    new_instruction: str
    reason: str

    def describe(self) -> str:
        if self.patched_instruction or self.new_instruction:
            return (
                f"0x{self.patched_va:x} `{self.patched_instruction}` vs "
                f"0x{self.new_va:x} `{self.new_instruction}`: {self.reason}"
            )
        return f"0x{self.patched_va:x} vs 0x{self.new_va:x}: {self.reason}"


@dataclass(frozen=True, slots=True)
class EmulationSummary:
    """How the differential runs of one function went."""

    outcome: Outcome
    #: Input sets both builds ran to a comparable end (returned, or faulted alike).
    agreed: int
    #: Of those, the ones that returned normally on both sides.
    returned: int
    #: Input sets tried in all.
    tried: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FunctionVerification:
    """Both checks of one function the package carries."""

    name: str
    status: str  # "modified" or "added"
    old_rva: int | None
    new_rva: int
    translation: Outcome
    mismatches: tuple[Mismatch, ...]
    emulation: EmulationSummary

    @property
    def passed(self) -> bool:
        """Translation validated, and emulation agreed or could not run (with a reason)."""
        return self.translation == Outcome.PASSED and self.emulation.outcome in (
            Outcome.PASSED,
            Outcome.NOT_EMULATED,
            Outcome.SKIPPED,
        )


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Every function of a package, checked against the new build."""

    functions: tuple[FunctionVerification, ...]
    inputs: int

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.functions)

    @property
    def failed(self) -> tuple[FunctionVerification, ...]:
        return tuple(f for f in self.functions if not f.passed)
