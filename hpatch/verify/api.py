"""``verify_package``: both checks, for every function a package carries."""

from __future__ import annotations

from collections.abc import Callable

from hpatch.blockers import Blocker, BlockerCause, BlockerKind, Build
from hpatch.diff import DiffResult
from hpatch.package import BuildOptions, PackageBlocked, build_package
from hpatch.package.model import NO_RVA, FunctionStatus, Package
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.differential import DifferentialRunner
from hpatch.verify.model import EmulationSummary, FunctionVerification, Outcome, VerifyReport
from hpatch.verify.session import Session
from hpatch.verify.startup import new_data_set_at_start
from hpatch.verify.translation import TranslationValidator

DEFAULT_INPUTS = 100


def verify_package(
    diff: DiffResult,
    package: Package,
    *,
    inputs: int = DEFAULT_INPUTS,
    emulate: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Apply ``package`` to the old image of ``diff`` in an emulated process and check
    every function it carries against the new build: translation validation, then
    (with ``emulate``) differential emulation over ``inputs`` random input sets.

    A function whose static check fails is not emulated. Raises HPatchError if the
    package does not apply to the old image at all.
    """
    session = Session(diff, package)
    counterparts = Counterparts(session)
    validator = TranslationValidator(session, counterparts)
    runner = DifferentialRunner(session, counterparts, inputs)
    results = []
    functions = session.package.functions
    for index, function in enumerate(functions):
        outcome, mismatches = validator.validate(function)
        if outcome != Outcome.PASSED:
            emulation = EmulationSummary(Outcome.SKIPPED, 0, 0, 0, "translation validation failed")
        elif not emulate:
            emulation = EmulationSummary(Outcome.SKIPPED, 0, 0, 0, "not asked for")
        else:
            emulation = runner.run(function)
        results.append(
            FunctionVerification(
                name=function.name or f"sub_{function.new_rva:x}",
                status="modified" if function.status == FunctionStatus.MODIFIED else "added",
                old_rva=function.old_rva if function.old_rva != NO_RVA else None,
                new_rva=function.new_rva,
                translation=outcome,
                mismatches=mismatches,
                emulation=emulation,
            )
        )
        if progress is not None:
            progress(index + 1, len(functions))
    return VerifyReport(tuple(results), inputs if emulate else 0)


def validation_blockers(report: VerifyReport) -> tuple[Blocker, ...]:
    """A blocker for every function that failed a check: the package is not written."""
    blockers = []
    for function in report.failed:
        if function.translation != Outcome.PASSED:
            first = function.mismatches[0].describe() if function.mismatches else "no detail"
            cause, reason = (
                BlockerCause.TRANSLATION_FAILED,
                f"translation validation failed: {first}",
            )
        else:
            cause, reason = (
                BlockerCause.EMULATION_DIVERGED,
                f"differential emulation failed: {function.emulation.detail}",
            )
        blockers.append(
            Blocker(
                kind=BlockerKind.UNVALIDATED,
                cause=cause,
                where=function.name,
                reason=reason,
                function=function.name,
                rva=function.new_rva,
                build=Build.NEW,
            )
        )
    return tuple(blockers)


def build_verified_package(
    diff: DiffResult,
    options: BuildOptions,
    *,
    validate: bool = True,
    inputs: int = DEFAULT_INPUTS,
) -> tuple[Package, VerifyReport | None]:
    """Build the package of ``diff`` and, with ``validate``, prove it before anyone may
    write it: translation validation, then differential emulation over ``inputs`` input
    sets (0: none). A function that fails either makes the update blocked
    (PackageBlocked names it), so no package carries code that failed.

    The input sets are those ``verify_package`` draws for as many inputs: a package
    built with the same count passes ``hpatch verify`` with it.
    """
    package = build_package(diff, options)
    hazards = new_data_set_at_start(diff)
    if hazards:
        raise PackageBlocked(hazards)
    if not validate:
        return package, None
    report = verify_package(diff, package, inputs=inputs, emulate=inputs > 0)
    blockers = validation_blockers(report)
    if blockers:
        raise PackageBlocked(blockers)
    return package, report
