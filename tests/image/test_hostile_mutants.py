"""Structure-aware PE mutants: sizes the file claims but does not hold cost what the file
holds, and names that are not UTF-8 come out as text everywhere (model, JSON, tables,
diff)."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pefile
import pytest

from hpatch.cli import main
from hpatch.emu import Process
from hpatch.errors import ImageFormatError
from hpatch.image import load_image
from hpatch.image.reader import MAX_UNBACKED, MAX_UNBACKED_CODE, pe_text

from ..conftest import SAMPLES
from .mutants import (
    SCN_CODE_READ_EXECUTE,
    renamed_section,
    renamed_string,
    with_section,
)

GCC_X64 = SAMPLES / "x64-gcc" / "v1" / "sample.stripped.dll"
CLANG_ARM64 = SAMPLES / "arm64-clang" / "v1" / "sample.stripped.dll"
GIB = 1 << 30


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return int(exited.value.code or 0), captured.out, captured.err


def _python_peak(call: Callable[[], object]) -> int:
    """Peak bytes Python allocates while ``call()`` runs (lief's own are not traced)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ImageFormatError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# sizes the file does not hold -------------------------------------------------------


@pytest.fixture(scope="module")
def gigabyte_bss() -> bytes:
    """A 20 KB DLL whose SizeOfImage is 1 GiB: one section of zero raw size."""
    data = with_section(GCC_X64.read_bytes(), b".bss", GIB - 0x10000)
    pe = pefile.PE(data=data, fast_load=True)
    assert pe.OPTIONAL_HEADER.SizeOfImage >= GIB - 0x10000
    assert pe.sections[-1].SizeOfRawData == 0 and len(data) < 64 << 10
    return data


def test_an_unbacked_gigabyte_is_refused_naming_the_file(gigabyte_bss: bytes) -> None:
    with pytest.raises(ImageFormatError, match=r"bss\.dll: SizeOfImage .* does not hold"):
        load_image(gigabyte_bss, "bss.dll")
    assert _python_peak(lambda: load_image(gigabyte_bss, "bss.dll")) < 4 << 20


@pytest.mark.parametrize("size", [512 << 20, MAX_UNBACKED + 0x1000])
def test_zero_fill_past_the_limit_is_refused(size: int) -> None:
    data = with_section(GCC_X64.read_bytes(), b".bss", size)
    with pytest.raises(ImageFormatError, match="zero fill"):
        load_image(data)


def test_zero_filled_code_is_refused_past_its_own_limit() -> None:
    data = with_section(
        CLANG_ARM64.read_bytes(), b".text2", 2 * MAX_UNBACKED_CODE, SCN_CODE_READ_EXECUTE
    )
    with pytest.raises(ImageFormatError, match=r"executable section '\.text2'"):
        load_image(data)
    within = with_section(
        CLANG_ARM64.read_bytes(), b".text2", MAX_UNBACKED_CODE // 2, SCN_CODE_READ_EXECUTE
    )
    assert load_image(within).sections[-1].name == ".text2"


@pytest.mark.parametrize("command", ["info", "funcs"])
def test_the_cli_refuses_the_mutant_at_once(
    command: str, gigabyte_bss: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bss.dll"
    path.write_bytes(gigabyte_bss)
    code, out, err = run(capsys, command, str(path), "--json")
    assert code == 1
    assert "does not hold" in out + err and "internal error" not in out + err


def test_diff_and_apply_refuse_the_mutant(
    gigabyte_bss: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bss.dll"
    path.write_bytes(gigabyte_bss)
    code, out, err = run(capsys, "diff", str(GCC_X64), str(path))
    assert code == 1 and "does not hold" in err and "internal error" not in err
    code, out, err = run(capsys, "diff", str(path), str(GCC_X64))
    assert code == 1 and "does not hold" in err
    package = tmp_path / "p.hpk"
    v2 = SAMPLES / "x64-gcc" / "v2" / "sample.stripped.dll"
    assert run(capsys, "diff", str(GCC_X64), str(v2), "-o", str(package))[0] == 0
    code, out, err = run(
        capsys, "apply", str(path), str(package), "--allow-unsigned", "--no-entry-point"
    )
    assert code == 1 and "does not hold" in out + err and "internal error" not in out + err


def test_zero_fill_within_the_limit_is_mapped_without_copying_it() -> None:
    data = with_section(GCC_X64.read_bytes(), b".bss", 48 << 20)
    image = load_image(data, "bss.dll")
    assert image.size_of_image > 48 << 20
    assert image.read(image.sections[-1].rva + 0x100000, 16) == bytes(16)
    process = Process(image.identity.machine)
    tracemalloc.start()
    try:
        module = process.load_image(image, run_entry_point=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the emulator maps the zero fill as untouched pages: no image-sized copy in Python
    assert peak < 8 << 20
    bss = image.sections[-1]
    assert process.space.read(module.va(bss.rva + (40 << 20)), 8) == bytes(8)
    text = image.executable_sections[0]
    assert process.space.read(module.va(text.rva), 64) == image.read(text.rva, 64)


def test_a_rebased_mapping_relocates_what_the_file_backs() -> None:
    image = load_image(GCC_X64)
    process = Process(image.identity.machine)
    base = image.image_base + 0x10000000
    module = process.load_image(image, base=base, run_entry_point=False)
    for relocation in image.relocations[:50]:
        value = int.from_bytes(image.read(relocation.rva, 8), "little")
        mapped = int.from_bytes(process.space.read(module.va(relocation.rva), 8), "little")
        assert mapped == value + 0x10000000


# names that are not UTF-8 -------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The x64 gcc sample with its first section named b'.t\\xffx\\xe9' and the export
    hp_adler32 named b'hp_\\xe9\\xffler32' (neither is UTF-8)."""
    data = renamed_section(GCC_X64.read_bytes(), 0, b".t\xffx\xe9")
    data = renamed_string(data, b"hp_adler32", b"hp_\xe9\xffler32")
    pe = pefile.PE(data=data)
    assert pe.sections[0].Name.rstrip(b"\0") == b".t\xffx\xe9"
    # pefile drops an export name that is not printable; its RVA still names the string
    export = pe.DIRECTORY_ENTRY_EXPORT.struct
    names = [
        pe.get_dword_at_rva(export.AddressOfNames + 4 * i) for i in range(export.NumberOfNames)
    ]
    assert b"hp_\xe9\xffler32\0" in [pe.get_data(rva, 11) for rva in names]
    path = tmp_path_factory.mktemp("names") / "names.dll"
    path.write_bytes(data)
    return path


def test_pe_names_decode_one_documented_way() -> None:
    assert pe_text("plain") == "plain"
    assert pe_text(b"ascii") == "ascii"
    assert pe_text("caf\u00e9".encode()) == "caf\u00e9"
    assert pe_text(b"\xe9\xff.x") == "\\xe9\\xff.x"


def test_the_model_holds_every_name_as_text(odd_names: Path) -> None:
    image = load_image(odd_names)
    assert image.sections[0].name == ".t\\xffx\\xe9"
    names = {e.name for e in image.exports}
    assert "hp_\\xe9\\xffler32" in names and "hp_adler32" not in names
    assert all(isinstance(e.name, str) for e in image.exports if e.name is not None)
    assert all(isinstance(s.name, str) for s in image.sections)
    assert any(f.name == "hp_\\xe9\\xffler32" for f in image.functions)


def _strings(document: object) -> set[str]:
    """Every string value of a JSON document."""
    if isinstance(document, str):
        return {document}
    values = document.values() if isinstance(document, dict) else document
    if isinstance(values, (list, type({}.values()))):
        return set().union(*(_strings(v) for v in values))
    return set()


@pytest.mark.parametrize("command", ["info", "funcs"])
def test_info_and_funcs_show_the_names(
    command: str, odd_names: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, command, str(odd_names), "--json")
    assert code == 0 and err == ""
    strings = _strings(json.loads(out))
    assert "hp_\\xe9\\xffler32" in strings
    assert command != "info" or ".t\\xffx\\xe9" in strings
    code, out, err = run(capsys, command, str(odd_names))
    assert code == 0 and "internal error" not in out + err


def test_diff_compares_the_names(odd_names: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for old, new in ((GCC_X64, odd_names), (odd_names, GCC_X64)):
        code, out, err = run(capsys, "diff", str(old), str(new), "--json")
        assert code == 3 and "internal error" not in out + err
        causes = {(b["cause"], b["where"]) for b in json.loads(out)["blockers"]}
        assert any("hp_\\xe9\\xffler32" in str(where) for _cause, where in causes)
    code, out, err = run(capsys, "diff", str(odd_names), str(odd_names))
    assert code in (0, 5) and "internal error" not in out + err
