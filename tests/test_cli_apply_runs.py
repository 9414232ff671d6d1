"""``hpatch apply`` runs: all or nothing, the document printed on failure, the baseline
checked before the emulator starts, and command-line numbers refused, not wrapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hpatch.emu
from hpatch.package import encode_package

from .apply.support import IMAGE, package
from .conftest import SAMPLES
from .test_cli import run

V1 = str(SAMPLES / "arm64-clang" / "v1" / IMAGE)
V2 = str(SAMPLES / "arm64-clang" / "v2" / IMAGE)
V3 = str(SAMPLES / "arm64-clang" / "v3" / IMAGE)


@pytest.fixture
def packages(tmp_path: Path) -> tuple[str, str]:
    month1, month2 = tmp_path / "2.hpk", tmp_path / "3.hpk"
    month1.write_bytes(encode_package(package("arm64-clang", "v1", "v2", 2)))
    month2.write_bytes(encode_package(package("arm64-clang", "v1", "v3", 3)))
    return str(month1), str(month2)


def test_a_failing_run_rolls_back_and_prints_its_document(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    month1, month2 = packages
    code, out, err = run(capsys, "apply", V1, month1, month2, month1, "--allow-unsigned", "--json")
    assert code == 6 and "anti-rollback" in err and "rolled back package 3" in err
    document = json.loads(out)
    assert document["schema"] == "hpatch.apply/2"
    assert [p["outcome"] for p in document["packages"]] == ["applied", "replaced"]
    error = document["error"]
    assert "anti-rollback" in error["message"] and "2.hpk" in error["message"]
    assert error["code"] == "refused" and error["exit_code"] == 6
    undone = document["rolled_back"]
    assert undone["replaced_sequence"] == 3 and undone["code_identical_to_baseline"] is True


def test_a_failing_run_says_what_it_rolled_back_in_text(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    month1, month2 = packages
    code, out, err = run(capsys, "apply", V1, month2, month1, "--allow-unsigned")
    assert code == 6 and "anti-rollback" in err
    assert "applied package 3" in out and "rolled back package 3" in out


def test_a_run_that_succeeds_has_no_error(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    month1, month2 = packages
    code, out, err = run(capsys, "apply", V1, month1, month2, "--allow-unsigned", "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["error"] is None and document["rolled_back"] is None


@pytest.fixture
def no_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the emulator started")

    monkeypatch.setattr(hpatch.emu, "Process", refuse)


@pytest.mark.usefixtures("no_emulator")
def test_the_target_build_is_named_before_the_emulator_starts(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    _, month2 = packages
    code, out, err = run(capsys, "apply", V3, month2, "--allow-unsigned", "--json")
    assert code == 6 and "this image is already the package's target build" in err
    assert json.loads(out)["packages"] == []


@pytest.mark.usefixtures("no_emulator")
def test_another_build_is_refused_before_the_emulator_starts(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    _, month2 = packages
    code, _, err = run(capsys, "apply", V2, month2, "--allow-unsigned")
    assert code == 6 and "check 'baseline' failed" in err and "TimeDateStamp" in err
    assert "target build" not in err


@pytest.mark.usefixtures("no_emulator")
@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["--base", "-0x10000"], ["--base -0x10000", "multiple of 64 KiB"]),
        (["--base", "0x1000"], ["multiple of 64 KiB"]),
        (["--base", str(1 << 64)], ["below 2^64"]),
        (["--call", "-0x10"], ["not negative"]),
        (["--call", "0x0"], ["in no section"]),  # the headers
        (["--call", "hp_crc32", str(1 << 64)], ["does not fit 64 bits"]),
        (["--call", "hp_crc32", str(-(1 << 63) - 1)], ["does not fit 64 bits"]),
        (["--call", "hp_crc32", "12abc"], ["is not an integer"]),
    ],
)
def test_numbers_are_refused_not_wrapped(
    capsys: pytest.CaptureFixture[str],
    packages: tuple[str, str],
    arguments: list[str],
    words: list[str],
) -> None:
    month1, _ = packages
    code, _, err = run(capsys, "apply", V1, month1, "--allow-unsigned", *arguments)
    assert code == 1, err
    assert "0x-" not in err and "Traceback" not in err
    for word in words:
        assert word in err


def test_a_data_rva_is_not_called(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    from hpatch.image import SectionFlags, load_image

    month1, _ = packages
    data = next(
        s for s in load_image(V1).sections if not s.characteristics & SectionFlags.MEM_EXECUTE
    )
    code, _, err = run(capsys, "apply", V1, month1, "--allow-unsigned", "--call", hex(data.rva))
    assert code == 1 and "which is not code" in err


def test_a_code_rva_is_called(
    capsys: pytest.CaptureFixture[str], packages: tuple[str, str]
) -> None:
    from hpatch.image import load_image

    month1, _ = packages
    image = load_image(V1)
    crc = next(e for e in image.exports if e.name == "hp_crc32")
    call = ["--call", hex(crc.rva), "bytes:313233343536373839", "9"]
    code, out, err = run(capsys, "apply", V1, month1, "--allow-unsigned", "--json", *call)
    assert code == 0, err
    calls = json.loads(out)["calls"]
    assert calls[0]["result"] == calls[1]["result"] == 0xCBF43926  # CRC-32 of "123456789"
    code, out, err = run(
        capsys, "apply", V1, month1, "--allow-unsigned", "--json", "--call", "hp_crc32", "-1", "0"
    )
    assert code == 0, err


@pytest.mark.parametrize("value", ["0-1", "1-4294967296", "3-2", "-1", "1-5", "6"])
def test_supersedes_is_a_range_of_sequences(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    code, _, err = run(
        capsys,
        "diff",
        V1,
        V3,
        "-o",
        str(tmp_path / "p.hpk"),
        "--sequence",
        "5",
        f"--supersedes={value}",
    )
    assert code == 2 and "supersedes" in err.lower()
    assert not (tmp_path / "p.hpk").exists()
