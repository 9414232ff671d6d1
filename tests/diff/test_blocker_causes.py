"""Blocker causes: each has a class and a documented row; the samples' blockers as data."""

from __future__ import annotations

import ast
import dataclasses
import json
import re

import pytest

from hpatch.arch import Reference, RefKind
from hpatch.blockers import Blocker, BlockerCause, BlockerClass, BlockerKind, Build, function_label
from hpatch.cli import main
from hpatch.diff import Status, diff_images
from hpatch.diff.correlate import Resolution, ResolvedReference, unresolved_reference
from hpatch.diff.verdict import unresolved_cause
from hpatch.image import load_image

from ..conftest import BUILDS, REPO, SAMPLES
from .samples import sample_diff

#: A row of the cause table in docs/cli.md: | `cause` | class | meaning |
ROW = re.compile(r"^\| `([a-z0-9_]+)` \| (hazard|limitation) \| (.+) \|$")


def documented_causes() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (REPO / "docs" / "cli.md").read_text().splitlines():
        found = ROW.match(line)
        if found is not None:
            cause, blocker_class, meaning = found.groups()
            assert cause not in rows, f"{cause} has two rows"
            rows[cause] = (blocker_class, meaning)
    return rows


def test_every_cause_has_a_class_and_one_documented_row() -> None:
    rows = documented_causes()
    assert set(rows) == {cause.value for cause in BlockerCause}
    for cause in BlockerCause:
        assert isinstance(cause.blocker_class, BlockerClass)
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", cause.value) and cause.name.lower() == (
            cause.value
        )
        blocker_class, meaning = rows[cause.value]
        assert blocker_class == cause.blocker_class.value, cause
        assert meaning.endswith(".") and len(meaning) > 20, cause


def test_a_blockers_class_is_its_causes() -> None:
    blocker = Blocker(
        kind=BlockerKind.TLS, cause=BlockerCause.TLS_CHANGED, where="TLS", reason="changes"
    )
    assert blocker.blocker_class == BlockerClass.HAZARD
    assert not hasattr(blocker, "__dict__")  # slotted
    with pytest.raises(dataclasses.FrozenInstanceError):
        blocker.cause = BlockerCause.NEW_IMPORT  # type: ignore[misc]
    with pytest.raises(TypeError):
        Blocker(BlockerKind.TLS, BlockerCause.TLS_CHANGED, "TLS", "changes")  # type: ignore[misc]


def unresolved_causes_of_the_correlator() -> list[BlockerCause]:
    """The cause every ``unresolved_reference(...)`` call of the correlator gives."""
    tree = ast.parse((REPO / "hpatch" / "diff" / "correlate.py").read_text())
    causes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (
            isinstance(node.func, ast.Name) and node.func.id == "ResolvedReference"
        ):
            # an unresolved resolution is only ever made with its cause
            assert not any(
                isinstance(a, ast.Attribute) and a.attr == "UNRESOLVED" for a in node.args[1:2]
            ) or (len(node.args) == 5), ast.unparse(node)
        if isinstance(node, ast.Call) and (
            isinstance(node.func, ast.Name) and node.func.id == "unresolved_reference"
        ):
            cause = node.args[1]
            assert isinstance(cause, ast.Attribute) and ast.unparse(cause.value) == "BlockerCause"
            causes.append(BlockerCause[cause.attr])
    return causes


def test_every_unresolved_reference_of_the_correlator_has_a_limitation_cause() -> None:
    causes = unresolved_causes_of_the_correlator()
    assert len(causes) >= 7
    assert all(cause.blocker_class == BlockerClass.LIMITATION for cause in causes)
    assert {BlockerCause.IMPORT_DLL_CHANGED, BlockerCause.UNMATCHED_FUNCTION} <= set(causes)
    reference = Reference(0x1000, RefKind.CALL, 0x2000)
    made = unresolved_reference(reference, BlockerCause.UNKNOWN_DATA, "unknown data in .rdata")
    assert made.resolution == Resolution.UNRESOLVED and made.old_rva is None
    assert unresolved_cause(made) == BlockerCause.UNKNOWN_DATA
    with pytest.raises(LookupError):
        unresolved_cause(ResolvedReference(reference, Resolution.UNRESOLVED, None, "no such"))


