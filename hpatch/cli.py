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
from hpatch.errors import HPatchError
from hpatch.image import load_image
from hpatch.report import funcs_document, info_document

EXIT_OK = 0
EXIT_ERROR = 1


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
    console = Console()
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
    console = Console()
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


def _run(command: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        command.main(args=argv, prog_name="hpatch", standalone_mode=False)
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
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(_run(cli, argv))
