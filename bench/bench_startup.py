"""Time hpatch's start-up as whole processes, against the interpreter's own.

    python bench/bench_startup.py [--repeat N]

Each command runs as a user runs it, a new process each time: ``python -c pass`` (the
floor), ``hpatch --version``, ``hpatch --help``, and for scale ``hpatch info`` on a
sample (a command that loads the PE reader). The commands alternate round by round, so
a change in the load of a shared machine falls on all of them; median of N rounds, wall
time and CPU time (user + system of the child) both.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HPATCH = str(Path(sys.executable).with_name("hpatch"))
SAMPLE = str(REPO / "samples" / "bin" / "x64-clang" / "v1" / "sample.stripped.dll")

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "hpatch --version": [HPATCH, "--version"],
    "hpatch --help": [HPATCH, "--help"],
    "hpatch info SAMPLE": [HPATCH, "info", SAMPLE],
}


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        timed(command)  # warm the page cache once
    for _ in range(args.repeat):
        for name, command in COMMANDS.items():
            runs[name].append(timed(command))
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, median of {args.repeat} rounds\n"
    )
    print("| command | wall | CPU |")
    print("|---|---:|---:|")
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        print(f"| `{name}` | {wall * 1000:.0f} ms | {cpu * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
