"""Apply a package to a module of an emulated process, replace it, roll it back.

Order of an apply: every check first (prerequisites, signature, sequence, the bytes
each redirect overwrites, how each redirect fits its function, whether the process can
bind every import the package adds), then the safety check on every thread, then the
new imports bound as the loader binds an image's (a DLL they need is loaded), then the
patch region (allocated near the image, bound, unwind table registered, made RX), then
the redirects, published last. Every change goes through a Transaction, and a DLL
loaded for an import is unloaded again; any failure undoes all of it, so the image is
as it was.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

from hpatch.apply.safety import BusyThread, Range, busy_threads
from hpatch.apply.state import ActivePatch, PlacedRedirect, active_patch, set_active
from hpatch.apply.transaction import Transaction
from hpatch.arch import Machine
from hpatch.arch.redirect_fit import redirect_problem
from hpatch.arch.rewrite import Redirect, encode_redirect
from hpatch.emu.cpu import ThreadState
from hpatch.emu.loader import RELOCATION_WIDTHS, Module
from hpatch.emu.memory import HIGHEST_VA, PAGE_SIZE, Protection, page_ceil
from hpatch.emu.process import Process
from hpatch.emu.tables import FunctionEntry
from hpatch.errors import ApplyError, CheckRefused, HPatchError, PackageFormatError
from hpatch.image import Function, PEImage
from hpatch.package import new_data
from hpatch.package.bind import bind_region
from hpatch.package.checks import CheckResult, check_prerequisites
from hpatch.package.envelope import check_signature, refusal, untrusted
from hpatch.package.format import encode, resolve_blobs
from hpatch.package.format.wire import arch_of
from hpatch.package.model import EncodedPackage, FunctionStatus, Package, Prerequisite
from hpatch.package.signing import SignatureCheck, SignatureStatus, TrustStore

#: Instructions a busy thread may run per round while the applier waits for it.
_WAIT_SLICE = 10_000
#: How each redirect fits its function, per baseline image: a fact of the immutable
#: baseline, worked out once (it decodes the function) and reused by later packages.
_FIT: WeakKeyDictionary[PEImage, dict[tuple[int, Redirect], str | None]] = WeakKeyDictionary()


def _redirect_fit(image: PEImage, function: Function, strategy: Redirect) -> str | None:
    known = _FIT.setdefault(image, {})
    key = (function.rva, strategy)
    if key not in known:
        known[key] = redirect_problem(image, function, strategy)
    return known[key]


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """How strict an apply is, and whether it may wait for busy threads."""

    trust: TrustStore | None = None
    allow_unsigned: bool = False
    #: With ``wait_steps`` > 0, threads that block the change run (up to this many
    #: instructions each) until they leave the code being replaced; 0 refuses at once.
    wait_steps: int = 0


@dataclass(frozen=True, slots=True)
class RedirectReport:
    """One redirect as published."""

    function: str
    old_va: int
    new_va: int
    strategy: Redirect
    written: bytes


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What an apply, replacement or rollback did."""

    module: str
    outcome: str  # "applied", "replaced", "already applied", "rolled back"
    sequence: int | None  # the package now active (None: the baseline)
    replaced_sequence: int | None
    region_va: int | None
    region_size: int
    redirects: tuple[RedirectReport, ...]
    checks: tuple[CheckResult, ...] = ()
    signature: SignatureCheck | None = None
    publish_ns: int = field(default=0, compare=False)


def _function_name(name: str, rva: int) -> str:
    return name or f"sub_{rva:x}"


class _Refused(CheckRefused):
    """A check failed before anything changed."""


def _check(name: str, passed: bool, detail: str) -> CheckResult:
    result = CheckResult(name, passed, detail)
    if not passed:
        raise _Refused(f"check '{name}' failed: {detail}")
    return result


_RELOCATIONS: WeakKeyDictionary[PEImage, tuple[list[tuple[int, int]], list[int]]] = (
    WeakKeyDictionary()
)


def _relocation_index(image: PEImage) -> tuple[list[tuple[int, int]], list[int]]:
    """(RVA, width) of every address-sized base relocation, sorted, and their RVAs."""
    if image not in _RELOCATIONS:
        fields = sorted(
            (r.rva, RELOCATION_WIDTHS[r.type])
            for r in image.relocations
            if r.type in RELOCATION_WIDTHS
        )
        _RELOCATIONS[image] = (fields, [rva for rva, _ in fields])
    return _RELOCATIONS[image]


