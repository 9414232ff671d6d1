"""Shared fixtures: the bundled sample DLLs, their ground truth, and the optional corpus."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import hpatch

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "bin"
BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")
VERSIONS = ("v1", "v2", "v3", "v4")


@dataclass(frozen=True)
class TruthRow:
    name: str
    rva: int
    size: int
    parent: str


def read_truth(path: Path) -> list[TruthRow]:
    """Rows of a ``sample.funcs.tsv`` ground-truth file."""
    rows = []
    lines = path.read_text().splitlines()
    assert lines[0].split("\t")[:3] == ["name", "rva", "size"]
    for line in lines[1:]:
        fields = line.split("\t")
        parent = fields[3] if len(fields) > 3 else ""
        rows.append(TruthRow(fields[0], int(fields[1], 16), int(fields[2]), parent))
    return rows


def sample_dirs() -> list[Path]:
    return [SAMPLES / build / version for build in BUILDS for version in VERSIONS]


def sample_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.fixture(params=sample_dirs(), ids=sample_id)
def sample_dir(request: pytest.FixtureRequest) -> Path:
    return request.param


def corpus_binaries() -> list[tuple[str, str, Path]]:
    """(pair id, arch, path) for every binary of the fetched real-world corpus."""
    root = Path(os.environ.get("HPCORPUS", Path.home() / ".cache" / "hpatch-corpus"))
    listing = root / "pairs.tsv"
    if not listing.is_file():
        return []
    found = []
    for line in listing.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 4:
            for path in fields[2:]:
                if Path(path).is_file():
                    found.append((fields[0], fields[1], Path(path)))
    return found


def pytest_report_header(config: pytest.Config) -> str:
    corpus = corpus_binaries()
    return f"hpatch backend: {hpatch.BACKEND}; real-world corpus: " + (
        f"{len(corpus)} binaries" if corpus else "absent (run ../shared/corpus/fetch.sh)"
    )


@dataclass(frozen=True)
class CvePair:
    """One pair of the CVE corpus (../shared/cves): stripped DLLs and their ground truth."""

    pair_id: str
    arch: str
    old: Path
    new: Path
    truth: Path
    kind: str


def cve_root() -> Path:
    return Path(os.environ.get("HPCVES", Path.home() / ".cache" / "hpatch-cves"))


def cve_extra_root() -> Path:
    """The second CVE corpus (tests/cves/extra/build.sh): libraries hpatch was not
    developed against."""
    return Path(os.environ.get("HPCVES_EXTRA", Path.home() / ".cache" / "hpatch-cves-extra"))


def cve_pairs() -> list[CvePair]:
    """Every pair of the built CVE corpora whose files are present (none when not built)."""
    pairs = []
    for root in (cve_root(), cve_extra_root()):
        listing = root / "pairs.tsv"
        if not listing.is_file():
            continue
        for line in listing.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) != 6:
                continue
            pair = CvePair(fields[0], fields[1], *(Path(f) for f in fields[2:5]), fields[5])
            if pair.old.is_file() and pair.new.is_file() and pair.truth.is_file():
                pairs.append(pair)
    return pairs


CVE_ABSENT = "CVE corpus absent: build it with ../shared/cves/build.sh (make cves does)"
