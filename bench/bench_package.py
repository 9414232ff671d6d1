"""Package sizes next to the full new binary (zstd) and a bsdiff4 delta of the same pair.

    python bench/bench_package.py

For every sample pair of every build (stripped images) and every real-world corpus
pair: the size of the hpatch package (unsigned; a signature adds 72 bytes), of the
new binary compressed with zstd (level 19), and of a bsdiff4 delta from the old to
the new binary. Blocked pairs (not hotpatchable) show their first blocker instead of a
package size.
"""

from __future__ import annotations

from pathlib import Path

import bsdiff4
import zstandard
from corpus import corpus_pairs

from hpatch.diff import diff_images
from hpatch.image import load_image
from hpatch.package import PackageBlocked, build_package, encode_package

REPO = Path(__file__).resolve().parent.parent
BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")
PAIRS = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"), ("v1", "v4"))


def sample_pairs() -> list[tuple[str, Path, Path]]:
    found = []
    for build in BUILDS:
        for old, new in PAIRS:
            root = REPO / "samples" / "bin" / build
            found.append(
                (
                    f"{build} {old}->{new}",
                    root / old / "sample.stripped.dll",
                    root / new / "sample.stripped.dll",
                )
            )
    return found


def package_size(old: Path, new: Path) -> tuple[int | None, str]:
    result = diff_images(load_image(old), load_image(new))
    if result.blockers:
        return None, f"blocked: {result.blockers[0].kind.value} ({len(result.blockers)})"
    try:
        return len(encode_package(build_package(result))), ""
    except PackageBlocked as blocked:
        return None, f"refused: {blocked.blockers[0].reason[:60]} ({len(blocked.blockers)})"


def main() -> None:
    compressor = zstandard.ZstdCompressor(level=19)
    print("| pair | new binary | zstd(new) | bsdiff4 delta | hpatch package | package / bsdiff4 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, old, new in sample_pairs() + corpus_pairs():
        old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
        delta = len(bsdiff4.diff(old_bytes, new_bytes))
        packed = len(compressor.compress(new_bytes))
        size, why = package_size(old, new)
        shown = f"{size:,} B" if size is not None else why
        ratio = f"{size / delta:.2f}" if size is not None else "-"
        print(f"| {name} | {len(new_bytes):,} B | {packed:,} B | {delta:,} B | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