class _Baseline:
    """Reads a module's bytes as the baseline had them: what our redirects overwrote
    put back, and base relocations taken out when the image was rebased."""

    def __init__(self, process: Process, module: Module, active: ActivePatch | None) -> None:
        self.process, self.module, self.active = process, module, active
        self.relocations, self.starts = _relocation_index(module.image)

    def read(self, rva: int, size: int) -> bytes:
        margin = 8
        lo = max(rva - margin, 0)
        hi = min(rva + size + margin, self.module.image.size_of_image)
        data = bytearray(self.process.space.read(self.module.va(lo), hi - lo))
        if self.active is not None:
            for placed in self.active.redirects:
                start = placed.span_va - self.module.base
                for index, value in enumerate(placed.original):
                    if lo <= start + index < hi:
                        data[start + index - lo] = value
        delta = self.module.base - self.module.image.image_base
        if delta:
            first = bisect.bisect_left(self.starts, lo)
            for reloc_rva, width in self.relocations[first:]:
                if reloc_rva >= hi:
                    break
                if reloc_rva + width > hi:
                    continue
                at = reloc_rva - lo
                value = int.from_bytes(data[at : at + width], "little")
                value = (value - delta) & ((1 << (8 * width)) - 1)
                data[at : at + width] = value.to_bytes(width, "little")
        return bytes(data[rva - lo : rva - lo + size])


def _target_module(process: Process, package: Package, module: Module | None) -> Module:
    if module is not None:
        return module
    for candidate in process.modules:
        if candidate.name.lower() == package.baseline.file_name.lower():
            return candidate
    if process.main_module is None:
        raise ApplyError("no image is loaded")
    return process.main_module


def _signature(encoded: bytes, options: ApplyOptions) -> tuple[SignatureCheck, CheckResult]:
    store = options.trust or TrustStore()
    check = check_signature(encoded, store)  # over the raw bytes, nothing decoded
    reason = refusal(check, options.allow_unsigned)
    if reason is not None:
        return check, _check("signature", False, reason)
    if check.status == SignatureStatus.TRUSTED:
        return check, CheckResult("signature", True, f"signed by trusted key {check.key_hex}")
    return check, CheckResult("signature", True, f"{untrusted(check)}; allowed by --allow-unsigned")


def _sequence(package: Package, active: ActivePatch | None) -> CheckResult:
    sequence = package.servicing.sequence
    if active is None:
        return CheckResult("sequence", True, f"package {sequence} onto the baseline")
    if sequence < active.sequence:
        return _check(
            "sequence",
            False,
            f"package {sequence} is older than package {active.sequence}, which the image "
            "runs (anti-rollback)",
        )
    if sequence == active.sequence:
        return _check(
            "sequence",
            False,
            f"the image runs another package with sequence {sequence}",
        )
    supersedes = package.servicing.supersedes
    if supersedes is not None and not supersedes[0] <= active.sequence <= supersedes[1]:
        return _check(
            "sequence",
            False,
            f"package {sequence} supersedes {supersedes[0]}-{supersedes[1]}, but the image "
            f"runs package {active.sequence}",
        )
    return CheckResult("sequence", True, f"package {sequence} replaces package {active.sequence}")


def _new_imports(process: Process, module: Module, package: Package) -> CheckResult:
    """Whether the process can bind every import the package adds, as the loader binds
    the image's own: asked, nothing loaded yet."""
    if not package.new_imports:
        return CheckResult("new imports", True, "the package adds no import")
    missing = []
    for item in package.new_imports:
        symbol = item.name or item.ordinal
        try:
            found = process.import_address(item.dll, symbol, beside=module, load=False)
        except HPatchError as error:  # a DLL beside the image that does not parse
            return _check("new imports", False, f"{item.label}: {error}")
        if found is None:
            missing.append(item.label)
    if missing:
        return _check(
            "new imports",
            False,
            f"nothing in the process exports {', '.join(missing)} (no host function, loaded "
            f"module or DLL beside {module.name} serves it)",
        )
    labels = ", ".join(item.label for item in package.new_imports)
    return CheckResult("new imports", True, f"the process binds {labels}")


