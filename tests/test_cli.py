"""The command line: tables, JSON documents, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpatch.cli import main
from hpatch.image import load_image

from .conftest import SAMPLES

STRIPPED = SAMPLES / "arm64-clang" / "v1" / "sample.stripped.dll"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_funcs_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "funcs", str(STRIPPED), "--json")
    assert code == 0 and err == ""
    document = json.loads(out)
    image = load_image(STRIPPED)
    assert document["image"]["name"] == "sample.stripped.dll"
    assert document["image"]["machine"] == "ARM64"
    assert document["image"]["mapped_sha256"] == image.identity.mapped_sha256
    assert [(f["rva"], f["size"]) for f in document["functions"]] == [
        (f.rva, f.size) for f in image.functions
    ]
    assert set(document["functions"][0]) == {
        "rva",
        "size",
        "name",
        "sources",
        "fragments",
        "padding_after",
        "inline_data",
    }
    exported = [f for f in document["functions"] if f["name"] == "hp_crc32"]
    assert len(exported) == 1 and "export" in exported[0]["sources"]


def test_funcs_json_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    first = run(capsys, "funcs", str(STRIPPED), "--json")[1]
    second = run(capsys, "funcs", str(STRIPPED), "--json")[1]
    assert first == second
    assert str(SAMPLES) not in first  # no absolute paths


def test_funcs_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "funcs", str(SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll"))
    assert code == 0
    assert "hp_tlv_parse" in out and "functions" in out and "+frag" in out


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", str(STRIPPED), "--json")
    document = json.loads(out)
    assert code == 0
    assert {"dll": "samplehost.dll", "name": None, "ordinal": 10} in [
        {k: i[k] for k in ("dll", "name", "ordinal")} for i in document["imports"]
    ]
    assert document["load_config"]["size"] == 0x108


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "bad.dll is an empty file"),
        (bytes(range(256)) * 16, "not a PE file"),
        (STRIPPED.read_bytes()[:3000], "truncated"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    target = tmp_path / "bad.dll"
    target.write_bytes(content)
    code, out, err = run(capsys, "funcs", str(target))
    assert code == 1 and out == ""
    assert err.startswith("hpatch: error: ") and message in err
    assert "bad.dll" in err  # the error names the file it is about
    assert "Traceback" not in err


def test_missing_file_and_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "funcs", str(tmp_path / "nope.dll"))
    assert code == 1 and "cannot read" in err
    code, _, err = run(capsys, "funcs")
    assert code == 2 and "Missing argument" in err


def test_console_script_and_module_entry_points() -> None:
    for command in (
        [sys.executable, "-m", "hpatch"],
        [str(Path(sys.executable).parent / "hpatch")],
    ):
        result = subprocess.run(
            [*command, "--version"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and result.stdout.startswith("hpatch 0.1.0")
        result = subprocess.run(
            [*command, "funcs", "/dev/null"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("build", ["x64-gcc", "arm64-clang"])
def test_funcs_and_info_json_are_written_as_made_and_read_the_same(
    capsys: pytest.CaptureFixture[str], build: str
) -> None:
    """funcs --json writes its functions one at a time (a million never sit in memory as
    dicts) and prints the same bytes as the document made whole."""
    from hpatch.report import funcs_document, info_document
    from hpatch.text import json_text, write_json

    path = SAMPLES / build / "v1" / "sample.stripped.dll"
    code, out, err = run(capsys, "funcs", str(path), "--json")
    assert code == 0 and err == ""
    whole = json_text(funcs_document(load_image(path))) + "\n"
    assert out == whole
    code, out, err = run(capsys, "info", str(path), "--json")
    assert code == 0 and err == ""
    assert out == json_text(info_document(load_image(path))) + "\n"
    parts: list[str] = []
    write_json({"empty": [], "nested": {"a": [1, {"b": None}]}, "last": "x"}, parts.append)
    assert (
        "".join(parts)
        == json_text({"empty": [], "nested": {"a": [1, {"b": None}]}, "last": "x"}) + "\n"
    )
