"""Progress of long work on stderr: a bar on a terminal, one plain line per finished
stage when stderr is a file or a pipe (a build log), nothing with ``-q``.

Long work is what a user waits for: proving and packaging (``diff -o``, ``verify``),
a release, and anything on a large image (discovery of a DLL of a megabyte or more).
Short stages stay silent unless ``-v`` asks for every stage and its time. stdout is
never touched: it holds the report or the JSON document.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click

from hpatch.text import plain

#: An input of this many bytes or more makes its stages long work.
LARGE_INPUT = 1 << 20
QUIET, NORMAL, VERBOSE = -1, 0, 1


@dataclass(frozen=True, slots=True)
class Verbosity:
    """What ``-q``/``-v`` asked for; held by the root command's context."""

    level: int = NORMAL


def verbosity() -> int:
    """The level the command line set (NORMAL outside a command line)."""
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    found = root.obj if root is not None else None
    return found.level if isinstance(found, Verbosity) else NORMAL


class Stage:
    """A stage being timed; ``detail`` completes its line, ``update`` moves its bar."""

    def __init__(self) -> None:
        self.detail = ""
        self._update: Callable[[int, int], None] | None = None

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` items of the stage are finished (a bar on a terminal)."""
        if self._update is not None:
            self._update(done, total)


class Progress:
    """Reports the stages of one command."""

    def __init__(self, command: str, *, long: bool = False) -> None:
        self.command = command
        self.long = long
        self.level = verbosity()
        self.terminal = sys.stderr.isatty()

    def shown(self, long: bool) -> bool:
        return self.level == VERBOSE or (self.level == NORMAL and (long or self.long))

    @contextmanager
    def stage(self, what: str, *, long: bool = False) -> Iterator[Stage]:
        """Time ``what``; report it as it runs (terminal) or when it ends (otherwise).
        The caller may set the yielded stage's ``detail`` (a count) for the line."""
        stage = Stage()
        if not self.shown(long):
            yield stage
            return
        start = time.perf_counter()
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as Bar

            # a transient bar while it runs (pulsing until a total is known); the line
            # after it only with -v
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
            with Bar(
                *columns, MofNCompleteColumn(), console=Console(stderr=True), transient=True
            ) as bar:
                task = bar.add_task(f"{self.command}: {plain(what)}", total=None)
                stage._update = lambda done, total: bar.update(task, completed=done, total=total)
                yield stage
            if self.level != VERBOSE:
                return
        else:
            yield stage
        detail = f": {stage.detail}" if stage.detail else ""
        self.line(f"{what}{detail} ({time.perf_counter() - start:.2f} s)", long=long)

    def line(self, text: str, *, long: bool = False) -> None:
        """One finished step, as a plain line on stderr."""
        if self.shown(long):
            click.echo(f"hpatch: {self.command}: {plain(text)}", err=True)


def large(*paths: str) -> bool:
    """Whether one of these inputs is large enough to make the work long (an input
    that cannot be read says so later, when it is read)."""
    for path in paths:
        try:
            if os.stat(path).st_size >= LARGE_INPUT:
                return True
        except (OSError, ValueError):
            continue
    return False
