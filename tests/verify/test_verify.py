"""Translation validation and differential emulation of the sample packages."""

from __future__ import annotations

import dataclasses
import random

import pytest

from hpatch.blockers import BlockerCause, BlockerClass, Build, function_label
from hpatch.diff import BlockerKind, DiffResult, Status
from hpatch.emu.process import ImportKey
from hpatch.errors import HPatchError
from hpatch.package import BuildOptions, PackageBlocked, build_package
from hpatch.package.model import BlobKind, TargetKind
from hpatch.verify import Outcome, build_verified_package, verify_package
from hpatch.verify.counterparts import Counterparts
from hpatch.verify.differential import DifferentialRunner, _InputSet
from hpatch.verify.session import Session

from ..conftest import BUILDS
from ..diff.samples import sample_diff
from .tampering import carry, corrupt_fixup, owner, swap_callee

PAIRS = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"))
OPTIONS = BuildOptions(sequence=2)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(p))
def test_every_sample_package_passes_both_checks(build: str, pair: tuple[str, str]) -> None:
    diff = sample_diff(build, *pair)
    package = build_package(diff, OPTIONS)
    report = verify_package(diff, package, inputs=100)
    assert len(report.functions) == len(package.functions) > 0
    for function in report.functions:
        assert function.translation == Outcome.PASSED, function.mismatches
        assert function.emulation.outcome == Outcome.PASSED, function.emulation
        assert function.emulation.agreed == 100
        assert function.emulation.returned > 0
    assert report.passed


@pytest.mark.parametrize("build", BUILDS)
def test_a_corrupted_fixup_fails_validation_and_names_the_function(build: str) -> None:
    diff = sample_diff(build, "v1", "v3")
    corrupted, function = corrupt_fixup(build_package(diff, OPTIONS))
    report = verify_package(diff, corrupted, emulate=False)
    failed = {f.name: f for f in report.failed}
    assert function.name in failed or f"sub_{function.new_rva:x}" in failed
    named = failed.get(function.name) or failed[f"sub_{function.new_rva:x}"]
    assert named.translation == Outcome.FAILED
    first = named.mismatches[0]
    assert first.patched_instruction and first.new_instruction
    assert not report.passed


@pytest.mark.parametrize("build", BUILDS)
def test_a_swapped_callee_fails_validation_and_names_the_caller(build: str) -> None:
    swapped, caller = swap_callee(sample_diff(build, "v1", "v3"))
    report = verify_package(swapped, build_package(swapped, OPTIONS), emulate=False)
    failed = {f.name: f for f in report.failed}
    assert caller in failed
    assert any("not the same code" in m.reason for m in failed[caller].mismatches)


@pytest.mark.parametrize("build", BUILDS)
def test_no_package_is_built_for_a_function_that_fails(build: str) -> None:
    swapped, caller = swap_callee(sample_diff(build, "v1", "v3"))
    with pytest.raises(PackageBlocked) as blocked:
        build_verified_package(swapped, OPTIONS)
    blockers = blocked.value.blockers
    assert {(b.kind, b.cause) for b in blockers} == {
        (BlockerKind.UNVALIDATED, BlockerCause.TRANSLATION_FAILED)
    }
    assert all(b.blocker_class == BlockerClass.LIMITATION for b in blockers)
    assert caller in {b.where for b in blockers}
    functions = {f.rva: f for f in swapped.new.functions}
    for blocker in blockers:
        assert blocker.build == Build.NEW and blocker.rva in functions
        assert blocker.function == blocker.where == function_label(functions[blocker.rva])


def test_a_verified_package_is_the_package_built() -> None:
    diff = sample_diff("x64-gcc", "v1", "v3")
    package, report = build_verified_package(diff, OPTIONS)
    assert package == build_package(diff, OPTIONS)
    assert report is not None and report.passed
    unverified, none = build_verified_package(diff, OPTIONS, validate=False)
    assert unverified == package and none is None


@pytest.mark.parametrize("build", BUILDS)
def test_emulation_catches_changed_behaviour(build: str) -> None:
    """A constant changed in the package's copy of a function (the static check would
    stop it first; here the emulation is run on its own) changes what the function
    returns or writes for some input."""
    diff = sample_diff(build, "v1", "v3")
    package = build_package(diff, OPTIONS)
    target = next(f for f in package.functions if f.name == "hp_version")
    # hp_version returns a constant: flip the low bit of every byte of its code until
    # one changes the result without breaking the code.
    code = next(
        b for b in package.blobs if b.kind == BlobKind.CODE and b.offset == target.entry_offset
    )
    outcomes = set()
    for at in range(code.size):
        data = bytearray(code.data)
        data[at] ^= 1
        blobs = tuple(
            dataclasses.replace(b, data=bytes(data)) if b is code else b for b in package.blobs
        )
        changed = dataclasses.replace(package, blobs=blobs)
        runner = _runner(diff, changed)
        if runner is None:
            continue
        summary = runner.run(target)
        outcomes.add(summary.outcome)
        if summary.outcome == Outcome.FAILED:
            assert "input set" in summary.detail
            break
    assert Outcome.FAILED in outcomes
    assert owner(package, target.entry_offset) == target


