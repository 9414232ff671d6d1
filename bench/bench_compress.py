"""LZMA2 compression time in package building, with the C core and with its twin.

    python bench/bench_compress.py [--extra DIR] [--cves DIR] [--repeat N]

For every sample pair of every build (stripped images), every real-world corpus pair
(with ``--extra DIR``, also those fetched into DIR from bench/realworld-pairs.tsv) and,
with ``--cves DIR``, every pair of the CVE corpus (../shared/cves): the time to build
the package as ``hpatch diff -o --no-verify`` does (read both images, diff, build,
encode; translation validation and emulation excluded), the part of it spent in the
encoder (``lzma2_compress_settings``, which codes the three settings of a small stream
in one call, and ``lzma2_compress``) with the C core and with the pure-Python twin, and
whether the two packages are the same bytes. A call counts once however many settings
it codes. Only the encoder is switched; every other native function stays the C
core's. Times are CPU time of the process (the machine this ran on is
shared, and wall time there measures the neighbours as much as the code); the
compression time is the least of ``--repeat`` builds (default 3) after the diff, and
its share of the build the median of the shares within each build. A pair that is not
hotpatchable shows why instead.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_package import sample_pairs
from corpus import corpus_pairs

from hpatch import _backend, _fallback, _native
from hpatch.diff import DiffResult, diff_images
from hpatch.errors import NotHotpatchable
from hpatch.image import load_image
from hpatch.package import PackageBlocked, build_package, encode_package
from hpatch.package.format.dictionary import compress_metadata

HOTPATCHABLE = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"))


ENCODER = ("lzma2_compress", "lzma2_compress_settings")


class Timed:
    """Stand-ins for the encoder's entry points that add up the time spent in them."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args)
            finally:
                self.seconds += time.process_time() - start
                self.calls += 1

        return timed


def build(result: DiffResult, core: ModuleType) -> tuple[bytes, float, float, int]:
    """(package, seconds to build and encode it, seconds of them compressing, calls),
    with the encoder of ``core``."""
    timed = Timed()
    originals = {name: getattr(_backend.core, name) for name in ENCODER}
    for name in ENCODER:
        setattr(_backend.core, name, timed.wrap(getattr(core, name)))
    compress_metadata.cache_clear()  # each build compresses its own
    try:
        start = time.process_time()
        data = encode_package(build_package(result))
        seconds = time.process_time() - start
    finally:
        for name, function in originals.items():
            setattr(_backend.core, name, function)
    return data, seconds, timed.seconds, timed.calls


def cve_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    listing = root / "pairs.tsv"
    found = []
    for line in listing.read_text().splitlines() if listing.is_file() else []:
        fields = line.split("\t")
        if len(fields) >= 4 and Path(fields[2]).is_file() and Path(fields[3]).is_file():
            found.append((fields[0], Path(fields[2]), Path(fields[3])))
    return found


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def measure(name: str, old: Path, new: Path, repeat: int) -> str:
    start = time.process_time()
    result = diff_images(load_image(old), load_image(new))
    diff_seconds = time.process_time() - start
    if result.blockers:
        return f"| {name} | blocked: {result.blockers[0].kind.value} | | | | | | |"
    runs: dict[str, list[tuple[bytes, float, float, int]]] = {"c": [], "py": []}
    try:
        for _ in range(repeat):
            runs["c"].append(build(result, _native))
        runs["py"].append(build(result, _fallback))
    except PackageBlocked as blocked:
        return f"| {name} | refused ({len(blocked.blockers)} blockers) | | | | | | |"
    except NotHotpatchable as nothing:
        return f"| {name} | {str(nothing).split(':')[0]} | | | | | | |"
    package = runs["c"][0][0]
    same = all(run[0] == package for run in runs["c"] + runs["py"])
    c_total = diff_seconds + min(run[1] for run in runs["c"])
    c_compress = min(run[2] for run in runs["c"])
    c_share = statistics.median(run[2] / (diff_seconds + run[1]) for run in runs["c"])
    _, py_build, py_compress, calls = runs["py"][0]
    py_total = diff_seconds + py_build
    return (
        f"| {name} | {len(package):,} B | {'yes' if same else 'NO'} | {calls} "
        f"| {ms(c_compress)} ms ({c_share:.1%}) "
        f"| {ms(py_compress)} ms ({py_compress / py_total:.1%}) "
        f"| {py_compress / c_compress:,.0f}x | {ms(c_total)} ms |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=Path, help="a corpus fetched from realworld-pairs.tsv")
    parser.add_argument("--cves", type=Path, help="the CVE corpus (../shared/cves)")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    assert _backend.BACKEND == "native", "the C core is needed for the comparison"
    pairs = [
        pair
        for pair in sample_pairs()
        if any(pair[0].endswith(f" {old}->{new}") for old, new in HOTPATCHABLE)
    ]
    pairs += corpus_pairs()
    if arguments.extra is not None:
        pairs += corpus_pairs(arguments.extra)
    if arguments.cves is not None:
        pairs += cve_pairs(arguments.cves)
    print(f"machine: {platform.machine()} {platform.processor()} {platform.python_version()}")
    print(
        "| pair | package | same bytes | compress calls | C: compress (of build) "
        "| Python: compress (of build) | speed-up | build with C |"
    )
    print("|---|---:|:---:|---:|---:|---:|---:|---:|")
    for name, old, new in pairs:
        print(measure(name, old, new, arguments.repeat), flush=True)


if __name__ == "__main__":
    main()
