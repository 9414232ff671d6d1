"""``hpatch verify`` and ``hpatch diff -o``'s validation: exit codes and documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpatch.package import encode_package

from ..conftest import SAMPLES
from ..diff.samples import sample_diff
from ..test_cli import run
from .tampering import corrupt_fixup, misplace_global
from .test_verify import OPTIONS

IMAGE = "sample.stripped.dll"
#: A counter of g_hp_stats (x64-clang v2) that hp_json_escape increments.
STATS_FIELD = 0x60DC


def images(build: str, old: str, new: str) -> tuple[str, str]:
    return str(SAMPLES / build / old / IMAGE), str(SAMPLES / build / new / IMAGE)


def test_verify_passes_a_package_diff_wrote(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new = images("arm64-clang", "v1", "v3")
    output = tmp_path / "p.hpk"
    code, out, err = run(capsys, "diff", old, new, "-o", str(output), "--json")
    assert code == 0, err
    assert json.loads(out)["package"]["size"] == output.stat().st_size
    code, out, err = run(capsys, "verify", old, new, str(output), "--json", "--inputs", "20")
    assert code == 0, err
    document = json.loads(out)
    assert document["passed"] is True and document["inputs"] == 20
    summary = document["summary"]
    assert summary["functions"] == summary["translation_passed"] == len(document["functions"])
    assert summary["emulation_passed"] + summary["not_emulated"] == summary["functions"]
    assert all(f["emulation"]["agreed"] == 20 for f in document["functions"])


def test_verify_exits_4_and_names_the_function_of_a_bad_fixup(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from hpatch.package import build_package

    old, new = images("x64-clang", "v1", "v3")
    corrupted, function = corrupt_fixup(
        build_package(sample_diff("x64-clang", "v1", "v3"), OPTIONS)
    )
    path = tmp_path / "bad.hpk"
    path.write_bytes(encode_package(corrupted))
    code, out, err = run(capsys, "verify", old, new, str(path), "--json", "--inputs", "5")
    assert code == 4, err
    document = json.loads(out)
    failed = [f for f in document["functions"] if not f["passed"]]
    assert [f["new_rva"] for f in failed] == [function.new_rva]
    assert failed[0]["translation"] == "failed" and failed[0]["mismatches"]
    code, out, err = run(capsys, "verify", old, new, str(path))
    assert code == 4 and "FAILED" in out


def test_verify_refuses_bad_input_with_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new = images("x64-gcc", "v1", "v2")
    path = tmp_path / "p.hpk"
    assert run(capsys, "diff", old, new, "-o", str(path))[0] == 0
    _, other = images("x64-gcc", "v1", "v3")
    code, _, err = run(capsys, "verify", old, other, str(path))
    assert code == 1 and "is not the build the package installs" in err
    code, _, err = run(capsys, "verify", other, new, str(path))
    assert code == 1 and "does not apply to the old image" in err
    (tmp_path / "junk.hpk").write_bytes(b"HPK\0junk")
    code, _out, err = run(capsys, "verify", old, new, str(tmp_path / "junk.hpk"))
    assert code == 1 and "Traceback" not in err


def test_diff_validates_by_default_and_no_verify_writes_the_same_bytes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new = images("x64-clang-hotpatch", "v1", "v3")
    checked, unchecked = tmp_path / "a.hpk", tmp_path / "b.hpk"
    assert run(capsys, "diff", old, new, "-o", str(checked))[0] == 0
    assert run(capsys, "diff", old, new, "-o", str(unchecked), "--no-verify")[0] == 0
    assert checked.read_bytes() == unchecked.read_bytes()


def test_diff_writes_nothing_that_emulation_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diff that takes one zero-initialised field of g_hp_stats for its neighbour makes
    a package translation validation accepts (the correlation names the place, and the
    initial values agree) but that counts into the wrong field: differential emulation
    finds it, so ``diff -o`` refuses it as ``verify`` would fail it."""
    import hpatch.cli.diff

    old, new = images("x64-clang", "v1", "v2")
    real = hpatch.cli.diff.diff_images
    monkeypatch.setattr(
        hpatch.cli.diff,
        "diff_images",
        lambda *args: misplace_global(real(*args), STATS_FIELD, STATS_FIELD - 4),
    )
    output = tmp_path / "p.hpk"
    code, out, err = run(capsys, "diff", old, new, "-o", str(output), "--json")
    assert code == 3, err
    document = json.loads(out)
    assert document["hotpatchable"] is False and document["package"] is None
    assert not output.exists()
    (blocker,) = document["blockers"]
    assert blocker["cause"] == "emulation_diverged" and blocker["kind"] == "unvalidated"
    assert blocker["function"] == "hp_json_escape"
    assert blocker["reason"].startswith("differential emulation failed: input set ")
    code, _, err = run(capsys, "diff", old, new, "-o", str(output), "--no-verify")
    assert code == 0, err
    # verify diffs the builds itself, correctly: the package fails it too
    code, out, err = run(capsys, "verify", old, new, str(output), "--json")
    assert code == 4, err
    assert "hp_json_escape" in {f["name"] for f in json.loads(out)["functions"] if not f["passed"]}