def _runner(diff, package) -> DifferentialRunner | None:  # type: ignore[no-untyped-def]
    try:
        session = Session(diff, package)
    except HPatchError:
        return None
    return DifferentialRunner(session, Counterparts(session), 10)


@pytest.mark.parametrize("build", ("x64-gcc", "arm64-clang"))
def test_both_processes_map_the_same_ranges_outside_the_images(build: str) -> None:
    """A pointer a run makes up must read the same bytes, or fault, on both sides."""
    diff = sample_diff(build, "v1", "v2")
    session = Session(diff, build_package(diff, OPTIONS))

    def layout(process, module) -> list:  # type: ignore[no-untyped-def]
        return [
            (r.va, r.size, tuple(r.protections), bytes(r.view))
            for r in process.space.regions
            if not module.contains(r.va) and not session.in_region(r.va)
        ]

    patched = layout(session.patched, session.old_module)
    assert patched == layout(session.new, session.new_module)
    # the patched side has more than the new one of its own (the redirect stepper's stack)
    assert any("mirror of" in r.name for r in session.new.space.regions)


def _jump_table_users(diff: DiffResult) -> list[tuple[int, int]]:
    """(function, table) new RVAs: unchanged functions whose code reads a jump table in
    read-only data (int32 offsets from the table into the code)."""
    found = []
    for change in diff.with_status(Status.UNCHANGED):
        assert change.new is not None
        for reference in diff.correspondence.new.fingerprints[change.new.rva].references:
            section = diff.new.section_at(reference.target_rva)
            if (
                section is not None
                and not section.is_executable
                and not section.is_writable
                and diff.correspondence.is_jump_table(reference.target_rva)
            ):
                found.append((change.new.rva, reference.target_rva))
    return found


def test_a_carried_jump_table_leads_into_the_carried_code() -> None:
    """gcc (as clang on the CVE corpus) puts a switch's table of offsets from the table
    to its cases in .rdata. A function carried with its table must reach the copies of
    its cases: the package's copy of the table is rewritten, and both checks pass."""
    diff = sample_diff("x64-gcc", "v1", "v3")
    users = _jump_table_users(diff)
    assert users, "fsm_step's switch is a jump table in .rdata"
    function_rva = users[0][0]
    carried = carry(diff, function_rva)
    report = verify_package(carried, build_package(carried, OPTIONS), inputs=100)
    (checked,) = [f for f in report.functions if f.new_rva == function_rva]
    assert checked.translation == Outcome.PASSED, checked.mismatches
    assert checked.emulation.outcome == Outcome.PASSED, checked.emulation
    assert report.passed


def test_a_verbatim_copy_of_a_jump_table_fails_validation() -> None:
    """Equal bytes are not the same table: a verbatim copy's entries lead from the copy
    as far as from the new build's table, not to the carried cases."""
    diff = sample_diff("x64-gcc", "v1", "v3")
    function_rva = _jump_table_users(diff)[0][0]
    table_rva = min(table for user, table in _jump_table_users(diff) if user == function_rva)
    carried = carry(diff, function_rva)
    package = build_package(carried, OPTIONS)
    (function,) = [f for f in package.functions if f.new_rva == function_rva]
    rodata = [b for b in package.blobs if b.kind == BlobKind.RODATA]
    # The carried code names its tables' copies through fixups into the region's data,
    # laid out in the new build's order.
    table_offset = min(
        f.target
        for f in package.fixups
        if f.target_kind == TargetKind.REGION
        and any(p.offset <= f.offset < p.offset + p.size for p in function.parts)
        and any(b.offset <= f.target < b.offset + b.size for b in rodata)
    )
    blob = next(b for b in rodata if b.offset <= table_offset < b.offset + b.size)
    at = table_offset - blob.offset
    entries = diff.new.read(table_rva, 8)  # the new build's first two entries, as they are
    assert blob.data[at : at + 8] != entries
    verbatim = dataclasses.replace(blob, data=blob.data[:at] + entries + blob.data[at + 8 :])
    tampered = dataclasses.replace(
        package, blobs=tuple(verbatim if b is blob else b for b in package.blobs)
    )
    report = verify_package(carried, tampered, emulate=False)
    (checked,) = [f for f in report.functions if f.new_rva == function_rva]
    assert checked.translation == Outcome.FAILED
    assert "jump table" in checked.mismatches[0].reason, checked.mismatches


def test_a_moved_jump_table_of_unchanged_code_corresponds() -> None:
    diff = sample_diff("x64-gcc", "v1", "v3")
    session = Session(diff, build_package(diff, OPTIONS))
    counterparts = Counterparts(session)
    back = {new: old for old, new in diff.correspondence.data.items()}
    tables = sorted({table for _, table in _jump_table_users(diff)})
    assert len(tables) >= 2
    for table in tables:
        assert back[table] != table  # .rdata grew in front of it: its bytes changed
        assert counterparts.check(session.old_base + back[table], session.new_base + table) is None
    assert counterparts.check(session.old_base + back[tables[0]], session.new_base + tables[1])


