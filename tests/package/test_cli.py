"""`hpatch diff -o`, `hpatch inspect` and `hpatch keygen`: files, documents, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpatch.package import decode_package

from ..conftest import SAMPLES
from ..diff.samples import sample_diff
from ..test_cli import run
from .packages import OPTIONS, sample_package

BUILD = SAMPLES / "x64-clang"


def image(version: str, build: Path = BUILD) -> str:
    return str(build / version / "sample.stripped.dll")


def options() -> list[str]:
    assert OPTIONS.supersedes is not None
    return [
        "--sequence",
        str(OPTIONS.sequence),
        "--supersedes",
        f"{OPTIONS.supersedes[0]}-{OPTIONS.supersedes[1]}",
        "--description",
        OPTIONS.description,
        "--advisory",
        OPTIONS.advisory,
    ]


def test_diff_writes_the_package_the_api_builds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "update.hpk"
    code, out, err = run(capsys, "diff", image("v1"), image("v3"), "-o", str(output), *options())
    # stderr, not a terminal here: one line for the long stage, proving the package
    assert code == 0 and re.fullmatch(
        r"hpatch: diff: packaged and proved: \d+ functions \(\d+\.\d\d s\)\n", err
    ), err
    assert output.read_bytes() == sample_package("x64-clang", "v1", "v3")
    assert f"package written to {output}" in out
    assert [p.name for p in tmp_path.iterdir()] == ["update.hpk"]  # no temporary left behind


def test_a_blocked_update_writes_nothing_and_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "update.hpk"
    code, out, _ = run(capsys, "diff", image("v1"), image("v4"), "-o", str(output), "--json")
    assert code == 3
    document = json.loads(out)
    assert document["hotpatchable"] is False and document["package"] is None
    assert document["blockers"]
    assert not output.exists()


def test_signed_packages_inspect_as_trusted_only_with_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = tmp_path / "release"
    code, out, _ = run(capsys, "keygen", str(key))
    assert code == 0 and "key id" in out
    code, _, err = run(capsys, "keygen", str(key))
    assert code == 1 and "refusing to overwrite" in err
    output = tmp_path / "signed.hpk"
    code, _, _ = run(
        capsys, "diff", image("v1"), image("v2"), "-o", str(output), "--sign-key", str(key)
    )
    assert code == 0
    package = decode_package(output.read_bytes())
    assert package.signature is not None
    code, out, _ = run(capsys, "inspect", str(output), "--trust", f"{key}.pub")
    assert code == 0
    assert f"Ed25519 by key {package.signature.key_id.hex()} (trusted)" in out
    other = tmp_path / "other"
    run(capsys, "keygen", str(other))
    code, out, _ = run(capsys, "inspect", str(output), "--json", "--trust", f"{other}.pub")
    # the document is shown, and the check it failed is the exit code
    assert code == 6 and json.loads(out)["signature"]["status"] == "untrusted"
    unsigned = tmp_path / "unsigned.hpk"
    assert run(capsys, "diff", image("v1"), image("v2"), "-o", str(unsigned))[0] == 0
    code, out, _ = run(capsys, "inspect", str(unsigned), "--json", "--trust", f"{key}.pub")
    assert code == 6 and json.loads(out)["signature"]["status"] == "unsigned"
    assert run(capsys, "inspect", str(unsigned))[0] == 0  # nothing asked of it


def test_inspect_report_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "p.hpk"
    path.write_bytes(sample_package("arm64-clang", "v1", "v3"))
    package = decode_package(path.read_bytes())
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0 and err == ""
    assert "sequence 2, supersedes 1-1, advisory CVE-0000-0001" in out
    assert "ARM64_B" in out and "signature: unsigned" in out
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    document = json.loads(out)
    assert document["machine"] == "ARM64"
    assert document["baseline"]["mapped_sha256"] == package.baseline.mapped_sha256.hex()
    assert [f["new_rva"] for f in document["functions"]] == [f.new_rva for f in package.functions]
    # fixup counts without the image are those of the resolved package, function by function
    resolved = decode_package(path.read_bytes(), sample_diff("arm64-clang", "v1", "v3").old.mapped)
    per_function = [
        sum(
            1
            for fixup in resolved.fixups
            for part in function.parts
            if part.offset <= fixup.offset < part.offset + part.size
        )
        for function in resolved.functions
    ]
    assert [f["fixups"] for f in document["functions"]] == per_function
    assert document["fixups"] == len(resolved.fixups) > sum(per_function) > 0
    assert [i["old_iat_rva"] for i in document["imports"]] == [
        i.old_iat_rva for i in resolved.imports
    ]
    assert document["imports"] and all(i["dll"] is None for i in document["imports"])
    assert {f["redirect"] for f in document["functions"] if f["status"] == "modified"} == {
        "ARM64_B"
    }
    # inspect reads the package without its baseline: the redirect digests come from it
    assert {f["original_sha256"] for f in document["functions"]} == {None}
    assert [b["size"] for b in document["region"]["blobs"]] == [b.size for b in package.blobs]
    assert document["signature"] == {"signed": False, "key_id": None, "status": "unsigned"}


@pytest.mark.parametrize(
    "content", [b"", b"not a package", sample_package("x64-gcc", "v1", "v2")[:-1]]
)
def test_bad_packages_exit_1_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bad.hpk"
    path.write_bytes(content)
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 1 and out == ""
    assert err.startswith("hpatch: error:") and "Traceback" not in err
    code, _, err = run(capsys, "inspect", str(tmp_path / "missing.hpk"))
    assert code == 1 and "cannot read" in err
