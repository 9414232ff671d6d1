"""The fuzz harness as part of the suite: the regression corpus replayed, a short
deterministic run of every generator, and the crash bookkeeping of the driver."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hpatch import _fallback, _native

from .cases import KNOWN, SLOW_SECONDS, Case, build, compare, least_seconds, load_corpus
from .generate import GENERATORS, generate
from .run import make_case

REPO = Path(__file__).resolve().parents[2]
CORPUS = load_corpus()


def test_every_native_function_has_a_generator() -> None:
    exported = sorted(name for name in dir(_native) if not name.startswith("_"))
    assert exported == sorted(GENERATORS)


@pytest.mark.parametrize("case", [c for _, c in CORPUS], ids=[n for n, _ in CORPUS])
def test_corpus_case(case: Case) -> None:
    problem, seconds = compare(case, _native, _fallback)
    assert problem is None, problem
    assert min(seconds, least_seconds(_native, case)) < SLOW_SECONDS


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generated_cases_agree(name: str) -> None:
    """100 cases of each generator, always the same ones: the generators keep working,
    and the suite (and ``make sanitize``) sees a spread of hostile inputs."""
    for index in range(100):
        case = generate(name, random.Random(f"suite/{name}/{index}"))
        problem, _ = compare(case, _native, _fallback)
        assert problem is None or problem.startswith("known: "), (index, problem)


def test_known_divergences_are_argument_handling_only() -> None:
    # a result that differs on well-typed, contiguous arguments is never "known"
    case = Case("normalise_x64", [["bytes", "c3"], 0x1000, 0, 1, ["bytes", ""], 0])
    for _, _, applies in KNOWN:
        assert not applies(case, ("ok", 1), ("ok", 2))


def test_cases_survive_json() -> None:
    case = generate("apply_fixups", random.Random("json"))
    again = Case.from_json(case.to_json())
    assert again.args == case.args and again.function == case.function
    assert [type(a) for a in build(again.args)] == [type(a) for a in build(case.args)]


def test_a_process_that_dies_leaves_its_case_in_the_corpus(tmp_path: Path) -> None:
    """The driver finds the case a dead child was on and saves it, as it does when a
    sanitizer report ends the child."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.pop("HPATCH_SANITIZED_NATIVE", None)
    command = [sys.executable, "-m", "tests.fuzz.run", "--seed", "t", "--seconds", "4"]
    command += ["--only", "encode_redirect", "scan_x64_sites", "--corpus", str(tmp_path)]
    command += ["--abort-at", "encode_redirect:25"]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (saved,) = tmp_path.glob("*.json")
    case = Case.from_json(saved.read_text())
    assert case.args == make_case("t", "encode_redirect", 25).args
    assert "case 25: the process died" in json.loads(saved.read_text())["note"]
    assert "scan_x64_sites: " in result.stdout  # the run went on after the crash
