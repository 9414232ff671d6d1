"""Every redirect strategy, published and rolled back, gives the new build's results."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.arch.rewrite import Redirect
from hpatch.diff.verdict import redirect_problem

from .support import outcomes, package, process

ALLOW = ApplyOptions(allow_unsigned=True)


def with_strategy(build: str, strategy: Redirect):
    """The v1->v2 package with every redirect that can take ``strategy`` switched to it."""
    original = package(build, "v1", "v2", 2)
    image = process(build).main_module.image
    redirects = []
    switched = 0
    for redirect in original.redirects:
        function = image.function_at(redirect.old_rva)
        if redirect_problem(image, function, strategy) is None:
            start, length = strategy.span
            digest = hashlib.sha256(image.read(redirect.old_rva + start, length)).digest()
            redirect = dataclasses.replace(redirect, strategy=strategy, original_sha256=digest)
            switched += 1
        redirects.append(redirect)
    assert switched, f"no function of {build} takes {strategy.name}"
    return dataclasses.replace(original, redirects=tuple(redirects))


@pytest.mark.parametrize(
    ("build", "strategy"),
    [
        ("x64-clang", Redirect.X64_JMP_ABS64),
        ("x64-gcc", Redirect.X64_JMP_ABS64),
        ("x64-clang-hotpatch", Redirect.X64_TWO_STAGE),
        ("arm64-clang", Redirect.ARM64_LDR_BR),
    ],
)
def test_strategy(build: str, strategy: Redirect) -> None:
    expected = outcomes(process(build, "v2"))
    target = process(build)
    module = target.main_module
    loaded = (list(module.region.protections), target.module_pages(module))
    report = apply_package(target, with_strategy(build, strategy), options=ALLOW)
    used = [r for r in report.redirects if r.strategy == strategy]
    assert used
    for redirect in used:
        start, length = strategy.span
        assert target.space.read(redirect.old_va + start, length) == redirect.written
        if strategy == Redirect.X64_TWO_STAGE:
            assert redirect.written[:1] == b"\xe9" and redirect.written[5:] == b"\xeb\xf9"
    assert outcomes(target) == expected
    rollback(target)
    # Only writable data (the calls' own effects) may differ from the fresh load.
    assert (list(module.region.protections), target.module_pages(module)) == loaded


def test_two_stage_installs_padding_first_and_restores_entry_first() -> None:
    build, strategy = "x64-clang-hotpatch", Redirect.X64_TWO_STAGE
    target = process(build)
    writes: list[int] = []
    write = target.space.write

    def recording(va: int, data: bytes) -> None:
        writes.append(va)
        write(va, data)

    target.space.write = recording  # type: ignore[method-assign]
    report = apply_package(target, with_strategy(build, strategy), options=ALLOW)
    entries = {r.old_va for r in report.redirects if r.strategy == strategy}
    installed = [va for va in writes if va in entries or va + 5 in entries]
    writes.clear()
    rollback(target)
    restored = [va for va in writes if va in entries or va + 5 in entries]
    for entry in entries:
        assert installed.index(entry - 5) < installed.index(entry)
        assert restored.index(entry) < restored.index(entry - 5)
