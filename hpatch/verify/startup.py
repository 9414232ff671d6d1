"""Whether the new build's start-up code sets the globals a package carries.

A new global starts from the new build's initial bytes in a patched process. A process
started on the new build ran its entry point (and the initialisers it calls) first; if
that code writes the global, the new code would run on a value the new build never
holds there. The new build is loaded in an emulated process with its entry point run,
and each carried global compared with its initial bytes.
"""

from __future__ import annotations

from hpatch.blockers import Blocker, BlockerCause, BlockerKind, Build, function_label
from hpatch.diff import DiffResult
from hpatch.diff.correlate import Correlator
from hpatch.diff.startup import startup_functions
from hpatch.emu import Process
from hpatch.emu.cpu import Cpu
from hpatch.emu.startup import MODELLED
from hpatch.errors import HPatchError
from hpatch.package import new_data


def _answer_zero(cpu: Cpu, arguments: tuple[int, ...]) -> int:
    return 0


def new_data_set_at_start(diff: DiffResult) -> tuple[Blocker, ...]:
    """A hazard for each new global the package of ``diff`` would carry that the new
    build's start-up code changes; a limitation if that start-up cannot be run."""
    correspondence = diff.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, diff.changes)
    spans = new_data.carried_spans(diff, correlator)
    if not spans:
        return ()
    # The modelled start-up surface (docs/startup.md) runs the CRT's initialisers; every
    # other import answers 0, as verification's stubs do (no DLL beside the image is
    # loaded: its start-up is not the new build's).
    process = Process(diff.new.identity.machine)
    for imported in diff.new.imports:
        if imported.name is None or imported.name not in MODELLED:
            process.host(imported.dll, imported.name or imported.ordinal or 0, _answer_zero)
    try:
        module = process.load_image(diff.new, run_entry_point=True)
    except HPatchError as error:
        start, end = spans[0]
        return (
            Blocker(
                kind=BlockerKind.WRITABLE_DATA,
                cause=BlockerCause.NEW_DATA_START_UNKNOWN,
                where=f"new data at 0x{start:x}",
                reason="whether the new build's start-up code sets the new globals is "
                f"unknown: running its entry point failed ({error})",
                rva=start,
                end_rva=end,
                build=Build.NEW,
            ),
        )
    startup = startup_functions(correspondence.new)
    prints = correspondence.new.fingerprints
    blockers = []
    for start, end in spans:
        if process.space.read(module.va(start), end - start) == diff.new.read(start, end - start):
            continue
        setters = sorted(
            {
                function_label(prints[rva].function)
                for rva in startup
                if any(start <= r.target_rva < end for r in prints[rva].references)
            }
        )
        by = ", ".join(setters) if setters else "the start-up code"
        section = diff.new.section_at(start)
        blockers.append(
            Blocker(
                kind=BlockerKind.WRITABLE_DATA,
                cause=BlockerCause.NEW_DATA_AT_START,
                where=f"new data at 0x{start:x}..0x{end:x}",
                reason=f"the new build's start-up code sets this new global ({by}): a "
                "running process never ran it, so the carried initial value is not the "
                "one the new build holds",
                function=setters[0] if setters else None,
                rva=start,
                end_rva=end,
                section=section.name if section is not None else None,
                build=Build.NEW,
            )
        )
    return tuple(blockers)