@pytest.mark.parametrize("build", BUILDS)
def test_the_feature_update_needs_a_new_baseline_for_its_writable_data(build: str) -> None:
    diff = sample_diff(build, "v1", "v4")
    section = next(s for s in diff.old.sections if s.name == ".data")
    assert diff.blockers
    assert {b.cause for b in diff.blockers} == {
        BlockerCause.WRITABLE_DATA_RESIZED,
        BlockerCause.WRITABLE_INITIAL_VALUE,
    }
    for blocker in diff.blockers:
        assert blocker.kind == BlockerKind.WRITABLE_DATA
        assert blocker.blocker_class == BlockerClass.HAZARD
        assert blocker.section == ".data" and blocker.build == Build.OLD
        assert blocker.rva is not None and blocker.end_rva is not None
        assert section.rva <= blocker.rva < blocker.end_rva <= section.end_rva
        assert blocker.function is None and blocker.target_rva is None
    (resized,) = [b for b in diff.blockers if b.cause == BlockerCause.WRITABLE_DATA_RESIZED]
    assert (resized.rva, resized.end_rva) == (section.rva, section.rva + section.virtual_size)
    for blocker in diff.blockers:
        if blocker.cause == BlockerCause.WRITABLE_INITIAL_VALUE:
            assert blocker.where.startswith(f".data 0x{blocker.rva:x}..0x{blocker.end_rva:x} (")
            assert blocker.symbol is None  # stripped
    named = sample_diff(build, "v1", "v4", stripped=False)
    assert "g_hp_config" in {b.symbol for b in named.blockers}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), capsys.readouterr().out


def test_the_diff_command_gives_each_blocker_its_class_and_cause(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = SAMPLES / "x64-clang"
    paths = [str(folder / version / "sample.dll") for version in ("v1", "v4")]
    code, out = run(capsys, "diff", *paths, "--json")
    document = json.loads(out)
    assert code == 3 and document["schema"] == "hpatch.diff/2"
    for blocker in document["blockers"]:
        assert list(blocker) == [
            "kind",
            "class",
            "cause",
            "where",
            "function",
            "rva",
            "end_rva",
            "section",
            "symbol",
            "target_rva",
            "build",
            "reason",
        ]
        assert blocker["class"] == "hazard" and blocker["build"] == "old"
    assert {b["cause"] for b in document["blockers"]} == {
        "writable_data_resized",
        "writable_initial_value",
    }
    config = next(b for b in document["blockers"] if b["symbol"] == "g_hp_config")
    assert config["section"] == ".data" and config["rva"] < config["end_rva"]
    code, out = run(capsys, "diff", *paths)
    assert code == 3
    assert "writable_initial_value" in out and "hazard" in out
    assert "not hotpatchable: the update needs a new baseline" in out


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_no_room_for_a_redirect_is_a_limitation(
    build: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no redirect form to fit, a code-only update is blocked by hpatch, not by the
    update: the blockers are limitations at each modified function of the old build."""
    paths = [SAMPLES / build / version / "sample.stripped.dll" for version in ("v1", "v2")]
    old, new = (load_image(path) for path in paths)
    monkeypatch.setattr(type(old.arch), "redirect_strategy", lambda *_: None)
    diff = diff_images(old, new)
    modified = {c.old.rva: c.old for c in diff.with_status(Status.MODIFIED) if c.old is not None}
    assert modified and len(diff.blockers) == len(modified)
    for blocker in diff.blockers:
        assert blocker.kind == BlockerKind.TOO_SMALL
        assert blocker.cause == BlockerCause.NO_REDIRECT_ROOM
        assert blocker.blocker_class == BlockerClass.LIMITATION
        assert blocker.build == Build.OLD and blocker.rva in modified
        assert blocker.function == blocker.where == function_label(modified[blocker.rva])
    code, out = run(capsys, "diff", *map(str, paths))
    assert code == 3
    assert "no_redirect_room" in out and "limitation" in out
    assert "not hotpatchable: hpatch cannot package it yet (0 hazards," in out
