"""One source for the numbers the C core and Python share: native/constants.h is written
from the Python enums, and every strategy states its machine, span and reach once."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from hpatch._fallback import rewrite as fallback_rewrite
from hpatch._fallback import scan as fallback_scan
from hpatch.arch.base import Machine, RefKind, SiteKind
from hpatch.arch.kinds import Fixup, Redirect

REPO = Path(__file__).resolve().parent.parent
GENERATOR = runpy.run_path(str(REPO / "native" / "constants.py"))


def test_the_header_is_what_the_enums_say() -> None:
    header = (REPO / "native" / "constants.h").read_text(encoding="utf-8")
    assert header == GENERATOR["header_text"]()
    assert GENERATOR["main"](["--check"]) == 0
    for kind in Fixup:
        assert f"    {kind.name} = 0x{kind.value:X}," in header
    for strategy in Redirect:
        assert f"    {strategy.name} = 0x{strategy.value:X}," in header
        start, length = strategy.span
        assert f"{{{start}, {length}}}," in header
    for site in SiteKind:
        assert f"    SITE_{site.name} = 0x{site.value:X}," in header
    for ref in RefKind:
        assert f"    REF_{ref.name} = 0x{ref.value:X}," in header


def test_no_c_file_defines_them_again() -> None:
    """The numbers are written once: no C source spells an enum of its own for them."""
    for source in sorted((REPO / "native").glob("*.[ch]")):
        if source.name == "constants.h":
            continue
        text = source.read_text(encoding="utf-8")
        for name in ("X64_ADDR64 =", "ARM64_B =", "SITE_CALL =", "REF_CALL =", "redirect_span["):
            assert name not in text.replace("redirect_span[strategy]", ""), (source.name, name)


@pytest.mark.parametrize("strategy", list(Redirect), ids=lambda s: s.name)
def test_every_strategy_states_its_machine_span_and_reach(strategy: Redirect) -> None:
    machine = Machine.ARM64 if strategy.name.startswith("ARM64_") else Machine.AMD64
    assert strategy.machine == machine
    start, length = strategy.span
    assert length > 0 and start <= 0
    assert strategy.reach is None or strategy.reach > 0


def test_the_twins_take_the_enums_numbers() -> None:
    assert (fallback_scan.SITE_CALL, fallback_scan.SITE_LOAD) == (SiteKind.CALL, SiteKind.LOAD)
    assert (fallback_scan.REF_IMAGE_RVA, fallback_scan.REF_LITERAL) == (
        RefKind.IMAGE_RVA,
        RefKind.LITERAL,
    )
    assert fallback_rewrite.ARM64_BRANCH14 == Fixup.ARM64_BRANCH14
    assert {int(s): s.span for s in Redirect} == fallback_rewrite._SPANS
