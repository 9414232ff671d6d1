"""``hpatch apply``: exit codes, the JSON document, refusals without a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpatch.package import encode_package
from hpatch.package.signing import sign_package

from ..conftest import SAMPLES
from ..package.packages import signing_key
from ..test_cli import run
from .support import IMAGE, package

BUG_A = ["--call", "hp_json_escape", "bytes:01", "1", "buffer:4", "4"]


@pytest.fixture
def packages(tmp_path: Path) -> tuple[Path, Path, Path]:
    key = signing_key()
    month1 = tmp_path / "2.hpk"
    month2 = tmp_path / "3.hpk"
    month1.write_bytes(encode_package(sign_package(package("arm64-clang", "v1", "v2", 2), key)))
    month2.write_bytes(encode_package(sign_package(package("arm64-clang", "v1", "v3", 3), key)))
    public = tmp_path / "release.pub"
    from cryptography.hazmat.primitives import serialization

    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return month1, month2, public


def test_apply_replace_rollback_json(capsys: pytest.CaptureFixture[str], packages) -> None:
    month1, month2, public = packages
    image = str(SAMPLES / "arm64-clang" / "v1" / IMAGE)
    code, out, err = run(
        capsys,
        "apply",
        image,
        str(month1),
        str(month2),
        "--trust",
        str(public),
        "--base",
        "0x7ff600000000",
        "--rollback",
        "--json",
        *BUG_A,
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["base"] == 0x7FF600000000 and document["rebased"]
    assert [p["outcome"] for p in document["packages"]] == ["applied", "replaced"]
    assert all(p["signature"] == "trusted" for p in document["packages"])
    calls = {c["when"]: c for c in document["calls"]}
    assert calls["baseline"]["fault"]["access"] == "write"
    assert calls["patched"]["result_int32"] == -3
    assert calls["rolled back"]["fault"]["access"] == "write"
    assert document["rollback"]["code_identical_to_baseline"] is True


def test_refusals_exit_6_and_errors_1_with_one_line(
    capsys: pytest.CaptureFixture[str], packages
) -> None:
    month1, month2, public = packages
    image = str(SAMPLES / "arm64-clang" / "v1" / IMAGE)
    code, _, err = run(capsys, "apply", image, str(month1))
    assert code == 6 and "check 'signature' failed" in err and "Traceback" not in err
    code, _, err = run(capsys, "apply", image, str(month2), str(month1), "--trust", str(public))
    assert code == 6 and "anti-rollback" in err
    other = str(SAMPLES / "x64-clang" / "v1" / IMAGE)
    code, _, err = run(capsys, "apply", other, str(month1), "--allow-unsigned")
    assert code == 6 and "check 'machine' failed" in err
    broken = month1.with_suffix(".broken")
    broken.write_bytes(month1.read_bytes()[:-10])
    code, _, err = run(capsys, "apply", image, str(broken), "--allow-unsigned")
    assert code == 1 and err.startswith("hpatch: error:")
    code, _, err = run(capsys, "apply", image, str(month1), "--allow-unsigned", "--call", "hp_nope")
    assert code == 1 and "no function named hp_nope" in err


def test_no_entry_point_loads_without_running_dllmain(
    capsys: pytest.CaptureFixture[str], packages
) -> None:
    month1, _, public = packages
    image = str(SAMPLES / "arm64-clang" / "v1" / IMAGE)
    code, out, err = run(
        capsys, "apply", image, str(month1), "--trust", str(public), "--no-entry-point", "--json"
    )
    assert code == 0, err
    assert [p["outcome"] for p in json.loads(out)["packages"]] == ["applied"]
