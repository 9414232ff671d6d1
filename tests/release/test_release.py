"""``hpatch release`` over two small release trees built from the samples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hpatch.cli import main
from hpatch.package import BuildOptions
from hpatch.package.signing import generate_key
from hpatch.release import RELEASE_SCHEMA, Outcome, Pair, Settings, pair_trees, service_pair
from hpatch.release.run import run_pairs

from ..conftest import SAMPLES

DLL = "sample.stripped.dll"
INPUTS = "5"  # the packages' proofs are tested elsewhere: a few input sets suffice here


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def _copy(build: str, version: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SAMPLES / build / version / DLL, target)


def make_trees(root: Path) -> tuple[Path, Path]:
    """Two release trees: every status, both machines, a path whose case changed."""
    old, new = root / "old", root / "new"
    _copy("x64-clang", "v1", old / "x64" / "core.dll")
    _copy("x64-clang", "v3", new / "X64" / "Core.DLL")  # pairs case-insensitively
    _copy("arm64-clang", "v1", old / "arm64" / "core.dll")
    _copy("arm64-clang", "v3", new / "arm64" / "core.dll")
    _copy("x64-gcc", "v1", old / "same.dll")
    _copy("x64-gcc", "v1", new / "same.dll")
    _copy("x64-clang", "v1", old / "blocked" / "data.dll")
    _copy("x64-clang", "v4", new / "blocked" / "data.dll")
    _copy("arm64-clang", "v1", old / "broken.dll")
    (new / "broken.dll").write_bytes((SAMPLES / "arm64-clang" / "v3" / DLL).read_bytes()[:1500])
    _copy("x64-gcc", "v2", old / "gone.dll")
    _copy("x64-gcc", "v3", new / "fresh.dll")
    (old / "readme.txt").write_text("release notes\n")
    (new / "readme.txt").write_text("release notes, new\n")
    return old, new


EXPECTED = {
    "arm64/core.dll": "packaged",
    "blocked/data.dll": "blocked",
    "broken.dll": "error",
    "fresh.dll": "added",
    "gone.dll": "removed",
    "same.dll": "unchanged",
    "X64/Core.DLL": "packaged",
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("release")
    old, new = make_trees(root)
    generate_key(root / "release.key")
    return root, old, new


def servicing_args(trees: tuple[Path, Path, Path], out: Path) -> list[str]:
    root, old, new = trees
    return [
        "release",
        str(old),
        str(new),
        "-o",
        str(out),
        "--inputs",
        INPUTS,
        "--sign-key",
        str(root / "release.key"),
        "--sequence",
        "2",
        "--supersedes",
        "1-1",
        "--advisory",
        "CVE-2026-0001",
    ]


def release(
    capsys: pytest.CaptureFixture[str], trees: tuple[Path, Path, Path], out: Path, *extra: str
) -> tuple[int, str, str]:
    return run(capsys, *servicing_args(trees, out), *extra)


@pytest.fixture(scope="module")
def first_run(
    trees: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    """One signed run on two worker processes, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("out") / "release"
    with pytest.raises(SystemExit) as exited:
        main([*servicing_args(trees, out), "--jobs", "2"])
    return out, int(exited.value.code or 0)


