"""Time function discovery (``hpatch funcs``) against full parses by pefile and lief.

For every real-world corpus binary (and one sample per build), in one run on one
machine: hpatch's load + function discovery with the C core and with the pure-Python
twin, pefile's full parse (which decodes the x64 exception directory) and lief's full
parse with ``ParserConfig.all`` (which decodes .pdata for both machines). Median of
``--repeat`` runs each.

With ``--processes``: whole processes instead, as a user runs them, on the corpus
binaries, the samples and the largest DLLs (the OpenBLAS builds of
~/.cache/hpatch-corpus-extra): ``hpatch funcs --json F`` with the C core, and a
process that parses F with pefile and one with lief, alternating binary by binary;
median CPU (user + system, from the children's rusage) and wall time of N runs each.
With ``--scaling DIR``: ``hpatch funcs --json`` as a whole process on generated
libraries of 1,000 to 100,000 functions (bench/gen_sample.py, needs clang and
lld-link; built into DIR once). With ``--before TREE`` (and ``--processes``): the same
command run from another checkout too (a git worktree of an earlier commit with its C
core built in place), alternating with this one run by run, for a before and after
on a machine whose load changes; ``--only WORD`` keeps the binaries whose name holds
WORD.

    python bench/bench_funcs.py [--repeat N] [--processes [--before TREE] [--only WORD]]
                                [--scaling DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from corpus import corpus_pairs

REPO = Path(__file__).resolve().parent.parent
EXTRA = Path(os.environ.get("HPCORPUS_EXTRA", Path.home() / ".cache" / "hpatch-corpus-extra"))
#: Whole processes that parse a file the way the references do.
REFERENCES = {
    "pefile": "import sys, pefile; pefile.PE(sys.argv[1])",
    "lief": "import sys, lief; lief.logging.disable(); "
    "lief.PE.parse(sys.argv[1], lief.PE.ParserConfig.all)",
}
SCALES = (1000, 2000, 5000, 10000, 20000, 50000, 100000)


def corpus_paths() -> list[Path]:
    paths = [old for _, old, _ in corpus_pairs()]
    for build in ("x64-gcc", "x64-clang", "arm64-clang"):
        paths.append(REPO / "samples" / "bin" / build / "v1" / "sample.stripped.dll")
    return paths


def median_seconds(action: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def worker(repeat: int) -> None:
    """Runs in a child process so that the backend is chosen by the environment."""
    import lief
    import pefile

    from hpatch.image import load_image

    lief.logging.disable()
    results = {}
    for path in corpus_paths():
        data = path.read_bytes()
        row = {
            "functions": len(load_image(data).functions),
            "hpatch": median_seconds(lambda d=data: load_image(d).functions, repeat),
        }
        if os.environ.get("HPATCH_PURE_PYTHON") != "1":
            row["pefile"] = median_seconds(lambda p=path: pefile.PE(str(p)), repeat)
            row["lief"] = median_seconds(
                lambda d=data: lief.PE.parse(d, lief.PE.ParserConfig.all), repeat
            )
        results[str(path)] = row
    print(json.dumps(results))


def run_worker(repeat: int, pure: bool) -> dict[str, dict[str, float]]:
    env = dict(os.environ, HPATCH_PURE_PYTHON="1" if pure else "0")
    output = subprocess.run(
        [sys.executable, __file__, "--worker", "--repeat", str(repeat)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output)


def process_seconds(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(CPU, wall) seconds of one whole process, its output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = dict(os.environ, HPATCH_PURE_PYTHON="0")
    subprocess.run(
        command,
        check=True,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def funcs_command(path: Path) -> list[str]:
    """``hpatch funcs --json path``, run from a tree's root: python -m puts the working
    directory first, so the tree timed is the one the process starts in (the venv's
    ``hpatch`` script runs whichever checkout the venv was installed from)."""
    return [sys.executable, "-m", "hpatch", "funcs", "--json", str(path)]


def process_paths() -> list[Path]:
    largest = sorted(EXTRA.glob("pairs/*openblas*/old.dll"))
    return corpus_paths() + largest


def processes_table(repeat: int, before: Path | None = None, only: str | None = None) -> None:
    """hpatch funcs and the references as whole processes, alternating run by run."""
    head = "| binary | size | hpatch funcs CPU | wall |"
    if before is not None:
        head += " before: CPU | wall |"
    print(head + " pefile CPU | wall | lief CPU | wall |")
    print("|---|---:|" + "---:|---:|" * (4 if before is not None else 3))
    for path in process_paths():
        if only is not None and only not in str(path):
            continue
        commands = {"hpatch": funcs_command(path)}
        if before is not None:
            # run from the tree itself: python -m puts the working directory first
            commands["before"] = funcs_command(path)
        commands.update(
            (name, [sys.executable, "-c", code, str(path)]) for name, code in REFERENCES.items()
        )
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(repeat):
            for name, command in commands.items():
                cwd = before if name == "before" else REPO
                timings[name].append(process_seconds(command, cwd))
        cells = []
        for name in commands:
            cells.append(f"{statistics.median(t[0] for t in timings[name]):.2f} s")
            cells.append(f"{statistics.median(t[1] for t in timings[name]):.2f} s")
        parts = path.parts
        name = "/".join(parts[-3:-1] if "samples" in parts else parts[-2:-1])
        size = path.stat().st_size / 1024
        print(f"| {name} | {size:.0f} KiB | " + " | ".join(cells) + " |")


def scaling_table(folder: Path, repeat: int) -> None:
    """hpatch funcs as a whole process on generated libraries of growing size; the
    last column is the CPU each further 1,000 functions cost over the row before
    (a process's start-up is in every row, so a ratio to the count would hide it)."""
    print("| functions | DLL size | hpatch funcs CPU | wall | CPU per further 1,000 functions |")
    print("|---:|---:|---:|---:|---:|")
    previous: tuple[int, float] | None = None
    for count in SCALES:
        target = folder / str(count)
        if not (target / "old.dll").is_file():
            generator = REPO / "bench" / "gen_sample.py"
            command = [sys.executable, str(generator), str(count), str(target), "--old-only"]
            subprocess.run(command, check=True)
        timings = [process_seconds(funcs_command(target / "old.dll"), REPO) for _ in range(repeat)]
        cpu = statistics.median(t[0] for t in timings)
        wall = statistics.median(t[1] for t in timings)
        size = (target / "old.dll").stat().st_size / 1024
        step = (
            ""
            if previous is None
            else f"{1000 * (cpu - previous[1]) / (count - previous[0]):.3f} s"
        )
        print(f"| {count} | {size:.0f} KiB | {cpu:.2f} s | {wall:.2f} s | {step} |")
        previous = (count, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--processes", action="store_true")
    parser.add_argument("--scaling", type=Path, metavar="DIR")
    parser.add_argument("--before", type=Path, metavar="TREE")
    parser.add_argument("--only", metavar="WORD")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeat)
        return
    if args.processes or args.scaling:
        if args.processes:
            processes_table(args.repeat, args.before, args.only)
        if args.scaling:
            scaling_table(args.scaling, args.repeat)
        return
    native, pure = run_worker(args.repeat, pure=False), run_worker(args.repeat, pure=True)
    print("| binary | size | functions | hpatch (C core) | hpatch (pure Python) | pefile | lief |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, row in native.items():
        parts = Path(path).parts
        name = "/".join(parts[-3:-1] if "samples" in parts else parts[-2:-1])
        size = Path(path).stat().st_size
        print(
            f"| {name} | {size / 1024:.0f} KiB | {row['functions']} | {row['hpatch'] * 1000:.1f} ms"
            f" | {pure[path]['hpatch'] * 1000:.1f} ms | {row['pefile'] * 1000:.1f} ms"
            f" | {row['lief'] * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
