"""Every ``--json`` document validates against its schema in docs/schema/: each command's
document on success and the error document on failure (the jsonschema package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hpatch import __version__
from hpatch.cli import COMMANDS, main

from .conftest import SAMPLES
from .release.test_release import make_trees

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schema"
BUILD = SAMPLES / "x64-clang"
V1, V3, V4 = (BUILD / v / "sample.stripped.dll" for v in ("v1", "v3", "v4"))
ARM64_V1 = SAMPLES / "arm64-clang" / "v1" / "sample.stripped.dll"


def schema_for(document: dict[str, Any]) -> dict[str, Any]:
    """The schema a document names: ``hpatch.<name>/<n>`` is docs/schema/<name>-<n>."""
    name, _, version = document["schema"].removeprefix("hpatch.").partition("/")
    return json.loads((SCHEMAS / f"{name}-{version}.schema.json").read_text(encoding="utf-8"))


def validated(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run a command; its stdout must be one JSON document valid under its schema."""
    with pytest.raises(SystemExit) as exited:
        main([*args, "--json"])
    document = json.loads(capsys.readouterr().out)
    assert document["hpatch_version"] == __version__
    jsonschema.validate(document, schema_for(document), cls=jsonschema.Draft202012Validator)
    return int(exited.value.code or 0), document


def test_every_schema_file_is_a_valid_schema_and_every_command_has_one() -> None:
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert files
    for path in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))
    for entry in COMMANDS:
        if entry.schema is not None:
            name, _, version = entry.schema.removeprefix("hpatch.").partition("/")
            assert (SCHEMAS / f"{name}-{version}.schema.json").is_file(), entry.schema


@pytest.fixture(scope="module")
def signed_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from hpatch.package.signing import generate_key

    root = tmp_path_factory.mktemp("schemas")
    key = root / "k"
    public = generate_key(key)
    package = root / "p.hpk"
    with pytest.raises(SystemExit):
        main(["diff", str(V1), str(V3), "-o", str(package), "--sign-key", str(key)])
    return package, Path(public)


@pytest.mark.parametrize("image", [V1, ARM64_V1], ids=["x64", "arm64"])
def test_image_documents(capsys: pytest.CaptureFixture[str], image: Path) -> None:
    for command in ("funcs", "info"):
        code, document = validated(capsys, command, str(image))
        assert code == 0 and document["schema"] == f"hpatch.{command}/1"


def test_diff_documents(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, document = validated(capsys, "diff", str(V1), str(V3))
    assert code == 0 and document["hotpatchable"] is True
    code, document = validated(capsys, "diff", str(V1), str(V4))
    assert code == 3 and document["blockers"]
    output = tmp_path / "p.hpk"
    code, document = validated(capsys, "diff", str(V1), str(V3), "-o", str(output), "--inputs", "5")
    assert code == 0 and document["package"]["size"] == output.stat().st_size


def test_package_documents(
    capsys: pytest.CaptureFixture[str], signed_package: tuple[Path, Path]
) -> None:
    package, public = signed_package
    code, document = validated(capsys, "inspect", str(package), "--trust", str(public))
    assert code == 0 and document["signature"]["status"] == "trusted"
    code, document = validated(capsys, "verify", str(V1), str(V3), str(package), "--inputs", "5")
    assert code == 0 and document["passed"] is True
    code, document = validated(
        capsys, "apply", str(V1), str(package), "--trust", str(public), "--rollback",
        "--call", "hp_version",
    )  # fmt: skip
    assert code == 0 and document["packages"][0]["outcome"] == "applied"
    # a failing apply: its own document, with the error object
    code, document = validated(capsys, "apply", str(V3), str(package), "--allow-unsigned")
    assert code == 6 and document["error"]["code"] == "refused"


def test_release_documents(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old, new = make_trees(tmp_path)
    out = tmp_path / "out"
    code, document = validated(
        capsys, "release", str(old), str(new), "-o", str(out), "--inputs", "5"
    )
    assert code == 1 and {b["status"] for b in document["binaries"]} >= {"packaged", "error"}
    code, document = validated(capsys, "inspect", "--release", str(out))
    assert code == 0 and document["ok"] is True


@pytest.mark.parametrize(
    "args",
    [
        ("funcs", "EMPTY"),
        ("info", "MISSING"),
        ("diff", str(V1), "EMPTY"),
        ("verify", str(V1), str(V3), "EMPTY"),
        ("inspect", "EMPTY"),
        ("diff", "--no-such-option", str(V1), str(V3)),
    ],
)
def test_failures_print_the_error_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    words = [
        str(empty) if a == "EMPTY" else str(tmp_path / "missing") if a == "MISSING" else a
        for a in args
    ]
    code, document = validated(capsys, *words)
    assert code in (1, 2) and set(document) == {"schema", "hpatch_version", "error"}
    assert document["schema"].startswith(f"hpatch.{args[0]}/")
    assert document["error"]["exit_code"] == code
