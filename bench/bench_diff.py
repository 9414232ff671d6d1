"""Time ``hpatch diff`` (load, function discovery, diff) against bsdiff4 on the same files.

    python bench/bench_diff.py [--repeat N] [--scaling DIR]

For every real-world corpus pair: hpatch with the C core and with the pure-Python
twin, and bsdiff4 computing a delta of the same two files, median of N runs, in one
run on one machine. With --scaling DIR: generated libraries of 1,000 to 20,000
functions (bench/gen_sample.py, needs clang and lld-link) diffed with the C core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from corpus import corpus_pairs

REPO = Path(__file__).resolve().parent.parent
SCALES = (1000, 2000, 5000, 10000, 20000)


def median_seconds(action, repeat: int) -> float:  # type: ignore[no-untyped-def]
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def hpatch_diff(old: Path, new: Path) -> None:
    from hpatch.diff import diff_images
    from hpatch.image import load_image

    diff_images(load_image(old.read_bytes()), load_image(new.read_bytes()))


def worker(repeat: int, targets: list[tuple[str, str]]) -> None:
    results = {}
    for old, new in targets:
        results[old] = median_seconds(lambda o=Path(old), n=Path(new): hpatch_diff(o, n), repeat)
    print(json.dumps(results))


def run_worker(repeat: int, pure: bool, targets: list[tuple[Path, Path]]) -> dict[str, float]:
    env = dict(os.environ, HPATCH_PURE_PYTHON="1" if pure else "0")
    command = [sys.executable, __file__, "--worker", "--repeat", str(repeat)]
    command += [str(p) for pair in targets for p in pair]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def corpus_table(repeat: int) -> None:
    import bsdiff4

    found = corpus_pairs()
    targets = [(old, new) for _, old, new in found]
    native, pure = run_worker(repeat, False, targets), run_worker(repeat, True, targets)
    print("| pair | size | hpatch diff (C core) | hpatch diff (pure Python) | bsdiff4 delta |")
    print("|---|---:|---:|---:|---:|")
    for pair_id, old, new in found:
        old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
        reference = median_seconds(lambda a=old_bytes, b=new_bytes: bsdiff4.diff(a, b), repeat)
        print(
            f"| {pair_id} | {len(new_bytes) / 1024:.0f} KiB | {native[str(old)]:.2f} s"
            f" | {pure[str(old)]:.2f} s | {reference:.2f} s |"
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
        seconds = run_worker(repeat, False, [(target / "old.dll", target / "new.dll")])
        rows.append((count, seconds[str(target / "old.dll")]))
    print("| functions | hpatch diff (C core) | per 1,000 functions |")
    print("|---:|---:|---:|")
    for count, seconds in rows:
        print(f"| {count} | {seconds:.2f} s | {1000 * seconds / count:.3f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scaling", type=Path, help="build and diff generated samples here")
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeat, list(zip(args.paths[::2], args.paths[1::2], strict=True)))
        return
    corpus_table(args.repeat)
    if args.scaling:
        print()
        scaling_table(args.scaling, args.repeat)


if __name__ == "__main__":
    main()