def _bind_new_imports(
    process: Process, module: Module, package: Package, loaded: list[Module]
) -> list[int]:
    """The address each new import binds to, in the package's order; a DLL loaded for
    one is added to ``loaded`` (for the caller to unload if the apply fails). A host
    function's stub made for one stays: stubs are the process's, shared by its images."""
    before = set(process.modules)
    addresses = []
    try:
        for item in package.new_imports:
            va = process.import_address(item.dll, item.name or item.ordinal, beside=module)
            if va is None:  # the check found it; a DLL loaded for another one changed that
                raise _Refused(f"check 'new imports' failed: nothing exports {item.label}")
            addresses.append(va)
    finally:
        loaded.extend(m for m in process.modules if m not in before)
    return addresses


def _placement_window(module: Module, package: Package, size: int) -> tuple[int, int]:
    """Where the patch region may lie: every byte within reach of every byte of the
    image, and above the image base when RVA fixups point into it."""
    lowest, highest = module.end, HIGHEST_VA
    for kind, value in package.prerequisites:
        if kind == Prerequisite.REGION_REACH:
            lowest = max(lowest, module.end - value)
            highest = min(highest, module.base + value)
        elif kind == Prerequisite.REGION_ABOVE_IMAGE:
            lowest = max(lowest, module.base)
    if highest - lowest < size:
        raise _Refused(f"no room for a 0x{size:x}-byte patch region within reach of {module.name}")
    return lowest, highest


@dataclass(frozen=True, slots=True)
class _Plan:
    """The bytes a publish leaves at one function: over the union of its old and new
    spans, a redirect (``installing``) or the baseline's bytes put back."""

    entry_va: int
    union_va: int
    final: bytes
    installing: bool


def _restore_plan(placed: PlacedRedirect) -> _Plan:
    return _Plan(placed.old_va, placed.span_va, placed.original, installing=False)


def _publish(transaction: Transaction, plans: list[_Plan]) -> None:
    """Write every plan. Per function, the bytes before the entry and those from it are
    separate writes: installing, the padding first and the entry last (a thread sees
    either the old entry or a complete jump); restoring, the other way round."""
    for plan in plans:
        split = plan.entry_va - plan.union_va
        current = transaction.space.read(plan.union_va, len(plan.final))
        before = (plan.union_va, current[:split], plan.final[:split])
        after = (plan.entry_va, current[split:], plan.final[split:])
        order = (before, after) if plan.installing else (after, before)
        for va, present, final in order:
            if present != final:
                transaction.write(va, final)


def _wait_until_safe(
    process: Process,
    spans: list[Range],
    functions: list[Range],
    wait_steps: int,
    freed: Sequence[Range] = (),
) -> None:
    budget = wait_steps
    while True:
        busy = busy_threads(process, spans, functions, freed)
        if not busy:
            return
        if budget <= 0:
            raise _Refused("check 'thread safety' failed: " + "; ".join(b.reason for b in busy))
        step = min(_WAIT_SLICE, budget)
        budget -= step
        for blocker in busy:
            _run_thread(process, blocker, step)


def _run_thread(process: Process, blocker: BusyThread, steps: int) -> None:
    thread = process.cpu.threads[blocker.thread_id]
    if thread.state == ThreadState.STOPPED:
        process.cpu.run(thread, steps)


def _function_ranges(module: Module, package: Package) -> list[Range]:
    """The old code of every function the package replaces, fragments included."""
    ranges = []
    for function in package.functions:
        if function.status != FunctionStatus.MODIFIED:
            continue
        name = _function_name(function.name, function.old_rva)
        known = module.image.function_at(function.old_rva)
        if known is not None and known.rva == function.old_rva:
            ranges.append(Range(module.va(known.rva), module.va(known.extent_end), name))
            ranges.extend(
                Range(module.va(f.rva), module.va(f.rva + f.size), name) for f in known.fragments
            )
        else:
            ranges.append(
                Range(
                    module.va(function.old_rva),
                    module.va(function.old_rva + function.old_size),
                    name,
                )
            )
    return ranges


def _active_ranges(module: Module, active: ActivePatch) -> tuple[list[Range], list[Range]]:
    spans = [
        Range(p.span_va, p.span_va + len(p.written), f"{p.function} (package {active.sequence})")
        for p in active.redirects
    ]
    region = Range(
        active.region_va, active.region_va + active.region_size, f"package {active.sequence}'s code"
    )
    return spans, [region]


