"""Time ``hpatch release`` over the public corpus and the samples: 1 job, 2 jobs, and a
Dask LocalCluster of two worker processes.

    python bench/bench_release.py [--no-emulate] [--inputs N] [--only SUBSTRING ...]

Two release trees are built in a temporary directory from every fetched public pair
(~/.cache/hpatch-corpus and ~/.cache/hpatch-corpus-extra, as hard links, else copies:
a release does not follow symbolic links) and from the samples (per build, v1 to v3:
packaged; v1 to v4: blocked; v1 to v1: unchanged). Each configuration is one whole
``hpatch release`` process, run once; wall time, and CPU time (user + system) of
every process that worked for it: the command and its pool's processes (reaped
children), or for the cluster the command, the two worker processes and this
process, which holds the scheduler and the nannies. The cluster is started and its
workers have imported hpatch before the clock starts, as a long-lived cluster has;
its start-up is shown apart. The three manifests must be byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corpus import corpus_pairs

REPO = Path(__file__).resolve().parent.parent
HPATCH = str(Path(sys.executable).with_name("hpatch"))
BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")
SAMPLE = "sample.stripped.dll"


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system: a copy
        shutil.copyfile(source, target)


def build_trees(root: Path, only: list[str]) -> tuple[Path, Path, int]:
    """OLD and NEW trees under ``root``; the number of pairs."""
    old, new = root / "old", root / "new"
    pairs: list[tuple[str, Path, Path]] = []
    home = Path.home() / ".cache"
    for tree, corpus_root in (("corpus", "hpatch-corpus"), ("extra", "hpatch-corpus-extra")):
        for name, old_file, new_file in corpus_pairs(home / corpus_root):
            pairs.append((f"{tree}/{name}", old_file, new_file))
    samples = REPO / "samples" / "bin"
    for build in BUILDS:
        base = samples / build / "v1" / SAMPLE
        for name, version in (("sample.dll", "v3"), ("data.dll", "v4"), ("same.dll", "v1")):
            pairs.append((f"samples/{build}/{name}", base, samples / build / version / SAMPLE))
    if only:
        pairs = [p for p in pairs if any(word in p[0] for word in only)]
    for path, old_file, new_file in pairs:
        _place(old_file, old / path)
        _place(new_file, new / path)
    return old, new, len(pairs)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _warm() -> int:
    """Run on each worker: what a task imports, imported; the worker's pid."""
    import hpatch.diff
    import hpatch.release
    import hpatch.verify  # noqa: F401

    return os.getpid()


def run_release(
    args: list[str], out: Path, extra_cpu: Callable[[], float] | None = None
) -> dict[str, Any]:
    """One whole ``hpatch release`` process: wall and CPU seconds, manifest digest."""
    command = [HPATCH, "release", *args, "-o", str(out)]
    cpu_before, self_before = _children_cpu(), _self_cpu()
    extra_before = extra_cpu() if extra_cpu else 0.0
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if extra_cpu:
        cpu += extra_cpu() - extra_before + _self_cpu() - self_before
    if done.returncode not in (0, 1) or not (out / "release.json").is_file():
        sys.exit(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr}")
    manifest = (out / "release.json").read_bytes()
    summary = json.loads(manifest)["summary"]
    return {
        "wall": wall,
        "cpu": cpu,
        "exit": done.returncode,
        "summary": summary,
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-emulate", action="store_true")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--only", nargs="*", default=[], help="pairs whose path holds one")
    options = parser.parse_args()

    import distributed
    import psutil  # type: ignore[import-untyped]  # installed with distributed, no stubs

    work = Path(tempfile.mkdtemp(prefix="hpatch-bench-release-"))
    try:
        old, new, count = build_trees(work, options.only)
        size = sum(f.stat().st_size for f in (*old.rglob("*"), *new.rglob("*")) if f.is_file())
        common = [str(old), str(new), "--inputs", str(options.inputs)]
        if options.no_emulate:
            common.append("--no-emulate")
        results: dict[str, dict[str, Any]] = {}
        for jobs in (1, 2):
            results[f"--jobs {jobs}"] = run_release(
                [*common, "--jobs", str(jobs)], work / f"j{jobs}"
            )
        started = time.perf_counter()
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
                local_directory=str(work / "dask"),
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            workers = [psutil.Process(pid) for pid in client.run(_warm).values()]
            startup = time.perf_counter() - started

            def workers_cpu() -> float:
                return sum(sum(w.cpu_times()[:2]) for w in workers)

            results["LocalCluster, 2 workers"] = run_release(
                [*common, "--scheduler", cluster.scheduler_address], work / "cluster", workers_cpu
            )
        digests = {r["manifest_sha256"] for r in results.values()}
        print(
            f"{count} pairs, {size / 2**20:.1f} MiB in both trees; "
            f"{'--no-emulate' if options.no_emulate else f'--inputs {options.inputs}'}; "
            f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}"
        )
        print(f"summary: {next(iter(results.values()))['summary']}")
        print(f"manifests identical: {len(digests) == 1}")
        print(f"LocalCluster start-up and warm-up (not in the table): {startup:.1f} s")
        print()
        print("| executor | wall | CPU (user + system) | exit |")
        print("|---|---:|---:|---:|")
        for name, result in results.items():
            print(f"| {name} | {result['wall']:.1f} s | {result['cpu']:.1f} s | {result['exit']} |")
        if len(digests) != 1:
            sys.exit("the manifests differ")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
