"""Resident memory of ``hpatch -q diff --json OLD NEW`` as each of its stages ends.

    python bench/diff_memory_stages.py OLD NEW > /dev/null

Runs the command in this process and prints, to stderr, the resident size
(``/proc/self/statm``) and the peak so far (``ru_maxrss``) as each progress stage of
``hpatch diff`` ends (reading each image, discovering the functions, the diff), then
once the JSON document is written. Linux only. Run it from the tree to measure (with
PYTHONPATH pointing at it too): ``python -m``-style path order would pick another one.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from typing import Any

import hpatch.cli.progress as progress
from hpatch.cli import main

_MIB = 1 << 20


def _line(what: str) -> None:
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * resource.getpagesize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"{what:40s} {resident / _MIB:6.0f} MiB {peak / _MIB:6.0f} MiB", file=sys.stderr)


def _measured(stage: Any) -> Any:
    @contextlib.contextmanager
    def measured(self: progress.Progress, what: str, **options: Any) -> Iterator[Any]:
        with stage(self, what, **options) as found:
            yield found
        _line(what)

    return measured


def run(old: str, new: str) -> None:
    """``hpatch -q diff --json old new``, with a line of memory figures per stage."""
    print(f"{'stage':40s} {'resident':>10s} {'peak':>10s}", file=sys.stderr)
    _line("start")
    progress.Progress.stage = _measured(progress.Progress.stage)  # type: ignore[method-assign]
    try:
        main(["-q", "diff", "--json", old, new])
    except SystemExit:
        pass
    finally:
        _line("the JSON document written")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    run(sys.argv[1], sys.argv[2])
