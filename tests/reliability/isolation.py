"""Running a campaign in a child process, so that no case can take the run down.

The child records which case it is on in shared memory before running it, and its
tally in a file as it goes. The parent watches: a child that dies (a crash in lief,
Unicorn or the C core), stops making progress for ``hang_seconds`` (a hang inside a C
call, which the in-process alarm cannot interrupt), or grows past ``memory_mib`` of
resident memory is killed; the case it was on is made again from the seed, saved to
the corpus, counted, and a new child goes on from the next case. (Address-space limits
cannot bound memory here: every Unicorn engine reserves a gigabyte of address space.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

from .campaigns import campaign
from .corpus import CORPUS, save
from .harness import HANG_SECONDS, Tally, drive, make_case

MEMORY_MIB = 2048
_SAVE_EVERY = 0.5  # seconds between the child's tally files


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child(
    name: str,
    seed: str,
    count: int | None,
    seconds: float | None,
    start: int,
    progress: object,
    result: str,
    with_corpus: bool,
    corpus_root: str,
    abort_at: int | None,
) -> None:
    saved_at = [0.0]

    def on_case(index: int) -> None:
        progress.value = index  # type: ignore[attr-defined]
        if index == abort_at:
            os.abort()  # what a crash in native code looks like (the harness's own test)

    def on_tally(tally: Tally, force: bool = False) -> None:
        if force or time.monotonic() - saved_at[0] > _SAVE_EVERY:
            tally.peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            Path(result).write_text(json.dumps(tally.to_json()))
            saved_at[0] = time.monotonic()

    tally = drive(
        campaign(name, with_corpus),
        seed,
        count=count,
        seconds=seconds,
        start=start,
        on_case=on_case,
        on_failure=lambda case, failure: save(case, failure, Path(corpus_root)),
        on_tally=on_tally,
    )
    on_tally(tally, force=True)
    progress.value = -1  # type: ignore[attr-defined]


def isolated(
    name: str,
    seed: str,
    *,
    count: int | None = None,
    seconds: float | None = None,
    with_corpus: bool = False,
    corpus_root: Path = CORPUS,
    memory_mib: int = MEMORY_MIB,
    hang_seconds: float = HANG_SECONDS + 10,
    abort_at: int | None = None,
) -> Tally:
    """Run ``count`` cases (or for ``seconds``) of campaign ``name`` in child processes."""
    context = multiprocessing.get_context("spawn")
    total = Tally(name)
    start = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as scratch:
        while True:
            left_count = None if count is None else count - start
            left_seconds = None if deadline is None else deadline - time.monotonic()
            if (left_count is not None and left_count <= 0) or (
                left_seconds is not None and left_seconds <= 0
            ):
                return total
            result = Path(scratch) / f"tally-{start}.json"
            progress = context.Value("q", start)
            arguments = (name, seed, left_count, left_seconds, start, progress, str(result))
            child = context.Process(
                target=_child, args=(*arguments, with_corpus, str(corpus_root), abort_at)
            )
            child.start()
            failure = _watch(child, progress, memory_mib, hang_seconds)
            part = Tally(name)
            if result.exists():
                part = Tally.from_json(json.loads(result.read_text()))
            total.merge(part)
            if failure is None and child.exitcode == 0 and progress.value == -1:
                return total
            index = progress.value
            # Cases the child finished after it last wrote its tally: run, outcome unknown.
            lost = index - start - part.executions
            if lost > 0:
                total.executions += lost
                total.outcomes["not recorded (the child was killed)"] += lost
            reason = failure or f"crash: exit code {child.exitcode}"
            _save_in_child(context, name, seed, index, with_corpus, corpus_root, reason)
            total.executions += 1
            if failure is not None and failure.startswith("memory"):
                total.memory += 1
            elif failure is not None:
                total.hangs += 1
            else:
                total.crashes += 1
            start = index + 1


def _save_case(
    name: str, seed: str, index: int, with_corpus: bool, corpus_root: str, reason: str
) -> None:
    save(make_case(campaign(name, with_corpus), seed, index), reason, Path(corpus_root))


def _save_in_child(
    context: multiprocessing.context.SpawnContext,
    name: str,
    seed: str,
    index: int,
    with_corpus: bool,
    corpus_root: Path,
    reason: str,
) -> None:
    """Make the failing case again and save it, in a child of its own: making it may be
    what failed (a mutator that ran away), and must not take the run down with it."""
    arguments = (name, seed, index, with_corpus, str(corpus_root), reason)
    child = context.Process(target=_save_case, args=arguments)
    child.start()
    _watch(child, context.Value("q", index), MEMORY_MIB, HANG_SECONDS)


def _watch(
    child: multiprocessing.process.BaseProcess,
    progress: object,
    memory_mib: int,
    hang_seconds: float,
) -> str | None:
    """Wait for ``child``; kill it and say why if it hangs or grows too large."""
    last, since = -2, time.monotonic()
    while child.is_alive():
        child.join(0.2)
        index = progress.value  # type: ignore[attr-defined]
        if index != last:
            last, since = index, time.monotonic()
        failure = None
        rss = _rss_kib(child.pid or 0)
        if rss > memory_mib * 1024:
            failure = f"memory: {rss // 1024} MiB resident"
        elif index >= 0 and time.monotonic() - since > hang_seconds:
            failure = f"hang: no progress for {hang_seconds:.0f} s"
        if failure is not None:
            child.kill()
            child.join()
            return failure
    return None
