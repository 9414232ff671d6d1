"""Progress on stderr: silent for short work, one line per finished stage of long work
when stderr is not a terminal, every stage with -v, nothing with -q."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpatch.cli import main
from hpatch.cli.progress import LARGE_INPUT

from .conftest import SAMPLES

V1 = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
V3 = SAMPLES / "x64-clang" / "v3" / "sample.stripped.dll"
LINE = r"hpatch: {command}: {what} \(\d+\.\d\d s\)"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def test_short_work_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "funcs", str(V1), "--json")
    assert code == 0 and out and err == ""


def test_verbose_reports_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-v", "funcs", str(V1))
    lines = err.splitlines()
    assert code == 0 and len(lines) == 2
    assert re.fullmatch(LINE.format(command="funcs", what=f"read {re.escape(str(V1))}"), lines[0])
    assert re.fullmatch(LINE.format(command="funcs", what=r"discovered functions: \d+"), lines[1])


def test_a_large_image_reports_its_stages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An image of a megabyte or more is long work: its stages are reported unasked."""
    large = tmp_path / "large.dll"
    data = V1.read_bytes()
    large.write_bytes(data + bytes(LARGE_INPUT - len(data)))  # an overlay past the sections
    code, _, err = run(capsys, "funcs", str(large), "--json")
    assert code == 0 and [line.split(":")[2].split()[0] for line in err.splitlines()] == [
        "read",
        "discovered",
    ]


def test_packaging_is_long_work_and_quiet_silences_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "p.hpk"
    code, _, err = run(capsys, "diff", str(V1), str(V3), "-o", str(output), "--inputs", "5")
    assert code == 0
    assert re.fullmatch(
        LINE.format(command="diff", what=r"packaged and proved: \d+ functions"), err.strip()
    )
    code, _, err = run(
        capsys, "-q", "diff", str(V1), str(V3), "-o", str(output), "--force", "--inputs", "5"
    )
    assert code == 0 and err == ""


def test_quiet_and_verbose_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-q", "-v", "funcs", str(V1))
    assert code == 2 and "-q or -v" in err
