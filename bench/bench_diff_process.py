"""``hpatch diff --json OLD NEW`` against bsdiff4 as whole processes, the way a user runs
them, on every public pair of 100 KB or more.

    python bench/bench_diff_process.py [--repeat N] [--min-size BYTES] [--baseline DIR]

For each pair, the two commands alternate N times (hpatch, bsdiff4, hpatch, ...), each a
new process: ``hpatch -q diff --json OLD NEW > /dev/null`` and
``python -c 'bsdiff4.file_diff(OLD, NEW, OUT)'``. Medians of CPU time (user + system of
the child, from wait4) and wall time, the ratio of the CPU medians, and each command's
peak resident memory (the child's ru_maxrss). A line for ``python -c pass`` gives the
interpreter's own start and memory, the floor under both.

``--baseline DIR`` also times the hpatch whose package is in DIR (another checkout,
run with PYTHONPATH=DIR) in the same rounds, for a change measured against the code
before it on the same load: two more columns, its CPU and its ratio to bsdiff4.

hpatch's bytecode is compiled first, as an installed package's is: under
PYTHONDONTWRITEBYTECODE (or a read-only tree) every run would compile the sources again.
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus import corpus_pairs

EXTRA = Path(os.environ.get("HPCORPUS_EXTRA", Path.home() / ".cache" / "hpatch-corpus-extra"))
HPATCH = str(Path(sys.executable).with_name("hpatch"))
BSDIFF = "import bsdiff4, sys; bsdiff4.file_diff(sys.argv[1], sys.argv[2], sys.argv[3])"


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak RSS in KiB) of one run of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped by wait4 (its status is not the point here)
    wall = time.perf_counter() - start
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss


def median(runs: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        max(r[2] for r in runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--min-size", type=int, default=100_000)
    parser.add_argument("--baseline", type=Path, help="a checkout to time alongside")
    args = parser.parse_args()
    pairs = sorted(
        {
            (name, old, new)
            for name, old, new in corpus_pairs() + corpus_pairs(EXTRA)
            if max(old.stat().st_size, new.stat().st_size) >= args.min_size
        },
        key=lambda p: p[2].stat().st_size,
    )
    import hpatch

    compileall.compile_dir(Path(hpatch.__file__).parent, quiet=1)
    baseline_env = None
    if args.baseline is not None:
        compileall.compile_dir(args.baseline / "hpatch", quiet=1)
        baseline_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
    floor = median([measured([sys.executable, "-c", "pass"]) for _ in range(args.repeat)])
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores; "
        f"median of {args.repeat} alternating runs; `python -c pass`: {floor[0] * 1000:.0f} ms "
        f"CPU, {floor[2] / 1024:.0f} MiB\n"
    )
    extra = " baseline CPU | baseline / bsdiff4 |" if baseline_env is not None else ""
    print(
        "| pair | size (old + new) | hpatch CPU | bsdiff4 CPU | hpatch / bsdiff4 "
        "| hpatch wall | bsdiff4 wall | hpatch peak RSS | bsdiff4 peak RSS |" + extra
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (2 * bool(extra)))
    with tempfile.TemporaryDirectory() as scratch:
        delta = str(Path(scratch) / "delta")
        for name, old, new in pairs:
            runs: dict[str, list[tuple[float, float, int]]] = {
                "hpatch": [],
                "bsdiff4": [],
                "baseline": [],
            }
            diff = [HPATCH, "-q", "diff", "--json", str(old), str(new)]
            for _ in range(args.repeat):
                runs["hpatch"].append(measured(diff))
                runs["bsdiff4"].append(
                    measured([sys.executable, "-c", BSDIFF, str(old), str(new), delta])
                )
                if baseline_env is not None:
                    runs["baseline"].append(measured(diff, baseline_env))
            ours, theirs = median(runs["hpatch"]), median(runs["bsdiff4"])
            size = (old.stat().st_size + new.stat().st_size) / 2**20
            line = (
                f"| {name} | {size:.1f} MiB | {ours[0]:.2f} s | {theirs[0]:.2f} s | "
                f"{ours[0] / theirs[0]:.2f} | {ours[1]:.2f} s | {theirs[1]:.2f} s | "
                f"{ours[2] / 1024:.0f} MiB | {theirs[2] / 1024:.0f} MiB |"
            )
            if baseline_env is not None:
                before = median(runs["baseline"])
                line += f" {before[0]:.2f} s | {before[0] / theirs[0]:.2f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
