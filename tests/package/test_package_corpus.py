"""Real MSVC-built pairs: packages carry exception handlers, and apply in the emulator.

Runs only when the real-world corpus has been fetched (see tests/conftest.py). Pairs
whose new image is over 1 MiB are left to the diff's own corpus test: building and
applying here repeats their diff, which the pure-Python core takes tens of seconds for.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import pytest

from hpatch.apply.applier import ApplyOptions, ApplyReport, apply_package
from hpatch.arch import Machine, Reference, RefKind
from hpatch.blockers import BlockerCause, BlockerKind
from hpatch.diff import DiffResult, Status, diff_images
from hpatch.diff.correlate import Correlator, Resolution
from hpatch.emu import Process
from hpatch.image import PEImage, load_image
from hpatch.package import Package, PackageBlocked, build_package, decode_package, encode_package
from hpatch.package.unwind_copy import (
    HandlerDataError,
    ScopeField,
    UnwindRecordLayout,
    identify_handler,
    unwind_record_layout,
)

from ..conftest import corpus_binaries

SMALL = 1 << 20
PAIRS = sorted(
    {
        (pair_id, Path(str(p)).parent)
        for pair_id, _, p in corpus_binaries()
        if p.stat().st_size <= SMALL
    }
)
IDS = [pair_id for pair_id, _ in PAIRS]
UNWIND_CAUSES = {
    BlockerCause.UNWIND_RECORD_UNBOUND,
    BlockerCause.UNWIND_HANDLER_DATA,
    BlockerCause.UNWIND_HANDLER_DIFFERS,
}


@cache
def corpus_diff(folder: Path) -> DiffResult:
    old_path, new_path = (next(folder.glob(f"{which}.*")) for which in ("old", "new"))
    return diff_images(load_image(old_path), load_image(new_path))


def handler_records(image: PEImage, function_rva: int) -> list[UnwindRecordLayout]:
    """The unwind records with an exception handler hpatch copies, of the function at
    ``function_rva`` (its entry part and fragments)."""
    function = image.function_at(function_rva)
    assert function is not None
    found = []
    for entry in image.unwind_entries:
        if entry.unwind_rva is None or not function.contains(entry.begin_rva):
            continue
        if image.arch.machine == Machine.ARM64 and entry.unwind_rva & 3:
            continue  # packed: no handler
        try:
            record = unwind_record_layout(
                image.arch, image.read, entry.unwind_rva, lambda rva: identify_handler(image, rva)
            )
        except HandlerDataError:
            continue
        if record.handler is not None:
            found.append(record)
    return found


def apply_to_baseline(diff: DiffResult, package: Package) -> tuple[Process, ApplyReport]:
    """Apply through the encoded package, to a process running the old image (its entry
    point not run: the runtime DLLs it would call are not beside the corpus images)."""
    decoded = decode_package(encode_package(package), diff.old.mapped)
    process = Process(diff.old.identity.machine)
    process.load_image(diff.old, run_entry_point=False)
    return process, apply_package(process, decoded, options=ApplyOptions(allow_unsigned=True))


def check_handlers_in_memory(diff: DiffResult, package: Package) -> int:
    """Apply ``package``, then read every carried function's registered unwind records
    back from the process: each handler and each RVA in its data must name, in the
    running image, what the new build's record names there. Returns the fields checked."""
    process, report = apply_to_baseline(diff, package)
    base = process.main_module.base  # type: ignore[union-attr]
    old, new = diff.old, diff.new
    correlator = Correlator(
        diff.correspondence.old, diff.correspondence.new, diff.correspondence, diff.changes
    )

    def region_va(function_parts: tuple, new_rva: int, end_ok: bool = False) -> int | None:
        for part in function_parts:
            inside = new_rva - part.new_rva
            if 0 <= inside < part.size or (end_ok and inside == part.size):
                return report.region_va + part.offset + inside  # type: ignore[operator]
        return None

    checked = 0
    for function in package.functions:
        for record in handler_records(new, function.new_rva):
            va = next(
                region_va(function.parts, e.begin_rva)
                for e in new.unwind_entries
                if e.unwind_rva == record.unwind_rva
                and region_va(function.parts, e.begin_rva) is not None
            )
            assert va is not None
            registered = process.function_tables.lookup(va)
            assert registered is not None and registered.begin_va == va
            assert registered.image_base == base, "RVAs in the copy count from the image"

            def read(rva: int, size: int) -> bytes:
                return process.space.read(base + rva, size)

            copy = unwind_record_layout(
                old.arch, read, registered.unwind_word, lambda rva: identify_handler(old, rva)
            )
            assert copy.handler is not None and record.handler is not None
            assert copy.handler.handler == record.handler.handler
            assert copy.size == record.size
            new_bytes = new.read(record.unwind_rva, record.size)
            copy_bytes = read(registered.unwind_word, copy.size)
            fields = {f.offset for f in record.fields} | {record.handler_offset}
            for offset in range(0, record.size, 4):
                if offset not in fields:
                    assert copy_bytes[offset : offset + 4] == new_bytes[offset : offset + 4]
            handler = correlator.resolve(Reference(0, RefKind.CALL, record.handler_rva))  # type: ignore[arg-type]
            assert handler.resolution == Resolution.OLD_FUNCTION
            assert copy.handler_rva == handler.old_rva
            assert [(f.offset, f.field) for f in copy.fields] == [
                (f.offset, f.field) for f in record.fields
            ]
            for was, now in zip(record.fields, copy.fields, strict=True):
                if was.field == ScopeField.HANDLER_ADDRESS:
                    own = region_va(function.parts, was.target_rva)
                    if own is None:
                        code = correlator.resolve(Reference(0, RefKind.CALL, was.target_rva))
                        assert code.resolution == Resolution.OLD_FUNCTION
                        own = base + code.old_rva  # type: ignore[operator]
                    expected = own
                else:
                    is_end = was.field == ScopeField.END_ADDRESS
                    expected = region_va(function.parts, was.target_rva, is_end)  # type: ignore[assignment]
                assert base + now.target_rva == expected, (was, now)
                checked += 1
            checked += 1
    return checked


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("pair_id", "folder"), PAIRS, ids=IDS)
def test_corpus_update_packages_or_is_refused_precisely(pair_id: str, folder: Path) -> None:
    diff = corpus_diff(folder)
    if diff.blockers:
        with pytest.raises(PackageBlocked) as refused:
            build_package(diff)
        assert refused.value.blockers == diff.blockers
        return
    try:
        package = build_package(diff)
    except PackageBlocked as blocked:
        # What is left refused is an ADRP page that may be handed on beyond the code with
        # a target whose page offset changes, or code that runs on past the end of its
        # last part into code not copied with it: no handler is refused any more.
        for blocker in blocked.blockers:
            assert blocker.kind == BlockerKind.UNRESOLVED_REFERENCE
            if blocker.cause == BlockerCause.RELOCATION_ERROR:
                assert "runs on past its end" in blocker.reason, blocker
                assert blocker.rva is not None
                continue
            assert blocker.cause == BlockerCause.PAGE_PASSED_ON, blocker
            assert blocker.rva is not None and blocker.target_rva is not None
        return
    process, report = apply_to_baseline(diff, package)
    assert report.outcome == "applied"
    assert {r.old_va - process.main_module.base for r in report.redirects} == {  # type: ignore[union-attr]
        c.old.rva for c in diff.with_status(Status.MODIFIED) if c.old is not None
    }
    assert check_handlers_in_memory(diff, package) == sum(
        1 + len(r.fields) for f in package.functions for r in handler_records(diff.new, f.new_rva)
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("pair_id", "folder"), PAIRS, ids=IDS)
def test_corpus_functions_with_handlers_carry_them(pair_id: str, folder: Path) -> None:
    """Every matched function with a handler hpatch copies, carried as if it had changed
    (its own bytes again): the package binds its handler, scope ranges, filters and
    termination handlers, and the running image's tables read back right."""
    diff = corpus_diff(folder)
    chosen = [
        dataclasses.replace(c, status=Status.MODIFIED)
        for c in diff.changes
        if c.old is not None
        and c.new is not None
        and c.status in (Status.UNCHANGED, Status.MODIFIED)
        and handler_records(diff.new, c.new.rva)
    ]
    assert chosen, "MSVC images have GS-checked functions"
    carried = []
    for change in chosen:
        try:
            build_package(dataclasses.replace(diff, changes=(change,), blockers=()))
        except PackageBlocked as blocked:
            # Refused for what its code references (new data, unmatched callees, an
            # ADRP page), never for its handler.
            for blocker in blocked.blockers:
                assert blocker.cause not in UNWIND_CAUSES, blocker
            continue
        carried.append(change)
    assert carried
    forced = dataclasses.replace(diff, changes=tuple(carried), blockers=())
    package = build_package(forced)
    records = [r for f in package.functions for r in handler_records(diff.new, f.new_rva)]
    assert len(records) >= len(carried)
    fields = sum(1 + len(r.fields) for r in records)
    assert check_handlers_in_memory(forced, package) == fields
