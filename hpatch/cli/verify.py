"""``hpatch verify``: prove a package against the build it claims to install."""

from __future__ import annotations

import hashlib
from typing import Any

import click

from hpatch import __version__
from hpatch.cli.apply import check_before_loading
from hpatch.cli.inputs import read_image, read_package_file
from hpatch.cli.output import EXIT_CHECK_FAILED, inputs_option
from hpatch.cli.output import console as output_console
from hpatch.cli.progress import Progress
from hpatch.cli.tables import Column, fitted_table
from hpatch.errors import HPatchError
from hpatch.package import baseline_of, decode_package, target_digest
from hpatch.report import VERIFY_SCHEMA, verify_document
from hpatch.text import json_text, markup, path_text


@click.command("verify")
@click.argument("old_path", metavar="OLD", type=click.Path(dir_okay=False))
@click.argument("new_path", metavar="NEW", type=click.Path(dir_okay=False))
@click.argument("package_path", metavar="PKG", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
@inputs_option("Random input sets each function is emulated with.")
def verify_command(
    old_path: str, new_path: str, package_path: str, as_json: bool, inputs: int
) -> None:
    """Prove PKG turns OLD into NEW: translation validation and differential emulation.

    Translation validation of every patched function, then differential emulation of
    old+PKG against NEW. Exit 0 when every function passes (or could not be emulated,
    with the reason), 4 when a check fails."""
    from hpatch.diff import diff_images
    from hpatch.verify import verify_package

    progress = Progress("verify", long=True)
    data = read_package_file(package_path)
    package = decode_package(data)
    old, new = read_image(old_path), read_image(new_path)
    target = package.servicing.target_sha256
    if target != target_digest(new):
        raise HPatchError(
            f"{path_text(new_path)} is not the build the package installs (it installs the "
            f"image whose mapped SHA-256 begins {target.hex()})"
        )
    # OLD is held to the package's baseline before anything of it is emulated.
    try:
        check_before_loading(old, old_path, package)
    except HPatchError as error:
        raise HPatchError(f"the package does not apply to the old image: {error}") from error
    with progress.stage("diffed"):
        result = diff_images(old, new)
    with progress.stage("proved") as stage:
        report = verify_package(result, package, inputs=inputs, progress=stage.update)
        stage.detail = f"{len(report.functions):,} functions, {inputs} input sets each"
    document = {
        "schema": VERIFY_SCHEMA,
        "hpatch_version": __version__,
        "old": {"path": path_text(old_path), "mapped_sha256": baseline_of(old).mapped_sha256.hex()},
        "new": {"path": path_text(new_path), "mapped_sha256": baseline_of(new).mapped_sha256.hex()},
        "package": {
            "path": path_text(package_path),
            "sequence": package.servicing.sequence,
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        **verify_document(report),
    }
    if as_json:
        click.echo(json_text(document))
    else:
        _print_report(document)
    if not report.passed:
        raise click.exceptions.Exit(EXIT_CHECK_FAILED)


def _print_report(document: dict[str, Any]) -> None:
    console = output_console()
    package = document["package"]
    columns = (
        Column("function"),
        Column("status", drop=3),
        Column("old RVA", "right", drop=2),
        Column("new RVA", "right", drop=1),
        Column("translation"),
        Column("emulation"),
    )
    rows = []
    for f in document["functions"]:
        emulation = f["emulation"]
        text = emulation["outcome"]
        if emulation["outcome"] in ("passed", "failed", "not_emulated"):
            text += f" ({emulation['agreed']}/{emulation['tried']})"
        rows.append(
            (
                markup(f["name"]),
                f["status"],
                f"0x{f['old_rva']:x}" if f["old_rva"] is not None else "-",
                f"0x{f['new_rva']:x}",
                f["translation"],
                markup(text),
            )
        )
    title = f"package {package['sequence']}: {markup(package['path'])}"
    console.print(fitted_table(title, columns, rows, console.width))
    for f in document["functions"]:
        for m in f["mismatches"]:
            where = (
                f"0x{m['patched_va']:x} `{markup(m['patched_instruction'])}` vs "
                f"0x{m['new_va']:x} `{markup(m['new_instruction'])}`"
                if m["patched_instruction"] or m["new_instruction"]
                else f"0x{m['patched_va']:x} vs 0x{m['new_va']:x}"
            )
            console.print(
                f"[red]{markup(f['name'])}[/red]: {where}: {markup(m['reason'])}",
                highlight=False,
            )
        if f["emulation"]["detail"] and f["emulation"]["outcome"] != "skipped":
            console.print(
                f"{markup(f['name'])}: {markup(f['emulation']['detail'])}", highlight=False
            )
    summary = document["summary"]
    verdict = "[green]verified[/green]" if document["passed"] else "[red]FAILED[/red]"
    console.print(
        f"{verdict}: {summary['functions']} functions; translation validation "
        f"{summary['translation_passed']} passed, {summary['translation_failed']} failed; "
        f"differential emulation ({document['inputs']} input sets) "
        f"{summary['emulation_passed']} passed, {summary['emulation_failed']} failed, "
        f"{summary['not_emulated']} not emulated",
        highlight=False,
    )
