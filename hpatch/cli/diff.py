"""``hpatch diff``: the function-level diff of two builds, and with -o their package."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from hpatch.cli.inputs import read_image
from hpatch.cli.output import (
    EXIT_NOT_HOTPATCHABLE,
    EXIT_NOTHING_TO_PACKAGE,
    check_supersedes,
    console,
    inputs_option,
    servicing_options,
)
from hpatch.cli.progress import Progress, large
from hpatch.cyclic_gc import collector_paused
from hpatch.diff import DiffResult, Status, diff_images
from hpatch.report import blocker_dict, diff_document
from hpatch.text import Streamed, markup, path_text, write_json

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from rich.console import Console

# The package builder, its codec, the writing of output files and the tables are
# imported where they are used: a plain ``diff --json`` of an update that cannot be
# packaged, the common case, loads none of the builder, the codec or the tables.


@click.command()
@click.argument("old_path", metavar="OLD", type=click.Path(dir_okay=False))
@click.argument("new_path", metavar="NEW", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of tables.")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    help="Write the hotpatch package here, or with - to stdout (the report then goes to "
    "stderr); nothing is written for a blocked update.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With -o: replace an existing package file (never an input, never a non-regular file).",
)
@servicing_options(
    "The package", "Sign the package with this Ed25519 private key (see hpatch keygen)."
)
@inputs_option("With -o: random input sets each function is emulated with before writing.")
@click.option(
    "--no-verify",
    "no_verify",
    is_flag=True,
    help="With -o: write the package without proving it (no translation validation, "
    "no differential emulation).",
)
def diff(
    old_path: str,
    new_path: str,
    as_json: bool,
    output: str | None,
    force: bool,
    sequence: int,
    supersedes: tuple[int, int] | None,
    description: str,
    advisory: str,
    sign_key: str | None,
    inputs: int,
    no_verify: bool,
) -> None:
    """Diff two builds of a PE image function by function; exit 3 if not hotpatchable.

    With -o, also build the hotpatch package that turns OLD into NEW where it runs,
    after proving it as ``hpatch verify`` does: translation validation, then
    differential emulation (a function that fails either is a blocker and nothing
    is written).
    """
    check_supersedes(sequence, supersedes)
    sources = [old_path, new_path] + ([sign_key] if sign_key is not None else [])
    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise click.UsageError("refusing to write a package to a terminal: -o - is for a pipe")
    if output is not None and not to_stdout:
        from hpatch.files import check_output

        # Refused before the work, not after it: the output may not be an input.
        check_output(output, sources, force=force)
    key = None
    if sign_key is not None:
        # Signing loads the cryptography library: only a signed package pays for it.
        from hpatch.package.signing import load_private_key

        key = load_private_key(sign_key)
    progress = Progress("diff", long=large(old_path, new_path))
    # Without -o the command makes many objects and no garbage with cycles: the
    # collector's full passes over them would only cost time (see hpatch.cyclic_gc).
    # With -o the package is proved in the emulator, which runs with it as usual.
    with collector_paused() if output is None else nullcontext():
        with progress.stage(f"read {path_text(old_path)}"):
            old = read_image(old_path)
        with progress.stage(f"read {path_text(new_path)}"):
            new = read_image(new_path)
        with progress.stage("discovered functions") as stage:
            stage.detail = f"{len(old.functions):,} old, {len(new.functions):,} new"
        with progress.stage("diffed") as stage:
            result = diff_images(old, new)
            summary = result.summary()
            stage.detail = ", ".join(
                f"{summary[s]:,} {s}" for s in ("modified", "added", "removed") if summary[s]
            ) + ("" if result.hotpatchable else f"; {len(result.blockers):,} blockers")
        document = diff_document(result)
        written = None
        carried = result.with_status(Status.MODIFIED) + result.with_status(Status.ADDED)
        # Not an error of the input: exit 5 tells a pipeline it from a corrupt file.
        nothing_to_package = output is not None and result.hotpatchable and not carried
        if result.hotpatchable and carried:
            # The verdict holds only if every field of the changed code can be bound too.
            written = _package(
                result,
                document,
                progress,
                _PackageRequest(
                    output,
                    force,
                    sequence,
                    supersedes,
                    description,
                    advisory,
                    inputs,
                    no_verify,
                    key,
                    sources,
                ),
            )
        if output is not None:
            document["package"] = written
        # With -o - stdout holds the package: the report goes to stderr.
        if as_json:
            # Its lists written item by item, as json_text would write them: the whole
            # text of a 20 MB DLL's functions at once raised the peak by 15 MB.
            stream = sys.stderr if to_stdout else sys.stdout
            streamed = {k: Streamed(v) if isinstance(v, list) else v for k, v in document.items()}
            write_json(streamed, stream.write)
        else:
            out = console(stderr=to_stdout)
            _print_diff(document, out)
            if written is not None:
                where = "stdout" if to_stdout else markup(written["path"])
                out.print(f"package written to {where} ({written['size']} bytes)")
    if not document["hotpatchable"]:
        raise click.exceptions.Exit(EXIT_NOT_HOTPATCHABLE)
    if nothing_to_package:
        click.echo("hpatch: no function changed between the builds: nothing to package", err=True)
        raise click.exceptions.Exit(EXIT_NOTHING_TO_PACKAGE)


@dataclass(frozen=True, slots=True)
class _PackageRequest:
    """What the command line asked of the package: where it goes, how it is placed in
    its servicing line, proved and signed."""

    output: str | None
    force: bool
    sequence: int
    supersedes: tuple[int, int] | None
    description: str
    advisory: str
    inputs: int
    no_verify: bool
    key: Ed25519PrivateKey | None
    sources: list[str]


def _package(
    result: DiffResult, document: dict[str, Any], progress: Progress, request: _PackageRequest
) -> dict[str, Any] | None:
    """Build the package of a hotpatchable diff (proved, signed and written with -o);
    a blocked one turns the document's verdict. What -o wrote, or None."""
    from hpatch.package import BuildOptions, PackageBlocked, check_package, encode_package

    output = request.output
    options = BuildOptions(
        request.sequence, request.supersedes, request.description, request.advisory
    )
    try:
        if output is not None:
            # Proving the package runs the emulator: loaded only when it is needed.
            from hpatch.verify import build_verified_package

            what = "packaged" if request.no_verify else "packaged and proved"
            with progress.stage(what, long=True) as stage:
                package, _ = build_verified_package(
                    result, options, validate=not request.no_verify, inputs=request.inputs
                )
                stage.detail = f"{len(package.functions):,} functions"
        else:
            # The verdict needs the package bound and valid, not its region coded.
            check_package(result, options)
    except PackageBlocked as blocked:
        document["hotpatchable"] = False
        document["blockers"] = [blocker_dict(b) for b in blocked.blockers]
        return None
    if output is None:
        return None
    import hashlib

    from hpatch.files import write_output

    if request.key is not None:
        from hpatch.package.signing import sign_package

        package = sign_package(package, request.key)
    data = encode_package(package)
    to_stdout = output == "-"
    if to_stdout:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_output(output, data, request.sources, force=request.force)
    return {
        "path": "-" if to_stdout else path_text(output),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _print_diff(document: dict[str, Any], out: Console) -> None:
    from hpatch.cli.tables import Column, fitted_table

    summary = document["summary"]
    out.print(
        f"[bold]{markup(document['old']['name'])}[/bold] -> "
        f"[bold]{markup(document['new']['name'])}[/bold]  "
        f"{document['old']['machine']}: {summary['functions_old']} -> {summary['functions_new']} "
        f"functions; {summary['unchanged']} unchanged, {summary['modified']} modified, "
        f"{summary['added']} added, {summary['removed']} removed"
    )
    changed = [f for f in document["functions"] if f["status"] != "unchanged"]
    if changed:
        columns: tuple[Column, ...] = (
            Column("status"),
            Column("old RVA", "right", drop=2),
            Column("new RVA", "right", drop=4),
            Column("old size", "right", drop=5),
            Column("new size", "right", drop=5),
            Column("name"),
            Column("match", drop=3),
            Column("why", prose=True, drop=1),
        )
        rows: list[tuple[str, ...]] = [
            (
                f["status"],
                f"0x{f['old_rva']:x}" if f["old_rva"] is not None else "",
                f"0x{f['new_rva']:x}" if f["new_rva"] is not None else "",
                str(f["old_size"] or ""),
                str(f["new_size"] or ""),
                markup(f["label"]),
                f"{f['match']} ({f['confidence']:.2f})" if f["match"] else "",
                markup(f["reason"] or ""),
            )
            for f in changed
        ]
        out.print(fitted_table("changed functions", columns, rows, out.width))
    blockers = document["blockers"]
    if blockers:
        columns = (
            Column("class"),
            Column("cause"),
            Column("where", prose=True),
            Column("reason", prose=True, drop=1),
        )
        rows = [(b["class"], b["cause"], markup(b["where"]), markup(b["reason"])) for b in blockers]
        out.print(fitted_table("blockers", columns, rows, out.width))
        hazards = sum(1 for b in blockers if b["class"] == "hazard")
        limitations = len(blockers) - hazards
        counts = (
            f"{hazards} hazard{'s' * (hazards != 1)}, "
            f"{limitations} limitation{'s' * (limitations != 1)}"
        )
        if hazards:
            verdict = f"the update needs a new baseline ({counts})"
        else:
            verdict = f"hpatch cannot package it yet ({counts})"
        out.print(f"[bold red]not hotpatchable[/bold red]: {verdict}", highlight=False)
    else:
        out.print("[bold green]hotpatchable[/bold green]")
