"""``hpatch inspect``: what a package holds, or whether a release holds together."""

from __future__ import annotations

from typing import Any

import click

from hpatch import __version__
from hpatch.cli.inputs import read_package_file
from hpatch.cli.output import EXIT_REFUSED, console, print_json
from hpatch.cli.tables import Column, fitted_table
from hpatch.package import decode_package
from hpatch.package.envelope import check_signature
from hpatch.package.signing import SignatureStatus, TrustStore
from hpatch.report import package_document
from hpatch.text import markup

#: The ``hpatch inspect --json`` document's schema (docs/schema/inspect-1.schema.json).
INSPECT_SCHEMA = "hpatch.inspect/1"


@click.command()
@click.argument("package_path", metavar="PKG", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=click.Path(),
    help="A public key, or a directory of *.pub keys, to check the signature against.",
)
@click.option(
    "--release",
    "release_dir",
    type=click.Path(file_okay=False),
    help="Instead of PKG: check the release written to this directory by hpatch release "
    "(the manifest's signature with --trust, every package's SHA-256); exit 6 if one fails.",
)
def inspect(
    package_path: str | None, as_json: bool, trust: tuple[str, ...], release_dir: str | None
) -> None:
    """Show what a hotpatch package holds; works without the target image."""
    if (package_path is None) == (release_dir is None):
        raise click.UsageError("give either PKG or --release OUT_DIR")
    if release_dir is not None:
        _inspect_release(release_dir, as_json, trust)
        return
    assert package_path is not None
    data = read_package_file(package_path)
    # over the raw bytes, before anything past the frame is decoded
    check = check_signature(data, TrustStore.from_paths(list(trust))) if trust else None
    package = decode_package(data)
    document = {
        "schema": INSPECT_SCHEMA,
        "hpatch_version": __version__,
        **package_document(package, data, check),
    }
    if as_json:
        print_json(document)
    else:
        _print_package(document)
    if check is not None and check.status != SignatureStatus.TRUSTED:
        # asked to check it against a trust store, and it does not hold there
        raise click.exceptions.Exit(EXIT_REFUSED)


def _print_package(document: dict[str, Any]) -> None:
    out = console()
    servicing, baseline = document["servicing"], document["baseline"]
    signature = document["signature"]
    out.print(
        f"[bold]hotpatch package[/bold] format {document['format_version']}, "
        f"{document['machine']}, {document['size']} bytes, sha256 {document['sha256']}"
    )
    out.print(
        f"baseline [bold]{markup(baseline['name'])}[/bold]  TimeDateStamp "
        f"0x{baseline['time_date_stamp']:08x}  CheckSum 0x{baseline['checksum']:08x}  "
        f"SizeOfImage 0x{baseline['size_of_image']:x}\n"
        f"  mapped sha256 {baseline['mapped_sha256']}\n"
        f"target   mapped sha256 {document['target']['mapped_sha256_prefix']}..."
    )
    supersedes = servicing["supersedes"]
    out.print(
        f"sequence {servicing['sequence']}"
        + (f", supersedes {supersedes[0]}-{supersedes[1]}" if supersedes else "")
        + (f", advisory {markup(servicing['advisory'])}" if servicing["advisory"] else "")
        + f", built by hpatch {markup(servicing['tool_version'])}"
    )
    if servicing["description"]:
        out.print(f"description: {markup(servicing['description'])}")
    out.print(
        "prerequisites: "
        + ", ".join(
            f"{p['kind']}={p['value']:#x}" if p["value"] else p["kind"]
            for p in document["prerequisites"]
        )
    )
    columns = (
        Column("status"),
        Column("old RVA", "right", drop=3),
        Column("name"),
        Column("old size", "right", drop=4),
        Column("new size", "right", drop=4),
        Column("redirect", drop=2),
        Column("fixups", "right", drop=1),
    )
    rows = []
    for f in document["functions"]:
        rows.append(
            (
                f["status"],
                f"0x{f['old_rva']:x}" if f["old_rva"] is not None else "",
                markup(f["name"])
                if f["name"]
                else (
                    f"sub_{f['old_rva']:x}"
                    if f["old_rva"] is not None
                    else f"new at 0x{f['new_rva']:x}"
                ),
                str(f["old_size"] or ""),
                str(f["new_size"]),
                f["redirect"] or "",
                str(f["fixups"]),
            )
        )
    title = f"{len(rows)} patched functions"
    out.print(fitted_table(title, columns, rows, out.width))
    data = document["data"]
    out.print(
        f"new read-only data: {len(data)} block(s), {sum(d['size'] for d in data)} bytes; "
        f"{document['fixups']} fixups; {len(document['imports'])} imports; "
        f"{document['unwind_records']} unwind records; region {document['region']['size']} bytes"
    )
    carried = document["globals"]
    if carried:
        out.print(
            f"new globals: {len(carried)} block(s), {sum(d['size'] for d in carried)} bytes "
            "(writable pages of the region, from the new build's initial values)"
        )
    for item in document["new_imports"]:
        symbol = item["name"] or f"#{item['ordinal']}"
        out.print(
            f"new import {markup(item['dll'])}!{markup(symbol)}: "
            f"slot at region offset {item['slot_offset']:#x}"
        )
    if signature["signed"]:
        out.print(f"signature: Ed25519 by key {signature['key_id']} ({signature['status']})")
    else:
        out.print("signature: unsigned")


def _inspect_release(release_dir: str, as_json: bool, trust: tuple[str, ...]) -> None:
    from hpatch.release import check_release

    check = check_release(release_dir, TrustStore.from_paths(list(trust)) if trust else None)
    if as_json:
        print_json(check.as_dict())
    else:
        out = console()
        signature = check.signature.value if check.signature is not None else "not checked"
        out.print(
            f"[bold]release manifest[/bold] sha256 {check.manifest_sha256}\n"
            f"signature: {signature}" + (f" (key {check.key_id})" if check.key_id else "")
        )
        for package in check.packages:
            out.print(
                f"{package.result:8} {markup(package.file)}"
                + (f": {markup(package.detail)}" if package.detail else "")
            )
        verdict = "[bold green]ok[/bold green]" if check.ok else "[bold red]refused[/bold red]"
        out.print(f"{len(check.packages)} packages: {verdict}", highlight=False)
    if not check.ok:
        raise click.exceptions.Exit(EXIT_REFUSED)
