"""Files the command line reads and writes: never over an input, never a device or FIFO,
nothing predictable, nothing unbounded."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hpatch.errors import KeyFileError
from hpatch.files import FileRefused, read_input, write_output
from hpatch.package import decode_package
from hpatch.package.signing import TrustStore

from .conftest import SAMPLES
from .test_cli import run

OLD = SAMPLES / "x64-clang" / "v1" / "sample.stripped.dll"
NEW = SAMPLES / "x64-clang" / "v3" / "sample.stripped.dll"
HPATCH = [sys.executable, "-m", "hpatch"]


def copy(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def diff_to(capsys: pytest.CaptureFixture[str], output: Path, *extra: str) -> tuple[int, str]:
    code, _, err = run(capsys, "diff", str(OLD), str(NEW), "--no-verify", "-o", str(output), *extra)
    return code, err


# -- outputs -------------------------------------------------------------------------------


def test_diff_output_is_never_an_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = copy(OLD, tmp_path / "old.dll")
    code, _, err = run(capsys, "diff", str(old), str(NEW), "--no-verify", "-o", str(old))
    assert code == 1 and "is the input" in err
    assert old.read_bytes() == OLD.read_bytes()
    # --force replaces packages, never inputs (a hard link is the same file too).
    alias = tmp_path / "alias.hpk"
    os.link(old, alias)
    code, _, err = run(
        capsys, "diff", str(old), str(NEW), "--no-verify", "-o", str(alias), "--force"
    )
    assert code == 1 and "is the input" in err
    assert old.read_bytes() == OLD.read_bytes()


def test_diff_output_is_never_the_signing_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = tmp_path / "release.key"
    assert run(capsys, "keygen", str(key))[0] == 0
    before = key.read_bytes()
    code, err = diff_to(capsys, key, "--sign-key", str(key), "--force")
    assert code == 1 and "is the input" in err
    assert key.read_bytes() == before


def test_an_existing_package_is_replaced_only_with_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "update.hpk"
    output.write_bytes(b"an earlier package")
    code, err = diff_to(capsys, output)
    assert code == 1 and "--force" in err
    assert output.read_bytes() == b"an earlier package"
    code, err = diff_to(capsys, output, "--force")
    assert code == 0, err
    decode_package(output.read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["update.hpk"]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_diff_never_writes_over_a_non_regular_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    output = tmp_path / "update.hpk"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    if kind == "fifo":
        os.mkfifo(output)
    else:
        output.symlink_to(victim)
    code, err = diff_to(capsys, output, "--force")
    assert code == 1 and "refusing to write" in err
    mode = os.lstat(output).st_mode
    assert (stat.S_ISFIFO if kind == "fifo" else stat.S_ISLNK)(mode)
    assert victim.read_bytes() == b"keep"


def test_the_temporary_file_is_unpredictable_and_never_followed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "update.hpk"
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    # Symlinks planted for the names a predictable scheme would use next.
    for pid in range(os.getpid(), os.getpid() + 4):
        (tmp_path / f".update.hpk.{pid}.tmp").symlink_to(victim)
    code, err = diff_to(capsys, output)
    assert code == 0, err
    assert victim.read_bytes() == b"secret"
    assert stat.S_ISREG(os.lstat(output).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hpatch-")]


def test_a_long_legal_output_name_is_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / ("p" * 246 + ".hpk")  # 250 bytes: legal, but no room for a suffix
    code, err = diff_to(capsys, output)
    assert code == 0, err
    decode_package(output.read_bytes())


def test_write_output_keeps_the_umask_mode_and_leaves_nothing_on_refusal(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_output(target, b"data")
    assert target.read_bytes() == b"data"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(FileRefused, match="--force"):
        write_output(target, b"other")
    assert target.read_bytes() == b"data" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_keygen_never_follows_a_dangling_public_key_link(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / "planted"
    elsewhere.parent.mkdir()
    (tmp_path / "release.pub").symlink_to(elsewhere)
    code, _, err = run(capsys, "keygen", str(tmp_path / "release"))
    assert code == 1 and "exists" in err
    assert not elsewhere.exists()
    assert not (tmp_path / "release").exists()


# -- inputs --------------------------------------------------------------------------------


def hpatch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The console entry point in a subprocess: a hang fails as a timeout."""
    return subprocess.run(
        [*HPATCH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("hpatch: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_a_fifo_is_refused_as_every_input_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dll"
    os.mkfifo(fifo)
    assert_refused(hpatch("funcs", str(fifo)), "FIFO", "pipe.dll")
    assert_refused(hpatch("inspect", str(fifo)), "FIFO")
    assert_refused(hpatch("diff", str(OLD), str(NEW), "--sign-key", str(fifo), "-o", "x"), "FIFO")
    package = tmp_path / "p.hpk"
    assert hpatch("diff", str(OLD), str(NEW), "--no-verify", "-o", str(package)).returncode == 0
    assert_refused(hpatch("inspect", str(package), "--trust", str(fifo)), "FIFO")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_as_image_key_and_trust_entry(tmp_path: Path) -> None:
    assert_refused(hpatch("info", "/dev/zero"), "character device", "/dev/zero")
    assert_refused(hpatch("inspect", "/dev/zero"), "character device")
    package = tmp_path / "p.hpk"
    assert hpatch("diff", str(OLD), str(NEW), "--no-verify", "-o", str(package)).returncode == 0
    assert_refused(hpatch("inspect", str(package), "--trust", "/dev/zero"), "character device")
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "release.pub").symlink_to("/dev/zero")
    assert_refused(hpatch("inspect", str(package), "--trust", str(trust)), "character device")
    assert_refused(
        hpatch("diff", str(OLD), str(NEW), "--sign-key", "/dev/zero", "-o", str(tmp_path / "q")),
        "character device",
    )


def test_an_image_over_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.dll"
    with sparse.open("wb") as stream:
        stream.truncate((512 << 20) + 1)  # a hole: no disk, but read would cost 512 MiB
    assert_refused(hpatch("funcs", str(sparse), timeout=20), "limit")


def test_read_input_caps_keys_and_names_the_file(tmp_path: Path) -> None:
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * ((64 << 10) + 1))
    with pytest.raises(KeyFileError, match="limit"):
        TrustStore.from_paths([big])
    with pytest.raises(FileRefused, match="directory"):
        read_input(tmp_path, 10)


def test_an_empty_trust_directory_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    package = tmp_path / "p.hpk"
    assert diff_to(capsys, package)[0] == 0
    empty = tmp_path / "keys"
    empty.mkdir()
    code, _, err = run(capsys, "inspect", str(package), "--trust", str(empty))
    assert code == 1 and "holds no *.pub public key" in err


# -- concurrent writers --------------------------------------------------------------------


def _write(arguments: tuple[str, int, bool]) -> str:
    path, seed, force = arguments
    try:
        write_output(path, bytes([seed]) * (1 << 20), force=force)
    except FileRefused:
        return "refused"
    return "written"


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_writers_never_tear_or_clobber(tmp_path: Path, force: bool) -> None:
    from concurrent.futures import ProcessPoolExecutor

    target = str(tmp_path / "out.hpk")
    with ProcessPoolExecutor(4) as pool:
        outcomes = list(pool.map(_write, [(target, seed, force) for seed in range(1, 9)]))
    data = Path(target).read_bytes()
    assert len(data) == 1 << 20 and data == bytes([data[0]]) * (1 << 20)  # one writer's, whole
    if not force:
        assert outcomes.count("written") == 1  # the first; every later one refused
    assert [p.name for p in tmp_path.iterdir()] == ["out.hpk"]  # no temporary left
