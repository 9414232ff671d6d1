"""Threads in code being replaced block the change; once they leave, it goes ahead."""

from __future__ import annotations

import pytest

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.apply.safety import Range, busy_threads
from hpatch.emu import ThreadState
from hpatch.errors import ApplyError

from .support import BUILDS, package, process

ALLOW = ApplyOptions(allow_unsigned=True)
#: A well-formed array: 2 elements of 4 bytes, unpacked into a big enough buffer.
ARRAY = bytes.fromhex("02000000 04000000 41424344 45464748".replace(" ", ""))


def start(target, function: str, *arguments: int):
    thread = target.new_thread()
    target.cpu.start(thread, target.function_va(function), arguments)
    return thread


@pytest.mark.parametrize("build", BUILDS)
def test_a_thread_at_the_entry_blocks_until_it_returns(build: str) -> None:
    target = process(build)
    src, dst = target.buffer(b"ab"), target.buffer(16)
    thread = start(target, "hp_json_escape", src, 2, dst, 16)
    before = target.space.state()
    with pytest.raises(ApplyError, match=r"thread 1 is stopped at .*hp_json_escape overwrites"):
        apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    entry = target.function_va("hp_json_escape")
    span = package(build, "v1", "v2", 2).redirects[0].strategy.span[1]
    while target.cpu.pc() < entry + span:
        assert target.cpu.run(thread, 1) == ThreadState.STOPPED
    with pytest.raises(ApplyError, match="thread 1 is executing hp_json_escape"):
        apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    assert target.space.state() == before
    assert target.cpu.run(thread) == ThreadState.RETURNED
    assert apply_package(target, package(build, "v1", "v2", 2), options=ALLOW).outcome == "applied"


def _stop_in_callee(target, function: str, arguments: tuple[int, ...]):
    """A thread stopped inside a function that ``function`` called, or None."""
    module = target.main_module
    own = module.image.function_at(target.function_va(function) - module.base)
    thread = start(target, function, *arguments)
    for _ in range(5000):
        if target.cpu.run(thread, 1) != ThreadState.STOPPED:
            return None
        rva = target.cpu.pc() - module.base
        if module.contains(target.cpu.pc()) and not own.contains(rva):
            return thread
    return None


@pytest.mark.parametrize("build", BUILDS)
def test_a_return_address_into_a_replaced_function_blocks(build: str) -> None:
    target = process(build)
    out = target.buffer(64)
    thread = _stop_in_callee(target, "hp_array_unpack", (target.buffer(ARRAY), len(ARRAY), out, 64))
    assert thread is not None, "hp_array_unpack calls no function of the image"
    with pytest.raises(
        ApplyError, match=f"thread {thread.id} has a return address into hp_array_unpack"
    ):
        apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    # --wait: the thread runs until it has left, then the apply goes ahead.
    report = apply_package(
        target,
        package(build, "v1", "v2", 2),
        options=ApplyOptions(allow_unsigned=True, wait_steps=100_000),
    )
    assert report.outcome == "applied"
    assert thread.state == ThreadState.RETURNED and thread.result == 2


@pytest.mark.parametrize("build", BUILDS)
def test_rollback_waits_for_threads_in_patch_code(build: str) -> None:
    target = process(build)
    report = apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    src, dst = target.buffer(b"ab"), target.buffer(16)
    thread = start(target, "hp_json_escape", src, 2, dst, 16)
    for _ in range(50):
        target.cpu.run(thread, 1)
        if report.region_va <= target.cpu.pc() < report.region_va + report.region_size:
            break
    else:
        pytest.fail("the call never reached the patch code")
    with pytest.raises(ApplyError, match="package 2's code"):
        rollback(target)
    rollback(target, wait_steps=100_000)
    assert thread.state == ThreadState.RETURNED


@pytest.mark.parametrize("build", BUILDS)
def test_rollback_waits_for_a_thread_holding_a_pointer_into_the_region(build: str) -> None:
    """Patch code hands its own message strings to the host's logging import; a thread
    stopped there has no patch code on its stack, only a pointer into the region, which
    it would read after the region was freed (found by tests/reliability/load.py)."""
    target = process(build)
    report = apply_package(target, package(build, "v1", "v2", 2), options=ALLOW)
    region = Range(report.region_va, report.region_va + report.region_size, "package 2's code")
    host = target.module("samplehost.dll")
    assert host is not None
    thread = start(target, "hp_json_escape", target.buffer(b"\x01"), 1, target.buffer(8), 4)
    while True:
        assert target.cpu.run(thread, 1) == ThreadState.STOPPED, "never stopped in the host"
        if host.contains(target.cpu.pc()) and not busy_threads(target, [], [region]):
            break  # only the pointer ties the thread to the region
    before = target.space.state()
    with pytest.raises(ApplyError, match=f"thread {thread.id} holds a pointer into package 2"):
        rollback(target)
    assert target.space.state() == before
    rollback(target, wait_steps=100_000)
    assert thread.state == ThreadState.RETURNED
    assert thread.result is not None and thread.result & 0xFFFF_FFFF == 0xFFFF_FFFD  # -3
