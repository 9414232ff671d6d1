"""Package sizes next to the full new binary (zstd) and a bsdiff4 delta of the same pair.

    python bench/bench_package.py [--extra DIR]

For every sample pair of every build (stripped images) and every real-world corpus
pair (with ``--extra DIR``, also those fetched into DIR from bench/realworld-pairs.tsv):
the size of the hpatch package (unsigned; a signature adds 72 bytes), and of its two
compressed streams (metadata, and the region coded against the baseline; the other
38 bytes are header and SHA-256), of the new binary compressed with zstd (level 19),
and of a bsdiff4 delta from the old to the new binary. Blocked pairs (not
hotpatchable) show their first blocker instead of a package size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bsdiff4
import zstandard
from corpus import corpus_pairs

from hpatch.diff import diff_images
from hpatch.errors import NotHotpatchable
from hpatch.image import load_image
from hpatch.package import PackageBlocked, build_package, encode_package
from hpatch.package.format import DIGEST_SIZE, HEADER

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
    """The package's size and its streams' (metadata + region), or why there is none."""
    result = diff_images(load_image(old), load_image(new))
    if result.blockers:
        return None, f"blocked: {result.blockers[0].kind.value} ({len(result.blockers)})"
    try:
        package = build_package(result)
    except PackageBlocked as blocked:
        return None, f"refused: {blocked.blockers[0].reason[:60]} ({len(blocked.blockers)})"
    except NotHotpatchable as nothing:
        return None, str(nothing).split(":")[0]
    size = len(encode_package(package))
    assert package.coding is not None
    region = len(package.coding.region_stream)
    return size, f"{size - HEADER.size - DIGEST_SIZE - region:,} + {region:,} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extra", type=Path, help="a corpus fetched from bench/realworld-pairs.tsv"
    )
    arguments = parser.parse_args()
    pairs = sample_pairs() + corpus_pairs()
    if arguments.extra is not None:
        pairs += corpus_pairs(arguments.extra)
    compressor = zstandard.ZstdCompressor(level=19)
    print(
        "| pair | new binary | zstd(new) | bsdiff4 delta | hpatch package "
        "| metadata + region | package / bsdiff4 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, old, new in pairs:
        old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
        delta = len(bsdiff4.diff(old_bytes, new_bytes))
        packed = len(compressor.compress(new_bytes))
        size, detail = package_size(old, new)
        shown, streams = (f"{size:,} B", detail) if size is not None else (detail, "-")
        ratio = f"{size / delta:.2f}" if size is not None else "-"
        print(
            f"| {name} | {len(new_bytes):,} B | {packed:,} B | {delta:,} B | {shown} "
            f"| {streams} | {ratio} |"
        )


if __name__ == "__main__":
    main()
