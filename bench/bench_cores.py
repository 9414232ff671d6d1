"""Both cores: ``hpatch diff --json`` with the two images' discovery in two threads,
against the command as it is, discovering one image after the other.

    python bench/bench_cores.py [--repeat N] [--only PAIR ...] [--baseline DIR]

For each pair (the largest of both corpora by default), in alternating rounds, each a
new process:

- ``discovery``: both images read in the process, then both discoveries timed alone
  (wall and the process's CPU): ``serial``, one after the other, and ``threaded``, the
  new image's in a thread while the old image's runs in the main one;
- ``command``: the whole ``hpatch -q diff --json OLD NEW > /dev/null``, ``serial`` (the
  command as it is) and ``threaded`` (the driver below discovers both images, the new
  one in a thread, as soon as the command has read them); with ``--baseline DIR``, the
  command of the checkout in DIR too (the code before, run with PYTHONPATH=DIR).

The discoveries go around ``PEImage.functions``: a ``functools.cached_property``, whose
lock (Python 3.10 and 3.11) is one per class, so that through it they would run one at
a time; the found functions go where it keeps its value. Medians of CPU (user + system,
from wait4) and wall time, and the peak resident memory. The load average is printed
before and after: a thread can only save wall time on a free core.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from corpus import corpus_pairs

EXTRA = Path(os.environ.get("HPCORPUS_EXTRA", Path.home() / ".cache" / "hpatch-corpus-extra"))
LARGEST = (
    "numpy-2.3.4-2.3.5-win_amd64-_openblas_.dll",
    "numpy-2.3.4-2.3.5-win_arm64-_openblas_.dll",
    "pydantic-core-2.41.4-2.41.5-win_amd64-_pydantic_core._.pyd",
    "pydantic-core-2.41.4-2.41.5-win_arm64-_pydantic_core._.pyd",
    "lxml-6.0.2-6.0.3-win_amd64-etree._.pyd",
    "lxml-6.0.2-6.0.3-win_arm64-etree._.pyd",
)
#: Both images' functions, the second's in a thread (the pairs of the bench are good
#: images: an error would only stop the bench).
BOTH = """
import threading
from hpatch.image.functions import discover_functions

def discover_both(old, new):
    found = {}
    worker = threading.Thread(target=lambda: found.setdefault("new", discover_functions(new)))
    worker.start()
    vars(old)["functions"] = discover_functions(old)
    worker.join()
    vars(new)["functions"] = found["new"]
"""
#: The command; with argv[1] "threaded", both images discovered as soon as it has read
#: the second.
COMMAND = (
    BOTH
    + """
import sys
import hpatch.cli.diff as command
if sys.argv[1] == "threaded":
    read, images = command.read_image, []

    def read_image(path):
        images.append(read(path))
        if len(images) == 2:
            discover_both(*images)
        return images[-1]

    command.read_image = read_image
from hpatch.cli import main
main(["-q", "diff", "--json", *sys.argv[2:]])
"""
)
#: Both discoveries of a pair, timed in the process: prints {"wall", "cpu"}.
DISCOVERY = (
    BOTH
    + """
import json, sys, time
from hpatch.cli.inputs import read_image
from hpatch.cyclic_gc import collector_paused
with collector_paused():
    old, new = (read_image(path) for path in sys.argv[2:])
    wall, cpu = time.perf_counter(), time.process_time()
    if sys.argv[1] == "threaded":
        discover_both(old, new)
    else:
        old.functions, new.functions
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({"wall": wall, "cpu": cpu}))
"""
)


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak RSS in KiB) of one run of ``command``."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode not in (0, 3):
        raise SystemExit(f"{command} exited {process.returncode}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss


def discovery(mode: str, old: Path, new: Path) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, 0) of both discoveries, timed in the child."""
    out = subprocess.run(
        [sys.executable, "-c", DISCOVERY, mode, str(old), str(new)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    times = json.loads(out)
    return times["cpu"], times["wall"], 0


def median(runs: list[tuple[float, float, int]]) -> tuple[float, float, int]:
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        max(r[2] for r in runs),
    )


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=list(LARGEST), help="pair names")
    parser.add_argument("--baseline", type=Path, help="a checkout to time alongside")
    args = parser.parse_args()
    wanted = set(args.only)
    pairs = sorted(
        {p for p in corpus_pairs() + corpus_pairs(EXTRA) if p[0] in wanted},
        key=lambda p: -p[2].stat().st_size,
    )
    import hpatch

    compileall.compile_dir(Path(hpatch.__file__).parent, quiet=1)
    baseline_env = None
    if args.baseline is not None:
        compileall.compile_dir(args.baseline / "hpatch", quiet=1)
        baseline_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} "
        f"cores; median of {args.repeat} alternating runs; load average {load()}\n"
    )
    extra = " baseline CPU | baseline wall |" if baseline_env is not None else ""
    print(
        "| pair | discovery serial CPU | wall | threaded CPU | wall | wall saved "
        "| command serial CPU | wall | threaded CPU | wall | wall saved "
        "| serial peak RSS | threaded peak RSS |" + extra
    )
    print("|---|" + "---:|" * (12 + 2 * bool(extra)))
    for name, old, new in pairs:
        runs: dict[str, list[tuple[float, float, int]]] = {}
        for _ in range(args.repeat):
            for mode in ("serial", "threaded"):
                runs.setdefault(f"discovery {mode}", []).append(discovery(mode, old, new))
            for mode in ("serial", "threaded"):
                command = [sys.executable, "-c", COMMAND, mode, str(old), str(new)]
                runs.setdefault(f"command {mode}", []).append(measured(command))
            if baseline_env is not None:
                command = [sys.executable, "-c", COMMAND, "serial", str(old), str(new)]
                runs.setdefault("baseline", []).append(measured(command, baseline_env))
        m = {key: median(value) for key, value in runs.items()}
        cells = [name]
        for stage in ("discovery", "command"):
            serial, threaded = m[f"{stage} serial"], m[f"{stage} threaded"]
            cells += [f"{serial[0]:.2f} s", f"{serial[1]:.2f} s"]
            cells += [f"{threaded[0]:.2f} s", f"{threaded[1]:.2f} s"]
            cells.append(f"{(1 - threaded[1] / serial[1]) * 100:.0f}%")
        cells += [f"{m['command serial'][2] / 1024:.0f} MiB"]
        cells += [f"{m['command threaded'][2] / 1024:.0f} MiB"]
        if baseline_env is not None:
            cells += [f"{m['baseline'][0]:.2f} s", f"{m['baseline'][1]:.2f} s"]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
