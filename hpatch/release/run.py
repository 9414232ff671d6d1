"""Servicing every pair of a release: one task per pair, on a local process pool or
a Dask cluster (``cluster``).

A task reads its two files, diffs them and builds and proves the package as
``hpatch diff -o`` does; it returns plain data (the manifest entry, the unsigned
package, its timings) and writes nothing. The caller signs, encodes and writes, so
every executor gives the same outputs, in the order of the paths, whatever the order
tasks finish in.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from hpatch.errors import HPatchError
from hpatch.files import MAX_IMAGE_FILE, read_input
from hpatch.package import PackageBlocked
from hpatch.release.outcome import (
    Outcome,
    Settings,
    Status,
    Task,
    died_outcome,
    failed_outcome,
    new_entry,
)
from hpatch.release.pairing import Pair
from hpatch.text import file_name, plain


def service_pair(pair: Pair, settings: Settings) -> Outcome:
    """Handle one pair; never raises for a bad input: the error becomes the entry."""
    if pair.error is not None:
        return Outcome(new_entry(pair.path, Status.ERROR) | {"error": pair.error})
    try:
        return _service(pair, settings)
    except HPatchError as exc:
        message = plain(exc)
    except Exception as exc:  # a bug, not bad input: recorded, and the run goes on
        message = f"internal error: {type(exc).__name__}: {plain(exc)}"
    side = pair.new or pair.old
    machine = side.machine if side is not None else None
    return Outcome(new_entry(pair.path, Status.ERROR, machine) | {"error": message})


def _service(pair: Pair, settings: Settings) -> Outcome:
    from hpatch.diff import Status as Change
    from hpatch.diff import diff_images
    from hpatch.image import load_image
    from hpatch.report import blocker_dict

    old, new = pair.old, pair.new
    if old is None or new is None:
        only = new or old
        assert only is not None
        status = Status.ADDED if old is None else Status.REMOVED
        entry = new_entry(pair.path, status, only.machine)
        digest = hashlib.sha256(read_input(only.location, MAX_IMAGE_FILE, "PE image"))
        entry["new_sha256" if old is None else "old_sha256"] = digest.hexdigest()
        return Outcome(entry)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    old_bytes = read_input(old.location, MAX_IMAGE_FILE, "PE image")
    new_bytes = read_input(new.location, MAX_IMAGE_FILE, "PE image")
    entry = new_entry(pair.path, Status.UNCHANGED, new.machine)
    entry["old_sha256"] = hashlib.sha256(old_bytes).hexdigest()
    entry["new_sha256"] = hashlib.sha256(new_bytes).hexdigest()
    if old_bytes == new_bytes:
        entry["identical"] = True
        timings["read"] = time.perf_counter() - started
        return Outcome(entry, None, timings)
    # Parsed from the bytes just hashed: the digests name exactly what was diffed.
    old_image = load_image(old_bytes, name=file_name(old.location))
    new_image = load_image(new_bytes, name=file_name(new.location))
    timings["read"] = time.perf_counter() - started
    started = time.perf_counter()
    result = diff_images(old_image, new_image)
    timings["diff"] = time.perf_counter() - started
    entry["identical"] = False
    entry["functions"] = result.summary()
    if not result.hotpatchable:
        entry["status"] = Status.BLOCKED
        entry["blockers"] = [blocker_dict(b) for b in result.blockers]
        return Outcome(entry, None, timings)
    if not (result.with_status(Change.MODIFIED) or result.with_status(Change.ADDED)):
        return Outcome(entry, None, timings)  # bytes differ, no function does
    # Proving runs the emulator: imported only by the tasks that need it.
    from hpatch.verify import build_verified_package

    started = time.perf_counter()
    try:
        package, _ = build_verified_package(
            result,
            settings.options,
            validate=True,
            inputs=settings.inputs if settings.emulate else 0,
        )
    except PackageBlocked as blocked:
        entry["status"] = Status.BLOCKED
        entry["blockers"] = [blocker_dict(b) for b in blocked.blockers]
        return Outcome(entry, None, timings)
    finally:
        timings["build"] = time.perf_counter() - started
    entry["status"] = Status.PACKAGED
    return Outcome(entry, package, timings)


def _pool(
    indices: list[int],
    pairs: list[Pair],
    settings: Settings,
    jobs: int,
    task: Task,
    done: Callable[[int, Outcome], None],
) -> list[int]:
    """Run ``indices`` on one pool; the indices lost because a worker process died."""
    lost = []
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(indices)))) as pool:
        futures: dict[Future[Outcome], int] = {
            pool.submit(task, pairs[index], settings): index for index in indices
        }
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcome = future.result()
            except BrokenProcessPool:
                lost.append(index)
                continue
            except Exception as exc:  # a result or an argument that would not pickle
                outcome = failed_outcome(pairs[index], exc)
            done(index, outcome)
    return sorted(lost)


def run_pairs(
    pairs: list[Pair],
    settings: Settings,
    jobs: int,
    finished: Callable[[int, Outcome], None] | None = None,
    task: Task = service_pair,
    scheduler: str | None = None,
) -> list[Outcome]:
    """Service every pair on a pool of ``jobs`` processes, or on the Dask cluster whose
    scheduler is at ``scheduler`` (``jobs`` is then unused); ``task`` does one pair.
    The outcomes in the order of ``pairs``. ``finished(index, outcome)`` is called as
    each task ends.

    A worker process that dies (a crash in a native library) breaks its pool and every
    task still in it: those tasks run again, each alone in a fresh process, so only the
    pair that kills its worker becomes an error, not the run or its neighbours.
    """
    outcomes: list[Outcome | None] = [None] * len(pairs)

    def done(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if finished is not None:
            finished(index, outcome)

    if scheduler is not None:
        # Dask is an optional extra: imported only when a cluster is asked for.
        from hpatch.release.cluster import run_on_cluster

        run_on_cluster(list(range(len(pairs))), pairs, settings, scheduler, task, done)
        return [o for o in outcomes if o is not None]
    lost = _pool(list(range(len(pairs))), pairs, settings, jobs, task, done) if pairs else []
    for index in lost:
        if _pool([index], pairs, settings, 1, task, done):
            done(index, died_outcome(pairs[index]))
    return [o for o in outcomes if o is not None]


def default_jobs() -> int:
    """The CPU count, as the local executor's default."""
    return os.cpu_count() or 1
