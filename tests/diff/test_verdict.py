"""Hotpatchability: code-only updates pass, a data-layout update is blocked with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpatch.blockers import BlockerCause
from hpatch.cli import main
from hpatch.diff import BlockerKind, diff_images
from hpatch.errors import UnsupportedError
from hpatch.image import load_image

from ..conftest import BUILDS, SAMPLES
from .samples import sample_diff


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(("old", "new"), [("v1", "v2"), ("v1", "v3"), ("v2", "v3")])
def test_monthly_updates_are_hotpatchable(build: str, old: str, new: str) -> None:
    result = sample_diff(build, old, new)
    assert result.hotpatchable, result.blockers
    assert result.summary()["modified"] >= 2


@pytest.mark.parametrize("build", BUILDS)
def test_the_feature_update_is_blocked_by_its_data(build: str) -> None:
    stripped = sample_diff(build, "v1", "v4")
    assert not stripped.hotpatchable
    kinds = {b.kind for b in stripped.blockers}
    assert BlockerKind.WRITABLE_DATA in kinds
    assert any(
        b.section == ".data" and b.cause == BlockerCause.WRITABLE_DATA_RESIZED
        for b in stripped.blockers
    )
    # With the symbol table the blocker names the global; without it, its users.
    named = sample_diff(build, "v1", "v4", stripped=False)
    wheres = " ".join(b.where for b in named.blockers if b.kind == BlockerKind.WRITABLE_DATA)
    assert "g_hp_config" in wheres
    assert "used by" in " ".join(b.where for b in stripped.blockers)


def test_images_of_different_machines_are_not_diffed() -> None:
    with pytest.raises(UnsupportedError, match="AMD64 image against a ARM64"):
        diff_images(
            load_image(SAMPLES / "x64-clang" / "v1" / "sample.dll"),
            load_image(SAMPLES / "arm64-clang" / "v1" / "sample.dll"),
        )


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_diff_command_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    folder = SAMPLES / "arm64-clang"
    code, out, _ = run(
        capsys,
        "diff",
        str(folder / "v1/sample.stripped.dll"),
        str(folder / "v2/sample.stripped.dll"),
        "--json",
    )
    document = json.loads(out)
    assert code == 0 and document["hotpatchable"] is True and document["blockers"] == []
    assert list(document) == [
        "schema",
        "hpatch_version",
        "old",
        "new",
        "summary",
        "functions",
        "hotpatchable",
        "blockers",
    ]
    assert document["schema"] == "hpatch.diff/2"
    assert document["summary"]["modified"] == 3 and document["summary"]["added"] == 1
    statuses = [f["status"] for f in document["functions"]]
    assert statuses.count("unchanged") == document["summary"]["unchanged"]
    first = document["functions"][0]
    assert first["status"] == "modified" and {"old_rva", "new_rva", "match", "confidence"} <= set(
        first
    )
    code, out, _ = run(capsys, "diff", str(folder / "v1/sample.dll"), str(folder / "v4/sample.dll"))
    assert code == 3
    assert "not hotpatchable" in out and "g_hp_config" in out


def test_diff_command_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.dll"
    junk.write_bytes(b"MZ" + bytes(100))
    code, _, err = run(capsys, "diff", str(junk), str(SAMPLES / "x64-gcc/v1/sample.dll"))
    assert code == 1 and err.startswith("hpatch: error:") and "Traceback" not in err


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_new_code_binds_to_where_a_moved_global_lives_in_the_old_image(build: str) -> None:
    """In v4 g_hp_stats moved whole (globals before it grew); hp_get_stats changed."""
    from hpatch.diff.correlate import Correlator, Resolution

    old_image = load_image(SAMPLES / build / "v1" / "sample.dll")
    new_image = load_image(SAMPLES / build / "v4" / "sample.dll")
    result = diff_images(old_image, new_image)
    old_stats = next(s for s in old_image.symbols if s.name == "g_hp_stats")
    new_stats = next(s for s in new_image.symbols if s.name == "g_hp_stats")
    assert old_stats.rva != new_stats.rva
    assert result.correspondence.writable_moves.get(old_stats.rva) == new_stats.rva
    correspondence = result.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, result.changes)
    change = next(c for c in result.changes if c.new is not None and c.new.name == "hp_get_stats")
    bound = [
        r.old_rva
        for r in correlator.resolve_function(change)
        if r.resolution == Resolution.OLD_DATA and r.reference.target_rva == new_stats.rva
    ]
    assert bound and set(bound) == {old_stats.rva}


@pytest.mark.parametrize("build", BUILDS)
def test_entry_room_reads_the_first_instruction_a_whole_decode_finds(build: str) -> None:
    """entry_room decodes only the start of a function; a decode of all of it agrees."""
    from hpatch.diff.verdict import entry_room

    image = load_image(SAMPLES / build / "v1" / "sample.stripped.dll")
    for function in image.functions:
        whole = sorted(image.arch.instruction_starts(image.read, function.rva, function.extent_end))
        expected = (whole[1] if len(whole) > 1 else function.extent_end) - function.rva
        assert entry_room(image, function)[2] == expected, function


@pytest.mark.parametrize("build", BUILDS)
def test_the_unresolved_references_are_those_resolve_leaves_unresolved(build: str) -> None:
    from hpatch.diff.classify import Status
    from hpatch.diff.correlate import Correlator, Resolution

    result = sample_diff(build, "v1", "v4")
    correspondence = result.correspondence
    correlator = Correlator(correspondence.old, correspondence.new, correspondence, result.changes)
    carried = [c for c in result.changes if c.status in (Status.MODIFIED, Status.ADDED)]
    assert carried
    for change in carried:
        assert change.new is not None
        resolved = correlator.resolve_function(change)
        assert [r.reference for r in resolved] == list(
            correspondence.new.fingerprints[change.new.rva].references
        )
        assert correlator.unresolved(change) == [
            r for r in resolved if r.resolution == Resolution.UNRESOLVED
        ]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_diff_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    import gc

    folder = SAMPLES / "x64-clang"
    old, new = load_image(folder / "v1/sample.dll"), load_image(folder / "v2/sample.dll")
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        diff_images(old, new)
        assert gc.isenabled() == enabled
    finally:
        if was:
            gc.enable()
