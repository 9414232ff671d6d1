"""``hpatch funcs`` and ``hpatch info``: what one image holds."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from hpatch.cli.inputs import read_image
from hpatch.cli.output import console, identity_lines, stdout_write
from hpatch.cli.progress import Progress, large
from hpatch.report import funcs_document, info_document
from hpatch.text import markup, path_text, write_json


@click.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of a table.")
def funcs(image_path: str, as_json: bool) -> None:
    """List the functions of IMAGE: RVA, size, name and the evidence for each."""
    progress = Progress("funcs", long=large(image_path))
    with progress.stage(f"read {path_text(image_path)}"):
        image = read_image(image_path)
    with progress.stage("discovered functions") as stage:
        stage.detail = f"{len(image.functions):,}"
    if as_json:
        # written as it is made: a million functions never sit in memory as dicts
        write_json(funcs_document(image, streamed=True), stdout_write)
        sys.stdout.flush()
        return
    document = funcs_document(image)
    out = console()
    out.print(identity_lines(document))
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
            markup(function["name"] or ""),
            ",".join(function["sources"]) + fragments,
        )
    out.print(table)


@click.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
def info(image_path: str, as_json: bool) -> None:
    """Show IMAGE's identity, sections, imports and exports."""
    with Progress("info", long=large(image_path)).stage(f"read {path_text(image_path)}"):
        image = read_image(image_path)
    if as_json:
        write_json(info_document(image, streamed=True), stdout_write)
        sys.stdout.flush()
        return
    document = info_document(image)
    out = console()
    out.print(identity_lines(document))
    sections = Table(title="sections", title_justify="left")
    for column in ("name", "RVA", "virtual size", "raw size", "flags"):
        sections.add_column(column)
    for s in document["sections"]:
        sections.add_row(
            markup(s["name"]),
            f"0x{s['rva']:x}",
            f"0x{s['virtual_size']:x}",
            f"0x{s['raw_size']:x}",
            f"0x{s['characteristics']:08x}",
        )
    out.print(sections)
    imports = Table(title=f"{len(document['imports'])} imports", title_justify="left")
    for column in ("DLL", "name / ordinal", "IAT slot"):
        imports.add_column(column)
    for i in document["imports"]:
        label = i["name"] if i["name"] is not None else f"#{i['ordinal']}"
        imports.add_row(markup(i["dll"]), markup(label), f"0x{i['iat_rva']:x}")
    out.print(imports)
    exports = Table(title=f"{len(document['exports'])} exports", title_justify="left")
    for column in ("ordinal", "name", "RVA"):
        exports.add_column(column)
    for e in document["exports"]:
        exports.add_row(
            str(e["ordinal"]),
            markup(e["name"] or ""),
            markup(e["forwarder"]) if e["forwarder"] else f"0x{e['rva']:x}",
        )
    out.print(exports)
