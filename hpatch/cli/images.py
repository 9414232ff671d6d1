"""``hpatch funcs`` and ``hpatch info``: what one image holds."""

from __future__ import annotations

import sys

import click

from hpatch.cli.inputs import read_image
from hpatch.cli.output import console, identity_lines, stdout_write
from hpatch.cli.progress import Progress, large
from hpatch.cli.tables import Column, fitted_table
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
    columns: tuple[Column, ...] = (
        Column("RVA", "right"),
        Column("size", "right"),
        Column("pad", "right", drop=1),
        Column("name"),
        Column("evidence", prose=True, drop=2),
    )
    rows: list[tuple[str, ...]] = []
    for function in document["functions"]:
        fragments = "".join(f" +frag 0x{f['rva']:x}/{f['size']}" for f in function["fragments"])
        rows.append(
            (
                f"0x{function['rva']:08x}",
                str(function["size"]),
                str(function["padding_after"]),
                markup(function["name"] or ""),
                ", ".join(function["sources"]) + fragments,
            )
        )
    title = f"{len(document['functions'])} functions"
    out.print(fitted_table(title, columns, rows, out.width))


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
    columns: tuple[Column, ...] = (
        Column("name"),
        Column("RVA", "right"),
        Column("virtual size", "right"),
        Column("raw size", "right", drop=1),
        Column("flags", drop=2),
    )
    rows: list[tuple[str, ...]] = [
        (
            markup(s["name"]),
            f"0x{s['rva']:x}",
            f"0x{s['virtual_size']:x}",
            f"0x{s['raw_size']:x}",
            f"0x{s['characteristics']:08x}",
        )
        for s in document["sections"]
    ]
    out.print(fitted_table("sections", columns, rows, out.width))
    columns = (
        Column("DLL"),
        Column("name / ordinal"),
        Column("IAT slot", "right", drop=1),
    )
    rows = [
        (
            markup(i["dll"]),
            markup(i["name"] if i["name"] is not None else f"#{i['ordinal']}"),
            f"0x{i['iat_rva']:x}",
        )
        for i in document["imports"]
    ]
    out.print(fitted_table(f"{len(rows)} imports", columns, rows, out.width))
    columns = (
        Column("ordinal", "right", drop=1),
        Column("name"),
        Column("RVA or forwarder"),
    )
    rows = [
        (
            str(e["ordinal"]),
            markup(e["name"] or ""),
            markup(e["forwarder"]) if e["forwarder"] else f"0x{e['rva']:x}",
        )
        for e in document["exports"]
    ]
    out.print(fitted_table(f"{len(rows)} exports", columns, rows, out.width))