def outputs(out: Path) -> dict[str, bytes]:
    """Every file a run wrote except the timings, by path relative to ``out``."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "timings.json"
    }


def test_pairing_ignores_non_pe_and_case(trees: tuple[Path, Path, Path]) -> None:
    _, old, new = trees
    pairs = {p.path: p for p in pair_trees(str(old), str(new))}
    assert set(pairs) == set(EXPECTED)  # readme.txt is not a PE file
    core = pairs["X64/Core.DLL"]
    assert core.old is not None and core.old.path == "x64/core.dll"
    assert core.new is not None and core.old.machine == "AMD64"
    assert pairs["arm64/core.dll"].new.machine == "ARM64"  # type: ignore[union-attr]


def test_pairing_refuses_names_differing_in_case(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _copy("x64-gcc", "v1", old / "a.dll")
    _copy("x64-gcc", "v1", new / "a.dll")
    _copy("x64-gcc", "v1", new / "A.dll")
    pairs = pair_trees(str(old), str(new))
    assert [(p.path, p.error is not None) for p in pairs] == [("A.dll", True), ("a.dll", True)]
    assert "differ only in case" in (pairs[0].error or "")


def test_release_statuses_and_manifest(
    first_run: tuple[Path, int], trees: tuple[Path, Path, Path]
) -> None:
    out, code = first_run
    assert code == 1  # the malformed file is an error; the run went on
    manifest_text = (out / "release.json").read_text()
    document = json.loads(manifest_text)
    assert document["schema"] == RELEASE_SCHEMA
    assert {b["path"]: b["status"] for b in document["binaries"]} == EXPECTED
    assert [b["path"] for b in document["binaries"]] == list(EXPECTED)  # by path, any case
    by_path = {b["path"]: b for b in document["binaries"]}
    assert by_path["arm64/core.dll"]["machine"] == "ARM64"
    core = by_path["X64/Core.DLL"]
    assert core["machine"] == "AMD64" and core["functions"]["modified"] > 0
    assert core["package"]["file"] == "packages/X64/Core.DLL.hpk"
    data = (out / core["package"]["file"]).read_bytes()
    assert core["package"]["size"] == len(data)
    blocked = by_path["blocked/data.dll"]
    assert blocked["package"] is None and blocked["blockers"]
    assert {"class", "cause", "where", "reason"} <= set(blocked["blockers"][0])
    assert "truncated" in by_path["broken.dll"]["error"]
    assert by_path["same.dll"]["identical"] is True
    assert document["summary"] == {
        "unchanged": 1,
        "packaged": 2,
        "blocked": 1,
        "error": 1,
        "added": 1,
        "removed": 1,
    }
    assert document["servicing"]["sequence"] == 2
    assert document["servicing"]["supersedes"] == [1, 1]
    root = trees[0]
    for name in ("release.json", "timings.json"):
        text = (out / name).read_text()
        assert str(root) not in text and str(out) not in text  # no absolute path
    assert "seconds" not in manifest_text  # timings stay out of the signed manifest
    assert sorted(p.name for p in out.iterdir()) == [
        "index.html",
        "packages",
        "release.json",
        "release.json.sig",
        "timings.json",
    ]


def test_release_packages_verify(
    capsys: pytest.CaptureFixture[str],
    first_run: tuple[Path, int],
    trees: tuple[Path, Path, Path],
) -> None:
    out = first_run[0]
    _, old, new = trees
    for old_name, new_name in (
        ("x64/core.dll", "X64/Core.DLL"),
        ("arm64/core.dll", "arm64/core.dll"),
    ):
        package = out / "packages" / f"{new_name}.hpk"
        code, out_text, _ = run(
            capsys,
            "verify",
            str(old / old_name),
            str(new / new_name),
            str(package),
            "--inputs",
            INPUTS,
        )
        assert code == 0, out_text


def test_release_is_deterministic(
    capsys: pytest.CaptureFixture[str],
    first_run: tuple[Path, int],
    trees: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    out = tmp_path / "again"
    code, _, _ = release(capsys, trees, out, "--jobs", "1")
    assert code == 1
    assert outputs(out) == outputs(first_run[0])  # --jobs 1 and --jobs 2 alike
    # A second run refuses to replace the outputs, and replaces them with --force.
    code, _, err = release(capsys, trees, out, "--jobs", "1")
    assert code == 1 and "--force" in err
    code, _, _ = release(capsys, trees, out, "--jobs", "2", "--force")
    assert code == 1
    assert outputs(out) == outputs(first_run[0])


def test_release_json_prints_the_manifest(
    capsys: pytest.CaptureFixture[str], trees: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, old, new = trees
    # Only the unchanged and the added file: quick, and exit 0 without an error.
    small_old, small_new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(
        old, small_old, ignore=shutil.ignore_patterns("core.dll", "broken.dll", "data.dll")
    )
    shutil.copytree(
        new, small_new, ignore=shutil.ignore_patterns("*ore.*", "broken.dll", "data.dll")
    )
    out = tmp_path / "out"
    code, printed, _ = run(
        capsys, "release", str(small_old), str(small_new), "-o", str(out), "--json", "--no-emulate"
    )
    assert code == 0
    assert printed == (out / "release.json").read_text()
    statuses = {b["path"]: b["status"] for b in json.loads(printed)["binaries"]}
    assert statuses == {"fresh.dll": "added", "gone.dll": "removed", "same.dll": "unchanged"}
    assert not (out / "release.json.sig").exists()


def test_release_refuses_output_inside_a_tree(
    capsys: pytest.CaptureFixture[str], trees: tuple[Path, Path, Path]
) -> None:
    _, old, new = trees
    code, _, err = run(capsys, "release", str(old), str(new), "-o", str(new / "out"))
    assert code == 1 and "inside NEW_DIR" in err
    assert not (new / "out").exists()


def test_inspect_release_checks_signature_and_digests(
    capsys: pytest.CaptureFixture[str],
    first_run: tuple[Path, int],
    trees: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    root = trees[0]
    trust = str(root / "release.key.pub")
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    code, printed, _ = run(capsys, "inspect", "--release", str(out), "--trust", trust, "--json")
    document = json.loads(printed)
    assert code == 0 and document["ok"] and document["signature"]["status"] == "trusted"
    assert [p["result"] for p in document["packages"]] == ["ok", "ok"]

    # One byte of one package changed: its digest no longer matches the signed manifest.
    package = out / "packages" / "arm64" / "core.dll.hpk"
    original = package.read_bytes()
    package.write_bytes(original[:40] + bytes([original[40] ^ 1]) + original[41:])
    code, printed, _ = run(capsys, "inspect", "--release", str(out), "--trust", trust, "--json")
    document = json.loads(printed)
    assert code == 6 and not document["ok"]
    assert [p["result"] for p in document["packages"]] == ["mismatch", "ok"]
    package.write_bytes(original)

    # The manifest changed: the signature no longer holds, nothing else is believed.
    manifest = out / "release.json"
    text = manifest.read_text()
    manifest.write_text(text.replace('"sequence": 2', '"sequence": 3'))
    code, printed, _ = run(capsys, "inspect", "--release", str(out), "--trust", trust, "--json")
    assert code == 6 and json.loads(printed)["signature"]["status"] == "invalid"
    manifest.write_text(text)

    # A key the store does not hold, and a missing signature, are refused too.
    generate_key(tmp_path / "other.key")
    code, _, _ = run(
        capsys, "inspect", "--release", str(out), "--trust", str(tmp_path / "other.key.pub")
    )
    assert code == 6
    (out / "release.json.sig").unlink()
    code, printed, _ = run(capsys, "inspect", "--release", str(out), "--trust", trust, "--json")
    assert code == 6 and json.loads(printed)["signature"]["status"] == "unsigned"


def test_inspect_needs_a_package_or_a_release(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "inspect")
    assert code == 2 and "--release" in err


def crash_on_broken(pair: Pair, settings: Settings) -> Outcome:
    """A task whose worker process dies on one pair, as a crash in native code would."""
    if pair.path == "broken.dll":
        os._exit(70)
    return service_pair(pair, settings)


def test_a_dying_worker_costs_only_its_pair(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for tree in (old, new):
        _copy("x64-gcc", "v1", tree / "same.dll")
        _copy("x64-gcc", "v1", tree / "same2.dll")
    _copy("x64-gcc", "v1", old / "broken.dll")
    _copy("x64-gcc", "v2", new / "broken.dll")
    _copy("x64-gcc", "v2", old / "gone.dll")
    _copy("x64-gcc", "v3", new / "fresh.dll")
    pairs = pair_trees(str(old), str(new))
    settings = Settings(BuildOptions(1, None, "", ""), emulate=False)
    outcomes = run_pairs(pairs, settings, 2, task=crash_on_broken)
    statuses = {p.path: o.entry["status"] for p, o in zip(pairs, outcomes, strict=True)}
    assert statuses == {
        "broken.dll": "error",
        "fresh.dll": "added",
        "gone.dll": "removed",
        "same.dll": "unchanged",
        "same2.dll": "unchanged",
    }
    broken = outcomes[[p.path for p in pairs].index("broken.dll")]
    assert "worker" in broken.entry["error"]


def test_inspect_release_refuses_paths_out_of_the_release(
    capsys: pytest.CaptureFixture[str], first_run: tuple[Path, int], tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(first_run[0], out)
    (tmp_path / "outside.hpk").write_bytes(b"")
    document = json.loads((out / "release.json").read_text())
    packaged = [b for b in document["binaries"] if b["package"]]
    packaged[0]["package"]["file"] = "../outside.hpk"
    packaged[1]["package"]["file"] = str(tmp_path / "outside.hpk")
    (out / "release.json").write_text(json.dumps(document))
    code, printed, _ = run(capsys, "inspect", "--release", str(out), "--json")
    assert code == 6
    assert [p["result"] for p in json.loads(printed)["packages"]] == ["refused", "refused"]


def test_release_never_writes_over_the_signing_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "out"
    for tree in (old, new):
        _copy("x64-gcc", "v1", tree / "same.dll")
    out.mkdir()
    generate_key(out / "release.json")  # the key where the manifest would go
    key = (out / "release.json").read_bytes()
    code, _, err = run(
        capsys,
        "release",
        str(old),
        str(new),
        "-o",
        str(out),
        "--sign-key",
        str(out / "release.json"),
        "--force",
    )
    assert code == 1 and "it is the input" in err
    assert (out / "release.json").read_bytes() == key
