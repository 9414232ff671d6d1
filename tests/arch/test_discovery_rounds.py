"""The C loops of leaf discovery's rounds (gap_evidence, gap_leaves) and their Python
twins: the same results, the same questions asked of the callbacks in the same order,
and the same errors."""

from __future__ import annotations

import inspect
import types
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hpatch.image.functions as functions
from hpatch import _fallback, _native
from hpatch.image import load_image

from ..conftest import SAMPLES, corpus_binaries

ENTRY_BITS = (1 << 1, 1 << 9, 1 << 10, (1 << 1) | (1 << 3))


class Logged:
    """A callback that answers from a table (or a default) and logs its calls."""

    def __init__(self, answer: Callable[..., Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, *args: int) -> Any:
        self.calls.append(args)
        return self.answer(*args)


def _run(module: types.ModuleType, name: str, args: list[Any]) -> tuple[Any, list[Any]]:
    """(outcome, the calls each Logged argument answered) of one call."""
    try:
        outcome: Any = ("ok", getattr(module, name)(*args))
    except Exception as exc:  # parity of the error is what is tested
        outcome = (type(exc).__name__, str(exc))
    return outcome, [a.calls for a in args if isinstance(a, Logged)]


def _both(name: str, make: Callable[[], list[Any]]) -> tuple[Any, Any]:
    return _run(_native, name, make()), _run(_fallback, name, make())


def test_signatures_are_the_twins() -> None:
    def shape(function: object) -> list[tuple[str, object]]:
        parameters = inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        return [(p.name, p.kind) for p in parameters]

    for name in ("gap_evidence", "gap_leaves"):
        assert shape(getattr(_native, name)) == shape(getattr(_fallback, name))


@st.composite
def _round_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Sorted disjoint ranges, references into and around them grouped by target,
    stated starts, and the answers of the check."""
    cuts = sorted(set(draw(st.lists(st.integers(0, 4000), max_size=24))))
    if len(cuts) % 2:
        cuts.pop()
    rva = st.integers(0, 4100)
    bit = st.sampled_from([1 << 1, 1 << 2, 1 << 3, 1 << 4])
    rows = sorted(draw(st.lists(st.tuples(rva, rva, bit), max_size=60)))
    static = sorted(draw(st.dictionaries(rva, st.integers(0, 1 << 12), max_size=8)).items())
    return {
        "starts": cuts[0::2],
        "ends": cuts[1::2],
        "rows": rows,
        "static": static,
        "entry_bits": draw(st.sampled_from([None, ENTRY_BITS])),
        "passes": draw(st.sets(rva, max_size=40)),
    }


def _round_args(inputs: dict[str, Any]) -> list[Any]:
    rows, static = inputs["rows"], inputs["static"]
    return [
        [t for t, _ in static],
        [m for _, m in static],
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        inputs["starts"],
        inputs["ends"],
        inputs["entry_bits"],
        Logged(lambda start, end, site: site in inputs["passes"]),
    ]


@settings(max_examples=400, deadline=None)
@given(inputs=_round_inputs())
def test_gap_evidence_agrees(inputs: dict[str, Any]) -> None:
    native, twin = _both("gap_evidence", lambda: _round_args(inputs))
    assert native == twin


@settings(max_examples=300, deadline=None)
@given(inputs=_round_inputs())
def test_gap_evidence_is_reference_evidence_checked_and_sorted(inputs: dict[str, Any]) -> None:
    """What a round did before the loop moved into the core: reference_evidence, then
    each unchecked (target, bit) checked while the target lacks some of the bit."""
    found = {t: m for t, m in inputs["static"]}
    rows = [(t, s, b) for t, s, b in inputs["rows"]]
    unchecked = _native.reference_evidence(
        found, rows, inputs["starts"], inputs["ends"], inputs["entry_bits"]
    )
    for (target, bit), sites in unchecked.items():
        have = found.get(target, 0)
        if have & bit != bit and any(site in inputs["passes"] for _, _, site in sites):
            found[target] = have | bit
    wanted = sorted(t for t, m in found.items() if m)
    for module in (_native, _fallback):
        targets, masks = module.gap_evidence(*_round_args(inputs))
        assert (targets, masks) == (wanted, [found[t] for t in wanted])


@settings(max_examples=200, deadline=None)
@given(inputs=_round_inputs())
def test_gap_evidence_takes_columns(inputs: dict[str, Any]) -> None:
    """The references as array("I") columns (the bits as array("B") where they fit), as
    discovery keeps them, give what lists give, in both cores."""
    for module in (_native, _fallback):
        args = _round_args(inputs)
        as_lists = module.gap_evidence(*args)
        args = _round_args(inputs)
        args[2], args[3] = array("I", args[2]), array("I", args[3])
        args[4] = array("B", args[4])
        args[0] = array("I", args[0])
        assert module.gap_evidence(*args) == as_lists


def test_gap_leaves_takes_columns() -> None:
    targets, masks = [0x10, 0x20, 0x30], [1, 1, 3]
    for module in (_native, _fallback):
        found = [
            module.gap_leaves(
                t,
                m,
                0,
                0x40,
                1,
                (1, 2),
                lambda rva: None,
                lambda rva, bound: rva + 8,
                lambda rva: 0,
                lambda end, mask: True,
                lambda rva: False,
            )
            for t, m in ((targets, masks), (array("I", targets), array("B", masks)))
        ]
        assert found[0] == found[1] and found[0][0]


def test_gap_evidence_rejects_bad_arguments_the_same_way() -> None:
    def check(start: int, end: int, site: int) -> bool:
        return True

    good: list[Any] = [[5], [1], [5, 5], [10, 11], [2, 2], [8], [16], ENTRY_BITS, check]
    for index, bad in (
        (0, [5, 5]),  # static targets that repeat
        (1, []),  # masks of another length
        (2, [6, 5]),  # targets out of order
        (3, [10]),
        (5, [8, 9]),
        (7, (1, 2)),
        (7, [1, 2, 3, 4]),
        (8, 5),
        (2, ["x", 1]),
        (6, 5),
    ):
        args = list(good)
        args[index] = bad
        native, twin = _both("gap_evidence", lambda args=args: list(args))
        assert native[0][0] == twin[0][0] != "ok", (index, bad)
        if native[0][0] == "ValueError":
            assert native == twin


def test_gap_evidence_raises_what_the_check_raises() -> None:
    def check(start: int, end: int, site: int) -> bool:
        raise RuntimeError("from the check")

    for module in (_native, _fallback):
        with pytest.raises(RuntimeError, match="from the check"):
            module.gap_evidence([], [], [5], [10], [2], [8], [16], ENTRY_BITS, check)


ACCEPTED, STRONG = 0b0110, 0b0010


@st.composite
def _walk_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A gap, candidates in and around it with evidence, and the callbacks' answers:
    thunks at a few places, an end (or None) for each candidate and bound, padding."""
    gap_start = draw(st.integers(0, 64))
    gap_end = gap_start + draw(st.integers(0, 400))
    targets = sorted(draw(st.sets(st.integers(max(gap_start - 4, 0), gap_end + 4), max_size=40)))
    masks = [draw(st.sampled_from([0, 1, 2, 4, 6, 8])) for _ in targets]
    spot = st.integers(gap_start, gap_end + 8)
    return {
        "targets": targets,
        "masks": masks,
        "gap_start": gap_start,
        "gap_end": gap_end,
        "align": draw(st.sampled_from([1, 1, 4])),
        "thunks": draw(st.dictionaries(spot, st.integers(1, 16), max_size=4)),
        "ends": draw(st.dictionaries(spot, st.integers(-4, 60), max_size=30)),
        "padding": draw(st.dictionaries(spot, st.integers(0, 6), max_size=10)),
        "follows": draw(st.booleans()),
        "runs_into": draw(st.booleans()),
    }


def _walk_args(inputs: dict[str, Any]) -> list[Any]:
    thunks, ends, padding = inputs["thunks"], inputs["ends"], inputs["padding"]

    def extent(target: int, bound: int) -> int | None:
        size = ends.get(target)
        return None if size is None or target + size > bound else target + size

    return [
        inputs["targets"],
        inputs["masks"],
        inputs["gap_start"],
        inputs["gap_end"],
        inputs["align"],
        (ACCEPTED, STRONG),
        Logged(lambda rva: rva + thunks[rva] if rva in thunks else None),
        Logged(extent),
        Logged(lambda rva: padding.get(rva, 0)),
        Logged(lambda end, mask: inputs["follows"] or mask & STRONG),
        Logged(lambda target: inputs["runs_into"]),
    ]


@settings(max_examples=500, deadline=None)
@given(inputs=_walk_inputs())
def test_gap_leaves_agrees(inputs: dict[str, Any]) -> None:
    native, twin = _both("gap_leaves", lambda: _walk_args(inputs))
    assert native == twin
    assert native[0][0] == "ok"


def test_gap_leaves_walks_past_what_it_found() -> None:
    # a thunk at the start, a function with a candidate inside it, one the code runs
    # on into (not strong: given way), and one that runs into the range at gap_end
    ends = {16: 40, 48: None, 56: None}
    for module in (_native, _fallback):
        found = module.gap_leaves(
            [16, 20, 48, 52, 56],
            [ACCEPTED, ACCEPTED, ACCEPTED, ACCEPTED & ~STRONG, ACCEPTED],
            0,
            64,
            4,
            (ACCEPTED, STRONG),
            lambda rva: 8 if rva == 0 else None,
            lambda target, bound: ends.get(target),
            lambda rva: 8 if rva in (8, 40) else 0,
            lambda end, mask: True,
            lambda target: target == 56,
        )
        assert found == ({0: 8, 16: 40, 56: 64}, 56)
        assert list(found[0]) == [0, 16, 56]


def test_gap_leaves_rejects_bad_arguments_the_same_way() -> None:
    def answer(*args: int) -> None:
        return None

    good: list[Any] = [[4, 8], [6, 6], 0, 16, 4, (6, 2), answer, answer, answer, answer, answer]
    for index, bad in (
        (0, [8, 4]),  # out of order
        (0, [4, 4]),  # repeated
        (1, [6]),
        (4, 0),
        (4, -4),
        (5, (6,)),
        (5, [6, 2]),
        (6, None),
        (10, 5),
        (2, "x"),
        (0, ["x"]),
    ):
        args = list(good)
        args[index] = bad
        native, twin = _both("gap_leaves", lambda args=args: list(args))
        assert native[0][0] == twin[0][0] != "ok", (index, bad)
        if native[0][0] == "ValueError":
            assert native == twin


def _discovered(path: Path, module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The functions of ``path`` with the rounds' loops of ``module``."""
    core = types.SimpleNamespace(
        **{name: getattr(functions.core, name) for name in dir(functions.core)}
    )
    core.gap_evidence = module.gap_evidence
    core.gap_leaves = module.gap_leaves
    with monkeypatch.context() as patch:
        patch.setattr(functions, "core", core)
        return load_image(path).functions


IMAGES = sorted(SAMPLES.glob("*/v1/sample*.dll")) + [
    p for _, _, p in corpus_binaries() if p.stat().st_size < 3 << 20
]


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: "/".join(p.parts[-3:]))
def test_rounds_agree_on_images(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native = _discovered(path, _native, monkeypatch)
    assert native == _discovered(path, _fallback, monkeypatch)
    assert [f.rva for f in native] == sorted(f.rva for f in native)
