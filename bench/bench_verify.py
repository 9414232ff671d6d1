"""Emulated function calls per second of ``hpatch verify`` on the largest packages.

    python bench/bench_verify.py [--inputs N] [--repeat R]

For each pair (the largest hotpatchable packages of the public corpus and the CVE
corpus, when fetched and built): the diff and the package are made once, then
``verify_package`` runs R times (median); each input set is one call of the patched
function in the old image with the package applied and one in the new build, so the
calls are twice the input sets tried. Imports, the diff and building the package are
not timed: this is the emulation's throughput, the part that grows with the package.
Calls per second are given by wall-clock time and by the process's CPU time, which a
shared machine's other jobs disturb less (they still share its caches).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from corpus import corpus_pairs

CVES = Path(os.environ.get("HPCVES", Path.home() / ".cache" / "hpatch-cves"))
EXTRA = Path(os.environ.get("HPCORPUS_EXTRA", Path.home() / ".cache" / "hpatch-corpus-extra"))
#: The CVE pairs with the most patched functions, one per build, and sqlite3's largest.
CVE_PAIRS = (
    "sqlite3-x64-clang-hp-v0-v1",
    "sqlite3-x64-clang-v0-v1",
    "sqlite3-x64-gcc-v0-v1",
    "sqlite3-arm64-clang-v0-v1",
)
PUBLIC_PAIRS = (
    "psutil-7.1.2-7.1.3-win_amd64-_psutil_windows.pyd",
    "cffi-1.17.0-1.17.1-win_amd64-_cffi_backend._.pyd",
)


def pairs() -> list[tuple[str, Path, Path]]:
    found = []
    listing = CVES / "pairs.tsv"
    if listing.is_file():
        rows = {line.split("\t")[0]: line.split("\t") for line in listing.read_text().splitlines()}
        found += [
            (name, Path(rows[name][2]), Path(rows[name][3])) for name in CVE_PAIRS if name in rows
        ]
    public = {name: (old, new) for name, old, new in corpus_pairs() + corpus_pairs(EXTRA)}
    found += [(name, *public[name]) for name in PUBLIC_PAIRS if name in public]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from hpatch.diff import diff_images
    from hpatch.image import load_image
    from hpatch.package import BuildOptions, build_package
    from hpatch.verify import verify_package

    print(
        f"| pair | functions | calls | seconds (median of {args.repeat}) | calls/s "
        "| CPU seconds | calls/CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, old_path, new_path in pairs():
        old, new = load_image(old_path.read_bytes()), load_image(new_path.read_bytes())
        result = diff_images(old, new)
        if not result.hotpatchable:
            print(f"| {name} | not hotpatchable | | | |")
            continue
        package = build_package(result, BuildOptions(1, None, "", ""))
        times, cpu_times, calls = [], [], 0
        for _ in range(args.repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            report = verify_package(result, package, inputs=args.inputs)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            calls = 2 * sum(f.emulation.tried for f in report.functions)
        seconds, cpu_seconds = statistics.median(times), statistics.median(cpu_times)
        print(
            f"| {name} | {len(report.functions)} | {calls:,} | {seconds:.2f} | "
            f"{calls / seconds:,.0f} | {cpu_seconds:.2f} | {calls / cpu_seconds:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
