"""The ``hpatch`` command line: each command calls the API and formats the result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hpatch import BACKEND, __version__
from hpatch.diff import diff_images
from hpatch.errors import HPatchError
from hpatch.image import load_image
from hpatch.report import diff_document, funcs_document, info_document

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_HOTPATCHABLE = 3


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2))


def _identity_lines(document: dict[str, Any]) -> str:
    image = document["image"]
    return (
        f"[bold]{image['name']}[/bold]  {image['machine']}  base 0x{image['image_base']:x}  "
        f"SizeOfImage 0x{image['size_of_image']:x}  "
        f"TimeDateStamp 0x{image['time_date_stamp']:08x}  CheckSum 0x{image['checksum']:08x}\n"
        f"file sha256 {image['file_sha256']}\nmapped sha256 {image['mapped_sha256']}"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, message=f"hpatch %(version)s ({BACKEND} core)")
def cli() -> None:
    """Hotpatch Windows PE binaries (x64 and ARM64)."""


@cli.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def funcs(image_path: str, as_json: bool) -> None:
    """List the functions of IMAGE: RVA, size, name and the evidence for each."""
    image = load_image(image_path)
    document = funcs_document(image)
    if as_json:
        _print_json(document)
        return
    console = _console()
    console.print(_identity_lines(document))
    table = Table(title=f"{len(document['functions'])} functions", title_justify="left")
    for column, justify in (("RVA", "right"), ("size", "right"), ("pad", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("name")
    table.add_column("evidence")
    for function in document["functions"]:
        fragments = "".join(f" +frag 0x{f['rva']:x}/{f['size']}" for f in function["fragments"])
        table.add_row(
            f"0x{function['rva']:08x}",
            str(function["size"]),
            str(function["padding_after"]),
            function["name"] or "",
            ",".join(function["sources"]) + fragments,
        )
    console.print(table)


@cli.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
def info(image_path: str, as_json: bool) -> None:
    """Show IMAGE's identity, sections, imports and exports."""
    document = info_document(load_image(image_path))
    if as_json:
        _print_json(document)
        return
    console = _console()
    console.print(_identity_lines(document))
    sections = Table(title="sections", title_justify="left")
    for column in ("name", "RVA", "virtual size", "raw size", "flags"):
        sections.add_column(column)
    for s in document["sections"]:
        sections.add_row(
            s["name"],
            f"0x{s['rva']:x}",
            f"0x{s['virtual_size']:x}",
            f"0x{s['raw_size']:x}",
            f"0x{s['characteristics']:08x}",
        )
    console.print(sections)
    imports = Table(title=f"{len(document['imports'])} imports", title_justify="left")
    for column in ("DLL", "name / ordinal", "IAT slot"):
        imports.add_column(column)
    for i in document["imports"]:
        label = i["name"] if i["name"] is not None else f"#{i['ordinal']}"
        imports.add_row(i["dll"], label, f"0x{i['iat_rva']:x}")
    console.print(imports)
    exports = Table(title=f"{len(document['exports'])} exports", title_justify="left")
    for column in ("ordinal", "name", "RVA"):
        exports.add_column(column)
    for e in document["exports"]:
        exports.add_row(str(e["ordinal"]), e["name"] or "", e["forwarder"] or f"0x{e['rva']:x}")
    console.print(exports)


@cli.command()
@click.argument("old_path", metavar="OLD", type=click.Path(dir_okay=False))
@click.argument("new_path", metavar="NEW", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of tables.")
def diff(old_path: str, new_path: str, as_json: bool) -> None:
    """Diff two builds of a PE image function by function; exit 3 if not hotpatchable."""
    old, new = load_image(old_path), load_image(new_path)
    errors = Console(stderr=True)
    if errors.is_terminal and not as_json:
        from rich.progress import Progress

        with Progress(console=errors, transient=True) as bar:
            tasks = {
                name: bar.add_task(f"fingerprinting {name} build", total=None)
                for name in ("old", "new")
            }

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(tasks[stage], completed=done, total=total)

            result = diff_images(old, new, progress)
    else:
        result = diff_images(old, new)
    document = diff_document(result)
    if as_json:
        _print_json(document)
    else:
        _print_diff(document)
    if not result.hotpatchable:
        raise click.exceptions.Exit(EXIT_NOT_HOTPATCHABLE)


def _console() -> Console:
    """stdout; wide enough for whole rows when it is a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print_diff(document: dict[str, Any]) -> None:
    console = _console()
    summary = document["summary"]
    console.print(
        f"[bold]{document['old']['name']}[/bold] -> [bold]{document['new']['name']}[/bold]  "
        f"{document['old']['machine']}: {summary['functions_old']} -> {summary['functions_new']} "
        f"functions; {summary['unchanged']} unchanged, {summary['modified']} modified, "
        f"{summary['added']} added, {summary['removed']} removed"
    )
    changed = [f for f in document["functions"] if f["status"] != "unchanged"]
    if changed:
        table = Table(title="changed functions", title_justify="left")
        for column in (
            "status",
            "old RVA",
            "new RVA",
            "old size",
            "new size",
            "name",
            "match",
            "why",
        ):
            table.add_column(column)
        for f in changed:
            table.add_row(
                f["status"],
                f"0x{f['old_rva']:x}" if f["old_rva"] is not None else "",
                f"0x{f['new_rva']:x}" if f["new_rva"] is not None else "",
                str(f["old_size"] or ""),
                str(f["new_size"] or ""),
                f["label"],
                f"{f['match']} ({f['confidence']:.2f})" if f["match"] else "",
                f["reason"] or "",
            )
        console.print(table)
    if document["blockers"]:
        table = Table(title="blockers", title_justify="left")
        for column in ("kind", "where", "reason"):
            table.add_column(column)
        for blocker in document["blockers"]:
            table.add_row(blocker["kind"], blocker["where"], blocker["reason"])
        console.print(table)
        console.print("[bold red]not hotpatchable[/bold red]: it needs a new baseline")
    else:
        console.print("[bold green]hotpatchable[/bold green]")


def _run(command: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        returned = command.main(args=argv, prog_name="hpatch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("hpatch: aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except HPatchError as exc:
        click.echo(f"hpatch: error: {exc}", err=True)
        return EXIT_ERROR
    except Exception as exc:  # a bug, not bad input: say so without a traceback
        if os.environ.get("HPATCH_DEBUG"):
            raise
        click.echo(
            f"hpatch: internal error: {type(exc).__name__}: {exc} "
            "(set HPATCH_DEBUG=1 for a traceback)",
            err=True,
        )
        return EXIT_ERROR
    return returned if isinstance(returned, int) else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(_run(cli, argv))
