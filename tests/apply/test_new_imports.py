"""A package that adds an import: its slot is bound as the loader binds an image's
imports, before any redirect, or the package is refused naming the import.

The pair is v3 -> import-v3 of the samples: hp_fail stops logging once the host's log
holds 64 lines, asking samplehost.dll's host_log_count, which v3 does not import.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.apply.transaction import Transaction
from hpatch.emu import Process
from hpatch.emu.cpu import Cpu
from hpatch.errors import ApplyError

from ..conftest import SAMPLES
from .support import BUILDS, IMAGE, machine, package, process

ALLOW = ApplyOptions(allow_unsigned=True)
CAP = 64
#: v3's own imports from samplehost.dll: host functions can stand in for every one.
V3_IMPORTS = ("host_log", "host_alloc", "host_free", "host_now", 10)


def fail_and_count(target: Process, times: int) -> int:
    """Fail ``times`` calls through hp_fail (an unknown limit); the host's log lines."""
    for _ in range(times):
        assert target.call("hp_set_limit", 99, 0) & 0xFFFFFFFF == 0xFFFFFFFE  # HP_E_RANGE
    host = target.module("samplehost.dll")
    assert host is not None
    return target.call("host_log_count", module=host)


def layout(target: Process) -> list[tuple[int, int, str]]:
    return [(r.va, r.size, r.name) for r in target.space.regions]


@pytest.mark.parametrize("build", BUILDS)
def test_the_new_import_is_bound_and_the_fix_calls_through_it(build: str) -> None:
    assert fail_and_count(process(build, "v3"), CAP + 6) == CAP + 6
    target = process(build, "v3")
    pages = target.module_pages(target.main_module)
    pkg = package(build, "v3", "import-v3", 2)
    assert [i.label for i in pkg.new_imports] == ["samplehost.dll!host_log_count"]
    report = apply_package(target, pkg, options=ALLOW)
    check = next(c for c in report.checks if c.name == "new imports")
    assert check.passed and "samplehost.dll!host_log_count" in check.detail
    # the slot holds the export's address, in the read-only executable region
    host = target.module("samplehost.dll")
    assert host is not None
    slot = report.region_va + pkg.new_imports[0].slot_offset
    bound = int.from_bytes(target.space.read(slot, 8), "little")
    assert bound == host.va(host.export_rva("host_log_count"))
    assert fail_and_count(target, CAP + 6) == CAP
    rollback(target)
    assert target.module_pages(target.main_module) == pages
    assert fail_and_count(target, 3) == CAP + 3


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_a_host_function_serves_a_new_import(build: str) -> None:
    target = Process(machine(build))
    target.load_image(SAMPLES / build / "v3" / IMAGE)
    calls = []

    def log_count(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        calls.append(arguments)
        return CAP  # the log is full: the fix logs nothing

    target.host("samplehost.dll", "host_log_count", log_count)
    apply_package(target, package(build, "v3", "import-v3", 2), options=ALLOW)
    before = target.call("host_log_count", module=target.module("samplehost.dll"))
    assert fail_and_count(target, 5) == before and len(calls) == 5


def isolated(build: str, tmp_path: Path, *, with_host: bool, serve_v3: bool) -> Process:
    """v3 loaded from a directory of its own (samplehost.dll beside it or not); with
    ``serve_v3`` host functions stand in for v3's own imports, so samplehost.dll is not
    loaded with it."""
    shutil.copy(SAMPLES / build / "v3" / IMAGE, tmp_path / IMAGE)
    if with_host:
        shutil.copy(SAMPLES / build / "v3" / "samplehost.dll", tmp_path / "samplehost.dll")
    target = Process(machine(build))
    if serve_v3:
        for symbol in V3_IMPORTS:
            target.host("samplehost.dll", symbol, lambda cpu, arguments: 0)
    target.load_image(tmp_path / IMAGE)
    return target


@pytest.mark.parametrize("build", BUILDS)
def test_an_import_nothing_serves_refuses_the_package_naming_it(build: str, tmp_path: Path) -> None:
    target = isolated(build, tmp_path, with_host=False, serve_v3=False)
    before = target.space.state()
    modules = list(target.modules)
    with pytest.raises(ApplyError) as refused:
        apply_package(target, package(build, "v3", "import-v3", 2), options=ALLOW)
    message = str(refused.value)
    assert message.startswith("check 'new imports' failed:")
    assert "samplehost.dll!host_log_count" in message
    assert target.space.state() == before and target.modules == modules


def test_a_dll_the_new_import_needs_is_loaded_and_unloaded_if_the_apply_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = "x64-clang"
    pkg = package(build, "v3", "import-v3", 2)
    target = isolated(build, tmp_path, with_host=True, serve_v3=True)
    assert target.module("samplehost.dll") is None
    regions, modules = layout(target), list(target.modules)

    class Injected(Exception):
        pass

    def fail(*_arguments: object) -> None:
        raise Injected("after the imports are bound")

    with monkeypatch.context() as patched:
        patched.setattr(Transaction, "register_table", fail)
        with pytest.raises(Injected):
            apply_package(target, pkg, options=ALLOW)
    assert layout(target) == regions and target.modules == modules

    apply_package(target, pkg, options=ALLOW)
    host = target.module("samplehost.dll")
    assert host is not None and host in target.modules
    assert fail_and_count(target, 3) == 0  # v3's host_log, a host function, logs nothing
