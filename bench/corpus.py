"""The real-world pairs fetched by ../shared/corpus/fetch.sh, for the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path


def corpus_pairs(root: Path | None = None) -> list[tuple[str, Path, Path]]:
    """(pair id, old file, new file) for every pair fetched into ``root`` (by default
    $HPCORPUS, else ~/.cache/hpatch-corpus)."""
    if root is None:
        root = Path(os.environ.get("HPCORPUS", Path.home() / ".cache" / "hpatch-corpus"))
    listing = root / "pairs.tsv"
    found = []
    if listing.is_file():
        for line in listing.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) == 4 and Path(fields[2]).is_file() and Path(fields[3]).is_file():
                found.append((fields[0], Path(fields[2]), Path(fields[3])))
    return found
