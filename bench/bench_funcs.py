"""Time function discovery (``hpatch funcs``) against full parses by pefile and lief.

For every real-world corpus binary (and one sample per build), in one run on one
machine: hpatch's load + function discovery with the C core and with the pure-Python
twin, pefile's full parse (which decodes the x64 exception directory) and lief's full
parse with ``ParserConfig.all`` (which decodes .pdata for both machines). Median of
``--repeat`` runs each.

    python bench/bench_funcs.py [--repeat N]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.repeat)
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
