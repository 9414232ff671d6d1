"""The ``hpatch`` command line: each command calls the API and formats the result.

One module per command; a command's module, and what it needs (capstone, Unicorn,
cryptography), is imported only when that command runs, so ``hpatch --help``
and ``hpatch --version`` start as fast as click does.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from hpatch import BACKEND, __version__
from hpatch.cli.output import EXIT_ERROR, EXIT_OK, error_fields, print_json, was_reported
from hpatch.cli.progress import NORMAL, QUIET, VERBOSE, Verbosity
from hpatch.errors import HPatchError
from hpatch.text import plain


@dataclass(frozen=True, slots=True)
class CommandEntry:
    """Where a command lives, and the summary ``hpatch --help`` shows without loading it."""

    name: str
    module: str
    attribute: str
    summary: str
    schema: str | None  # the schema of its --json document, named on failure too


#: The commands in workflow order: look at a build, diff two, prove, sign, inspect,
#: apply, then a whole release. ``tests/test_cli.py`` checks each summary against the
#: command's own docstring.
COMMANDS = (
    CommandEntry(
        "info",
        "hpatch.cli.images",
        "info",
        "Show IMAGE's identity, sections, imports and exports.",
        "hpatch.info/1",
    ),
    CommandEntry(
        "funcs",
        "hpatch.cli.images",
        "funcs",
        "List the functions of IMAGE: RVA, size, name and the evidence for each.",
        "hpatch.funcs/1",
    ),
    CommandEntry(
        "diff",
        "hpatch.cli.diff",
        "diff",
        "Diff two builds of a PE image function by function; exit 3 if not hotpatchable.",
        "hpatch.diff/2",
    ),
    CommandEntry(
        "verify",
        "hpatch.cli.verify",
        "verify_command",
        "Prove PKG turns OLD into NEW: translation validation and differential emulation.",
        "hpatch.verify/1",
    ),
    CommandEntry(
        "keygen",
        "hpatch.cli.keygen",
        "keygen",
        "Create an Ed25519 signing key: KEY (private) and KEY.pub (public).",
        None,
    ),
    CommandEntry(
        "inspect",
        "hpatch.cli.inspect",
        "inspect",
        "Show what a hotpatch package holds; works without the target image.",
        "hpatch.inspect/1",
    ),
    CommandEntry(
        "apply",
        "hpatch.cli.apply",
        "apply_command",
        "Load IMAGE into an emulated process and apply each PKG in order.",
        "hpatch.apply/2",
    ),
    CommandEntry(
        "release",
        "hpatch.cli.release",
        "release",
        "Service a whole release: every PE file of OLD_DIR and NEW_DIR, paired by path.",
        "hpatch.release/1",
    ),
)
_BY_NAME = {entry.name: entry for entry in COMMANDS}

EPILOG = (
    "Exit codes, the same for every command: 0 success; 1 bad input or error; 2 usage; "
    "3 not hotpatchable; 4 verification failed; 5 nothing to package; 6 refused by a "
    "check. Every command documents its --json document's schema. See docs/cli.md."
)


class LazyGroup(click.Group):
    """A group whose commands are imported when one is invoked, not before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [entry.name for entry in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _BY_NAME.get(cmd_name)
        if entry is None:
            return None
        command = getattr(importlib.import_module(entry.module), entry.attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The summaries come from the table: listing them loads no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(entry.name, entry.summary) for entry in COMMANDS])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EPILOG,
)
@click.version_option(__version__, message=f"hpatch %(version)s ({BACKEND} core)")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr, only errors.")
@click.option("-v", "--verbose", is_flag=True, help="Every stage and its time on stderr.")
@click.pass_context
def cli(context: click.Context, quiet: bool, verbose: bool) -> None:
    """Hotpatch Windows PE binaries (x64 and ARM64).

    Long work (proving, packaging, a release, a large image) reports its progress on
    stderr: a spinner on a terminal, one line per finished stage otherwise.
    """
    if quiet and verbose:
        raise click.UsageError("give -q or -v, not both")
    context.obj = Verbosity(QUIET if quiet else VERBOSE if verbose else NORMAL)


def _json_command(argv: list[str]) -> CommandEntry | None:
    """The command ``argv`` runs when it asks for --json, else None."""
    if "--json" not in argv:
        return None
    for word in argv:
        if not word.startswith("-"):
            return _BY_NAME.get(word)
    return None


def _failed(exc: BaseException, argv: list[str]) -> int:
    """Report a failure: one line on stderr, and with --json one error document on
    stdout (unless the command printed its own); returns the exit code."""
    error = error_fields(exc)
    if isinstance(exc, click.ClickException):
        vars(exc)["message"] = plain(exc.message)  # escaped, as every message from an input
        exc.show()
    elif isinstance(exc, HPatchError):
        # Messages quote names and paths from the inputs: shown escaped, as everywhere.
        click.echo(f"hpatch: error: {error['message']}", err=True)
    else:
        click.echo(
            f"hpatch: internal error: {type(exc).__name__}: {error['message']} "
            "(set HPATCH_DEBUG=1 for a traceback)",
            err=True,
        )
    entry = _json_command(argv)
    if entry is not None and entry.schema is not None and not was_reported(exc):
        print_json({"schema": entry.schema, "hpatch_version": __version__, "error": error})
    return int(error["exit_code"])


def _run(command: Callable[..., Any], argv: list[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        returned = command.main(args=argv, prog_name="hpatch", standalone_mode=False)  # type: ignore[attr-defined]
    except click.exceptions.Abort:
        click.echo("hpatch: aborted", err=True)
        return EXIT_ERROR
    except (click.ClickException, HPatchError) as exc:
        return _failed(exc, words)
    except Exception as exc:  # a bug, not bad input: say so without a traceback
        if os.environ.get("HPATCH_DEBUG"):
            raise
        return _failed(exc, words)
    return returned if isinstance(returned, int) else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from hpatch.allocator import give_back_freed_blocks

    give_back_freed_blocks()
    sys.exit(_run(cli, argv))
