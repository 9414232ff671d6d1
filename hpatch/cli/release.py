"""``hpatch release``: service every binary of two release trees at once."""

from __future__ import annotations

from typing import Any

import click

from hpatch.cli.output import (
    EXIT_ERROR,
    check_supersedes,
    console,
    inputs_option,
    print_json,
    servicing_options,
)
from hpatch.cli.progress import Progress
from hpatch.cli.tables import Column, fitted_table
from hpatch.package import BuildOptions
from hpatch.package.signing import load_private_key
from hpatch.text import markup, path_text


@click.command()
@click.argument("old_dir", metavar="OLD_DIR", type=click.Path(file_okay=False))
@click.argument("new_dir", metavar="NEW_DIR", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The directory for packages/, release.json, release.json.sig and timings.json.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest instead of a table.")
@click.option(
    "--force", is_flag=True, help="Replace the outputs of an earlier run (never an input)."
)
@servicing_options(
    "Every package", "Sign every package and the manifest with this Ed25519 private key."
)
@inputs_option("Random input sets each changed function is emulated with.")
@click.option(
    "--no-emulate",
    is_flag=True,
    help="Prove packages by translation validation only (no differential emulation).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 1024),
    default=None,
    help="Worker processes, each servicing one pair at a time  [default: the CPU count]",
)
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    help="Run the tasks on this Dask scheduler's workers instead (pip install "
    "'hpatch[cluster]'; the workers read the trees at the same path).",
)
def release(
    old_dir: str,
    new_dir: str,
    out_dir: str,
    as_json: bool,
    force: bool,
    sequence: int,
    supersedes: tuple[int, int] | None,
    description: str,
    advisory: str,
    sign_key: str | None,
    inputs: int,
    no_emulate: bool,
    jobs: int | None,
    scheduler: str | None,
) -> None:
    """Service a whole release: every PE file of OLD_DIR and NEW_DIR, paired by path.

    Each changed binary is diffed, and packaged and proven as ``hpatch diff -o`` does
    when it is hotpatchable. Writes OUT_DIR/packages/<path>.hpk and the manifest
    OUT_DIR/release.json (signed beside it with --sign-key). Exit 0 when every binary
    was handled, whatever its verdict; 1 if any is an error.
    """
    from hpatch.release import Settings, default_jobs, run_release

    check_supersedes(sequence, supersedes)
    key = load_private_key(sign_key) if sign_key is not None else None
    settings = Settings(
        BuildOptions(sequence, supersedes, description, advisory), inputs, not no_emulate
    )

    progress = Progress("release", long=True)
    total = done = 0

    with progress.stage("serviced binaries") as stage:

        def paired(count: int) -> None:
            nonlocal total
            total = count

        def finished(pair: Any, outcome: Any) -> None:
            nonlocal done
            done += 1
            stage.update(done, total)
            stage.detail = f"{done} of {total}"
            if not progress.terminal:
                # One plain line per binary: stdout stays the report or the document.
                progress.line(f"{pair.path}: {outcome.entry['status']}")

        result = run_release(
            old_dir,
            new_dir,
            out_dir,
            settings,
            jobs=jobs or default_jobs(),
            key=key,
            force=force,
            finished=finished,
            paired=paired,
            protected=[sign_key] if sign_key is not None else [],
            scheduler=scheduler,
        )
    if as_json:
        print_json(result.document)
    else:
        _print_release(result.document, result.manifest_path)
    if result.failed:
        raise click.exceptions.Exit(EXIT_ERROR)


def _print_release(document: dict[str, Any], manifest_path: str) -> None:
    out = console()
    columns = (
        Column("path"),
        Column("status"),
        Column("machine", drop=2),
        Column("changed", "right", drop=1),
        Column("package / first blocker / error", prose=True),
    )
    rows = []
    for binary in document["binaries"]:
        functions = binary["functions"]
        changed = (
            str(functions["modified"] + functions["added"] + functions["removed"])
            if functions
            else ""
        )
        if binary["package"]:
            detail = f"{binary['package']['file']} ({binary['package']['size']} bytes)"
        elif binary["blockers"]:
            first = binary["blockers"][0]
            more = len(binary["blockers"]) - 1
            detail = f"{first['class']} {first['cause']}: {first['where']}" + (
                f" (+{more} more)" if more else ""
            )
        else:
            detail = binary["error"] or ""
        rows.append(
            (
                markup(binary["path"]),
                binary["status"],
                binary["machine"] or "",
                changed,
                markup(detail),
            )
        )
    out.print(fitted_table(f"{len(rows)} binaries", columns, rows, out.width))
    out.print(
        ", ".join(f"{count} {status}" for status, count in document["summary"].items())
        + f"; manifest written to {markup(path_text(manifest_path))}"
    )
