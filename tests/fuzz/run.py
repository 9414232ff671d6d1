"""Bounded fuzz run of every native entry point against its pure-Python twin.

    python -m tests.fuzz.run [--seconds N] [--seed S] [--only NAME ...]

``--seconds`` (default ``$HPATCH_FUZZ_SECONDS``, else 60) is the whole budget, shared
equally by the entry points. Case ``i`` of entry point ``f`` comes from
``random.Random(f"{seed}/{f}/{i}")``, so any case can be made again from the seed (a
random one unless given; it is printed first).

The cases run in a child process. Before each call the child records which case it is
on in a shared page; when the child dies (an ASan or UBSan report ends the process) or
stops making progress, the parent makes that case again, saves it, and starts a new
child on the entry points after that one. A disagreement
between the cores or a slow call is saved by the child itself. Saved cases go to
tests/fuzz/corpus/ (replayed by tests/fuzz/test_corpus.py); the run then fails.

With ``HPATCH_SANITIZED_NATIVE`` set (``make sanitize`` / ``make fuzz`` do it), both
processes load that build of ``hpatch._native`` and refuse to run otherwise.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from . import sanitized
from .cases import CORPUS, SLOW_SECONDS, Case, compare, least_seconds, save
from .generate import GENERATORS, generate

# How long a single case may run (both cores, the twin's capstone included) before
# the child is taken to hang.
HANG_SECONDS = 20.0
_PROGRESS = struct.Struct("<QQ")  # entry point index + 1, case index
FOUND = 3  # the child's exit status when it saved a case itself
BROKEN = 4  # ... when the harness itself failed (a traceback says where)


def _setup() -> None:
    if os.environ.get(sanitized.ENV):
        print(sanitized.check(sanitized.install()), flush=True)


def make_case(seed: str, name: str, index: int) -> Case:
    return generate(name, random.Random(f"{seed}/{name}/{index}"))


def child(
    seed: str,
    names: list[str],
    seconds: float,
    progress_path: str,
    corpus: Path,
    abort_at: str | None = None,
) -> int:
    """Run the cases; FOUND when one was saved, 0 otherwise. ``abort_at``
    (``name:index``) ends the process there, as a sanitizer report would: the test
    of the harness itself."""
    _setup()
    from hpatch import _fallback, _native

    with open(progress_path, "r+b") as handle:
        progress = mmap.mmap(handle.fileno(), _PROGRESS.size)
    share = seconds / len(names)
    found = 0
    for position, name in enumerate(names):
        deadline = time.monotonic() + share
        index = 0
        divergences: Counter[str] = Counter()
        while time.monotonic() < deadline:
            progress[:] = _PROGRESS.pack(position + 1, index)
            if abort_at == f"{name}:{index}":
                os.abort()
            try:
                case = make_case(seed, name, index)
                problem, took = compare(case, _native, _fallback)
            except Exception:
                traceback.print_exc()
                print(f"fuzz: the harness failed on {name} case {index}", flush=True)
                return BROKEN
            if problem is not None and problem.startswith("known: "):
                divergences[problem[len("known: ") :]] += 1
                problem = None
            if problem is None and took > SLOW_SECONDS:
                took = min(took, least_seconds(_native, case))
                if took > SLOW_SECONDS:
                    problem = f"slow: the C core took {took:.3f} s"
            index += 1
            if problem is not None:  # one finding per entry point and run
                path = save(case, f"seed {seed}, case {index - 1}: {problem}", corpus)
                print(f"{name} case {index - 1}: {problem}\n  saved as {path}", flush=True)
                found += 1
                break
        seen = ", ".join(f"{n} {count}" for n, count in sorted(divergences.items()))
        print(
            f"{name}: {index} cases" + (f" (known divergences: {seen})" if seen else ""), flush=True
        )
    return FOUND if found else 0


def parent(
    seed: str, names: list[str], seconds: float, corpus: Path, abort_at: str | None = None
) -> int:
    """Run the child over the entry points; when it dies or hangs, save its case and
    start a new one on the entry points after that one. 1 if anything was found."""
    _setup()
    share, status = seconds / len(names), 0
    while names:
        outcome, progress = _supervise(seed, names, share * len(names), corpus, abort_at)
        if outcome is None:
            return status or progress[0]
        status = 1
        if not progress[0]:
            print(f"fuzz: {outcome} before the first case", flush=True)
            return status
        name, index = names[progress[0] - 1], progress[1]
        path = save(make_case(seed, name, index), f"seed {seed}, case {index}: {outcome}", corpus)
        print(f"{name} case {index}: {outcome}\n  saved as {path}", flush=True)
        names = names[progress[0] :]
    return status


def _supervise(
    seed: str, names: list[str], seconds: float, corpus: Path, abort_at: str | None
) -> tuple[str | None, tuple[int, int]]:
    """(None, (0 or 1, 0)) when the child ran to the end, 1 if it found something;
    (what happened, its last progress) when it died or hung."""
    with tempfile.NamedTemporaryFile(prefix="hpatch-fuzz-") as handle:
        handle.write(bytes(_PROGRESS.size))
        handle.flush()

        def progress() -> tuple[int, int]:
            return _PROGRESS.unpack(Path(handle.name).read_bytes()[: _PROGRESS.size])

        command = [sys.executable, "-m", "tests.fuzz.run", "--child", handle.name]
        command += ["--seed", seed, "--seconds", str(seconds), "--corpus", str(corpus)]
        command += ["--only", *names] + (["--abort-at", abort_at] if abort_at else [])
        process = subprocess.Popen(command)
        last, since = progress(), time.monotonic()
        while process.poll() is None:
            time.sleep(0.2)
            now = progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > HANG_SECONDS:
                process.kill()
                process.wait()
                return f"no progress for {HANG_SECONDS:.0f} s", last
        status = process.returncode
        if status in (0, FOUND, BROKEN):
            return None, (int(status != 0), 0)
        return f"the process died (exit status {status})", progress()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_seconds = float(os.environ.get("HPATCH_FUZZ_SECONDS", "60"))
    parser.add_argument("--seconds", type=float, default=default_seconds)
    parser.add_argument("--seed", default=None)
    parser.add_argument("--only", nargs="+", choices=sorted(GENERATORS), default=None)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="where found cases go")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--abort-at", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.only or sorted(GENERATORS)
    seed = args.seed if args.seed is not None else os.urandom(6).hex()
    if args.child:
        return child(seed, names, args.seconds, args.child, args.corpus, args.abort_at)
    print(f"fuzz: seed {seed}, {args.seconds:.0f} s over {', '.join(names)}", flush=True)
    status = parent(seed, names, args.seconds, args.corpus, args.abort_at)
    print("fuzz: " + ("nothing found" if status == 0 else "failed: see above"), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
