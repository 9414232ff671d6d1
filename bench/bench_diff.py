"""Time ``hpatch diff`` (load, function discovery, diff) against bsdiff4 on the same files.

    python bench/bench_diff.py [--repeat N] [--scaling DIR]

For every real-world corpus pair: hpatch with the C core and with the pure-Python
twin, and bsdiff4 computing a delta of the same two files, median of N runs, in one
run on one machine. The C core's runs and bsdiff4's alternate in one process, pair by
pair, so that a change in the load of a shared machine falls on both. With --scaling
DIR: generated libraries of 1,000 to 20,000 functions (bench/gen_sample.py, needs
clang and lld-link) diffed with the C core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from corpus import corpus_pairs

REPO = Path(__file__).resolve().parent.parent
SCALES = (1000, 2000, 5000, 10000, 20000)


def seconds(action: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    action(*args)
    return time.perf_counter() - start


def hpatch_diff(old: Path, new: Path) -> None:
    from hpatch.diff import diff_images
    from hpatch.image import load_image

    diff_images(load_image(old.read_bytes()), load_image(new.read_bytes()))


def worker(repeat: int, reference: bool, targets: list[tuple[str, str]]) -> None:
    """Print {old path: {"hpatch": median, "bsdiff4": median}} (bsdiff4 if ``reference``)."""
    import hpatch.diff  # noqa: F401  (imports are not part of a diff's time)

    results = {}
    for old, new in targets:
        old_path, new_path = Path(old), Path(new)
        timings: dict[str, list[float]] = {"hpatch": []}
        if reference:
            import bsdiff4

            old_bytes, new_bytes = old_path.read_bytes(), new_path.read_bytes()
            timings["bsdiff4"] = []
        for _ in range(repeat):
            timings["hpatch"].append(seconds(hpatch_diff, old_path, new_path))
            if reference:
                timings["bsdiff4"].append(seconds(bsdiff4.diff, old_bytes, new_bytes))
        results[old] = {name: statistics.median(times) for name, times in timings.items()}
    print(json.dumps(results))


def run_worker(
    repeat: int, pure: bool, targets: list[tuple[Path, Path]], reference: bool = False
) -> dict[str, dict[str, float]]:
    env = dict(os.environ, HPATCH_PURE_PYTHON="1" if pure else "0")
    command = [sys.executable, __file__, "--worker", "--repeat", str(repeat)]
    command += ["--reference"] if reference else []
    command += [str(p) for pair in targets for p in pair]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def corpus_table(repeat: int) -> None:
    found = corpus_pairs()
    targets = [(old, new) for _, old, new in found]
    native = run_worker(repeat, False, targets, reference=True)
    pure = run_worker(repeat, True, targets)
    print(
        "| pair | size | hpatch diff (C core) | hpatch diff (pure Python) | bsdiff4 delta"
        " | C core / bsdiff4 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for pair_id, old, new in found:
        fast, slow = native[str(old)], pure[str(old)]
        print(
            f"| {pair_id} | {new.stat().st_size / 1024:.0f} KiB | {fast['hpatch']:.2f} s"
            f" | {slow['hpatch']:.2f} s | {fast['bsdiff4']:.2f} s"
            f" | {fast['hpatch'] / fast['bsdiff4']:.2f} |"
        )


def scaling_table(folder: Path, repeat: int) -> None:
    rows = []
    for count in SCALES:
        target = folder / str(count)
        if not (target / "new.dll").is_file():
            subprocess.run(
                [sys.executable, str(REPO / "bench" / "gen_sample.py"), str(count), str(target)],
                check=True,
            )
        timed = run_worker(repeat, False, [(target / "old.dll", target / "new.dll")])
        rows.append((count, timed[str(target / "old.dll")]["hpatch"]))
    print("| functions | hpatch diff (C core) | per 1,000 functions |")
    print("|---:|---:|---:|")
    for count, taken in rows:
        print(f"| {count} | {taken:.2f} s | {1000 * taken / count:.3f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scaling", type=Path, help="build and diff generated samples here")
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pairs = list(zip(args.paths[::2], args.paths[1::2], strict=True))
        worker(args.repeat, args.reference, pairs)
        return
    corpus_table(args.repeat)
    if args.scaling:
        print()
        scaling_table(args.scaling, args.repeat)


if __name__ == "__main__":
    main()