def _names_in_writable_tables(diff: DiffResult) -> list[tuple[int, int]]:
    """(old, new) RVAs of read-only data that the same pointer field of a writable
    section points at in either build (hp_fsm's command table names its commands)."""
    old, new = diff.old, diff.new
    found = []
    for section in new.sections:
        old_section = next((s for s in old.sections if s.name == section.name), None)
        if not section.is_writable or old_section is None:
            continue
        for field in diff.correspondence.new.relocated:
            offset = field - section.rva
            if not 0 <= offset <= min(section.virtual_size, old_section.virtual_size) - 8:
                continue
            new_target = int.from_bytes(new.read(field, 8), "little") - new.image_base
            old_target = (
                int.from_bytes(old.read(old_section.rva + offset, 8), "little") - old.image_base
            )
            target_section = new.section_at(new_target)
            if target_section is not None and not (
                target_section.is_writable or target_section.is_executable
            ):
                found.append((old_target, new_target))
    return found


def test_data_only_data_names_lies_where_its_learned_neighbours_put_it() -> None:
    """The names in hp_fsm's command table are reached from no code, so the diff learns
    nothing of them, and they moved by other than .rdata's most common shift. A run
    that passes one to a callee passes the old build's copy of the same string."""
    diff = sample_diff("x64-clang", "v1", "v3")
    session = Session(diff, build_package(diff, OPTIONS))
    counterparts = Counterparts(session)
    correspondence = diff.correspondence
    names = _names_in_writable_tables(diff)
    shift = correspondence.section_shift[".rdata"]
    unlearned = [
        (old, new) for old, new in names if old not in correspondence.data and old + shift != new
    ]
    assert len(unlearned) >= 2
    for old, new in names:
        assert counterparts.check(session.old_base + old, session.new_base + new) is None
    (first, _), (_, second) = unlearned[:2]
    assert counterparts.check(session.old_base + first, session.new_base + second) is not None


def _drawn_as_random_draws(seed: str) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """An input set drawn with random.Random's own methods, as verification drew it
    when the draws were written this way."""
    rng = random.Random(seed)
    scratch = []
    for _ in range(4):
        style = rng.randrange(3)
        if style == 0:
            scratch.append(bytes(0x1000))
        elif style == 1:
            scratch.append(rng.randbytes(0x1000).translate(bytes(v & 0x0F for v in range(256))))
        else:
            scratch.append(rng.randbytes(0x1000))
    arguments = []
    for _ in range(6):
        choice = rng.random()
        buffer = 0x40_0000_0000 + rng.randrange(4) * 0x2000
        if choice < 0.35:
            arguments.append(buffer)
        elif choice < 0.45:
            arguments.append(buffer + rng.randrange(0x1000))
        elif choice < 0.8:
            arguments.append(rng.randrange(17))
        elif choice < 0.9:
            arguments.append(rng.randrange(256))
        else:
            arguments.append(rng.getrandbits(32))
    return tuple(scratch), tuple(arguments)


def test_input_sets_are_the_draws_of_their_seed() -> None:
    """The draws are made from getrandbits directly, for speed: the values must stay
    those of random.Random's methods, so that a seed names the same inputs."""
    for index in range(300):
        seed = f"{0x1000 + 0x37 * index:x}/{index % 100}"
        drawn = _InputSet.draw(seed)
        assert (drawn.scratch, drawn.arguments) == _drawn_as_random_draws(seed), seed


def test_both_sides_get_the_answers_of_their_own_sequence() -> None:
    """The stubs answer the n-th import call of either side with the n-th value of one
    sequence, drawn once: the values each side would draw from its own generator."""
    diff = sample_diff("x64-clang", "v1", "v2")
    runner = _runner(diff, build_package(diff, OPTIONS))
    assert runner is not None
    key = ImportKey.of("kernel32.dll", "GetTickCount")
    for seed in ("1a0/0", "1a0/1", "2f4/7"):
        rng, heap, expected = random.Random(f"{seed}/stubs"), 0x41_0000_0000, []
        for _ in range(300):  # past the end of the stub heap
            choice = rng.random()
            if choice < 0.4:
                expected.append(0)
            elif choice < 0.6:
                expected.append(1)
            elif choice < 0.8 and heap + 0x100 <= 0x41_0000_0000 + 0x10000:
                expected.append(heap)
                heap += 0x100
            else:
                expected.append(rng.randrange(0, 64))
        runner.begin_answers(seed)
        patched = [runner.on_import("patched", key, ()) for _ in range(200)]
        new = [runner.on_import("new", key, ()) for _ in range(300)]
        patched += [runner.on_import("patched", key, ()) for _ in range(100)]
        assert patched == new == expected