def apply_package(
    process: Process,
    package: Package | EncodedPackage,
    *,
    module: Module | None = None,
    options: ApplyOptions | None = None,
) -> ApplyReport:
    """Apply ``package`` to ``module`` (the loaded image it names by default); replaces
    the package the module runs, if any. All or nothing: ApplyError names the check
    or step that failed, and the process is unchanged. A package read from a file comes
    with its bytes (an ``EncodedPackage``): the signature is checked over them; a
    ``Package`` alone is encoded once for it."""
    options = options or ApplyOptions()
    encoded = package if isinstance(package, EncodedPackage) else encode(package)
    package = encoded.package
    module = _target_module(process, package, module)
    active = active_patch(module)
    digest = encoded.sha256
    if active is not None and active.package_sha256 == digest:
        return ApplyReport(
            module.name,
            "already applied",
            active.sequence,
            None,
            active.region_va,
            active.region_size,
            (),
        )
    try:
        new_data.validate(package)
    except PackageFormatError as error:
        raise _Refused(f"check 'package contents' failed: {error}") from error
    checks = list(check_prerequisites(package, module.image))
    for result in checks:
        if not result.passed:
            raise _Refused(f"check '{result.name}' failed: {result.detail}")
    # The signature before the region is decoded against the baseline (the costly step).
    signature, signature_result = _signature(encoded.data, options)
    if not package.resolved:
        # The region and the redirect digests are coded against the baseline, which the
        # checks above have just pinned.
        try:
            package = resolve_blobs(package, module.image.mapped)
        except PackageFormatError as error:
            raise _Refused(f"check 'package contents' failed: {error}") from error
    checks.append(signature_result)
    checks.append(_sequence(package, active))
    baseline = _Baseline(process, module, active)
    replaced = {f.old_rva: f for f in package.functions if f.status == FunctionStatus.MODIFIED}
    plans_input = []
    for redirect in package.redirects:
        start, length = redirect.strategy.span
        span_rva = redirect.old_rva + start
        original = baseline.read(span_rva, length)
        function = replaced.get(redirect.old_rva)
        name = _function_name(function.name if function else "", redirect.old_rva)
        if hashlib.sha256(original).digest() != redirect.original_sha256:
            _check(
                "original bytes",
                False,
                f"the {length} bytes at {name} (RVA 0x{span_rva:x}) are not the ones the "
                "package expects to overwrite",
            )
        known = module.image.function_at(redirect.old_rva)
        if known is None or known.rva != redirect.old_rva:
            _check("redirect fit", False, f"RVA 0x{redirect.old_rva:x} is not a function entry")
        assert known is not None  # the check above refuses the package otherwise
        problem = _redirect_fit(module.image, known, redirect.strategy)
        if problem is not None:
            _check("redirect fit", False, f"{name}: {problem}")
        plans_input.append((redirect, name, span_rva, original))
    checks.append(
        CheckResult("original bytes", True, f"{len(package.redirects)} redirect sites match")
    )
    checks.append(CheckResult("redirect fit", True, "every redirect fits its function"))
    checks.append(_new_imports(process, module, package))

    spans = [
        Range(module.va(span_rva), module.va(span_rva + len(original)), name)
        for _, name, span_rva, original in plans_input
    ]
    functions = _function_ranges(module, package)
    freed: list[Range] = []
    if active is not None:
        active_spans, freed = _active_ranges(module, active)
        spans += active_spans
        functions += freed
    _wait_until_safe(process, spans, functions, options.wait_steps, freed)
    checks.append(CheckResult("thread safety", True, "no thread is in code being replaced"))

    size = page_ceil(max(package.region_size, 1))
    alignment = max(package.region_alignment, PAGE_SIZE)
    lowest, highest = _placement_window(module, package, size)
    transaction = Transaction(process.space, process.function_tables)
    loaded: list[Module] = []
    try:
        import_vas = _bind_new_imports(process, module, package, loaded)
        region = transaction.allocate(
            size,
            Protection.RW,
            f"{module.name} package {package.servicing.sequence}",
            within=(lowest, highest),
            alignment=alignment,  # the package's own, up to 64 KiB
        )
        if region.va % alignment:
            raise ApplyError(f"the patch region at 0x{region.va:x} is not {alignment}-aligned")
        bound = bind_region(package, module.base, region.va, import_vas)
        transaction.write(region.va, bytes(bound))
        transaction.register_table(
            ("patch", module.base),
            _unwind_entries(process.machine, package, module, region.va, bound),
        )
        transaction.protect(region.va, size, Protection.RX)
        # New globals live on pages of their own, writable and never executable.
        for start, end in new_data.data_pages(package):
            transaction.protect(region.va + start, end - start, Protection.RW)
        placed, plans = _plan_redirects(module, package, active, region.va, plans_input, baseline)
        started = time.perf_counter_ns()
        _publish(transaction, plans)
        publish_ns = time.perf_counter_ns() - started
        if active is not None:
            replaced_region = process.space.region_at(active.region_va)
            if replaced_region is not None:
                transaction.free(replaced_region)
    except BaseException as error:
        transaction.undo()
        for dll in reversed(loaded):
            process.unload(dll)
        if isinstance(error, ApplyError):
            raise
        if isinstance(error, HPatchError):
            raise ApplyError(
                f"applying package {package.servicing.sequence} failed, nothing changed: {error}"
            ) from error
        raise
    transaction.commit()
    set_active(module, ActivePatch(package, digest, region.va, size, tuple(placed)))
    return ApplyReport(
        module.name,
        "replaced" if active is not None else "applied",
        package.servicing.sequence,
        active.sequence if active is not None else None,
        region.va,
        size,
        tuple(
            RedirectReport(p.function, p.old_va, p.target_va, p.strategy, p.written) for p in placed
        ),
        tuple(checks),
        signature,
        publish_ns,
    )


