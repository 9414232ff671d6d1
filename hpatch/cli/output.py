"""What every command shares: exit codes, the console, JSON on stdout, the servicing
options of ``diff -o`` and ``release``. Imports nothing heavy: ``hpatch --help`` loads it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpatch.errors import CheckRefused, HPatchError
from hpatch.text import json_text, markup, plain

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_HOTPATCHABLE = 3
EXIT_CHECK_FAILED = 4
EXIT_NOTHING_TO_PACKAGE = 5
EXIT_REFUSED = 6
MAX_SEQUENCE = 0xFFFFFFFF


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A failure as the ``error`` object of a ``--json`` document: a stable ``code``
    (``usage``, ``refused``, ``internal``, or the error's kind, as ``image_format``),
    the exit code, the message (naming the file when there is one) and the file."""
    file = exc.file if isinstance(exc, HPatchError) else None
    if isinstance(exc, click.ClickException):
        code, exit_code, message = "usage", exc.exit_code, plain(exc.format_message())
    else:
        message = plain(exc)
        if isinstance(exc, CheckRefused):
            code, exit_code = "refused", EXIT_REFUSED
        elif isinstance(exc, HPatchError):
            name = type(exc).__name__.removesuffix("Error")
            code = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
            exit_code = EXIT_ERROR
        else:
            code, exit_code = "internal", EXIT_ERROR
    if file is not None and plain(file) not in message:
        message = f"{plain(file)}: {message}"
    return {"code": code, "exit_code": exit_code, "message": message, "file": file}


def mark_reported(exc: BaseException) -> None:
    """The command printed its own document with this error in it: the CLI prints no
    second one."""
    vars(exc)["hpatch_reported"] = True


def was_reported(exc: BaseException) -> bool:
    """Whether ``mark_reported`` was called on ``exc``."""
    return bool(vars(exc).get("hpatch_reported"))


def print_json(document: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json_text(document))


def stdout_write(text: str) -> None:
    """Write a piece of a streamed JSON document to stdout."""
    # JSON text is ASCII; the stream buffers it (click.echo would flush every piece)
    sys.stdout.write(text)


def console(stderr: bool = False) -> Console:
    """stdout (or stderr); wide enough for whole rows when it is a file or a pipe."""
    from rich.console import Console

    # One style for every command: no guessing at what to colour in the text.
    out = Console(highlight=False, stderr=stderr)
    return out if out.is_terminal else Console(width=200, highlight=False, stderr=stderr)


def identity_lines(document: dict[str, Any]) -> str:
    """An image's identity (the ``image`` part of a document) as console markup."""
    image = document["image"]
    return (
        f"[bold]{markup(image['name'])}[/bold]  {image['machine']}  "
        f"base 0x{image['image_base']:x}  "
        f"SizeOfImage 0x{image['size_of_image']:x}  "
        f"TimeDateStamp 0x{image['time_date_stamp']:08x}  CheckSum 0x{image['checksum']:08x}\n"
        f"file sha256 {image['file_sha256']}\nmapped sha256 {image['mapped_sha256']}"
    )


def _supersedes(
    _context: click.Context, _parameter: click.Parameter, value: str | None
) -> tuple[int, int] | None:
    if value is None:
        return None
    first_text, _, last_text = value.partition("-")
    try:
        first, last = int(first_text), int(last_text or first_text)
    except ValueError:
        raise click.BadParameter("expected FIRST-LAST, for example 1-3") from None
    # Sequences count from 1 and are 32-bit (FORMAT.md): a range outside is no range.
    if not 1 <= first <= last <= MAX_SEQUENCE:
        raise click.BadParameter(
            f"expected FIRST-LAST with 1 <= FIRST <= LAST <= {MAX_SEQUENCE}, got {value}"
        )
    return first, last


Decorated = TypeVar("Decorated", bound=Callable[..., Any])


def servicing_options(what: str, sign_help: str) -> Callable[[Decorated], Decorated]:
    """The options that place a package in its baseline's servicing line and sign it,
    shared by ``diff -o`` and ``release`` (``what`` names the package(s) in their help,
    ``sign_help`` says what the key signs)."""

    def decorate(command: Decorated) -> Decorated:
        options = [
            click.option(
                "--sequence",
                type=click.IntRange(1, MAX_SEQUENCE),
                default=1,
                show_default=True,
                help=f"{what}'s place in its baseline's servicing line.",
            ),
            click.option(
                "--supersedes",
                callback=_supersedes,
                metavar="FIRST-LAST",
                help="Sequence numbers of the earlier packages it replaces.",
            ),
            click.option("--description", default="", help="A human description of the update."),
            click.option("--advisory", default="", help="An advisory id, such as a CVE."),
            click.option(
                "--sign-key",
                type=click.Path(dir_okay=False),
                help=sign_help,
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def inputs_option(help_text: str) -> Callable[[Decorated], Decorated]:
    """``--inputs N``: the random input sets differential emulation runs each function
    with (diff -o, verify and release prove alike)."""
    return click.option(
        "--inputs",
        type=click.IntRange(1, 100_000),
        default=100,
        show_default=True,
        help=help_text,
    )


def check_supersedes(sequence: int, supersedes: tuple[int, int] | None) -> None:
    """A package supersedes only packages before it."""
    if supersedes is not None and supersedes[1] >= sequence:
        raise click.BadParameter(
            f"package {sequence} can supersede only earlier packages (below {sequence})",
            param_hint="'--supersedes'",
        )