def _unwind_entries(
    machine: Machine, package: Package, module: Module, region_va: int, bound: bytearray
) -> list[FunctionEntry]:
    """The patch code's RUNTIME_FUNCTIONs, as RtlAddFunctionTable would register them."""
    word_at = arch_of(machine).pdata_unwind_field
    entries = []
    for record in package.unwind:
        at = record.table_offset + word_at
        word = int.from_bytes(bound[at : at + 4], "little")
        entries.append(
            FunctionEntry(
                module.base, region_va + record.begin_offset, region_va + record.end_offset, word
            )
        )
    return entries


def _plan_redirects(
    module: Module,
    package: Package,
    active: ActivePatch | None,
    region_va: int,
    redirects: list,
    baseline: _Baseline,
) -> tuple[list[PlacedRedirect], list[_Plan]]:
    placed = []
    plans = []
    entries = {p.old_va: p for p in active.redirects} if active is not None else {}
    for redirect, name, span_rva, original in redirects:
        entry_va = module.va(redirect.old_rva)
        target_va = region_va + redirect.target_offset
        written = encode_redirect(redirect.strategy, entry_va, target_va)
        span_va = module.va(span_rva)
        previous = entries.pop(entry_va, None)
        lo, hi = span_va, span_va + len(written)
        if previous is not None:
            lo = min(lo, previous.span_va)
            hi = max(hi, previous.span_va + len(previous.written))
        final = bytearray(baseline.read(lo - module.base, hi - lo))
        final[span_va - lo : span_va - lo + len(written)] = written
        placed.append(
            PlacedRedirect(name, entry_va, target_va, redirect.strategy, span_va, original, written)
        )
        plans.append(_Plan(entry_va, lo, bytes(final), installing=True))
    # Functions the active package redirected and this one no longer does: restored.
    plans.extend(_restore_plan(previous) for previous in entries.values())
    return placed, plans


def rollback(process: Process, module: Module | None = None, *, wait_steps: int = 0) -> ApplyReport:
    """Take the module back to its baseline: original bytes restored, the patch region
    freed, its unwind table removed. All or nothing, like an apply."""
    module = module or process.main_module
    if module is None:
        raise ApplyError("no image is loaded")
    active = active_patch(module)
    if active is None:
        raise ApplyError(f"{module.name} runs no package; nothing to roll back")
    spans, region = _active_ranges(module, active)
    _wait_until_safe(process, spans, region, wait_steps, region)
    transaction = Transaction(process.space, process.function_tables)
    try:
        plans = [_restore_plan(placed) for placed in active.redirects]
        started = time.perf_counter_ns()
        _publish(transaction, plans)
        publish_ns = time.perf_counter_ns() - started
        transaction.remove_table(("patch", module.base))
        patch_region = process.space.region_at(active.region_va)
        if patch_region is not None:
            transaction.free(patch_region)
    except BaseException as error:
        transaction.undo()
        if isinstance(error, HPatchError) and not isinstance(error, ApplyError):
            raise ApplyError(f"rollback failed, nothing changed: {error}") from error
        raise
    transaction.commit()
    set_active(module, None)
    return ApplyReport(
        module.name,
        "rolled back",
        None,
        active.sequence,
        None,
        0,
        tuple(
            RedirectReport(p.function, p.old_va, p.old_va, p.strategy, p.original)
            for p in active.redirects
        ),
        publish_ns=publish_ns,
    )
