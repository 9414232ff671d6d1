"""The ``hpatch`` command line: each command calls the API and formats the result."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hpatch import BACKEND, __version__
from hpatch.cli_apply import apply_command
from hpatch.cli_inputs import read_image, read_package_file
from hpatch.cli_verify import verify_command
from hpatch.diff import Status, diff_images
from hpatch.errors import CheckRefused, HPatchError
from hpatch.files import check_output, write_output
from hpatch.package import (
    BuildOptions,
    PackageBlocked,
    build_package,
    decode_package,
    encode_package,
)
from hpatch.package.envelope import check_signature
from hpatch.package.signing import (
    SignatureStatus,
    TrustStore,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    sign_package,
)
from hpatch.report import (
    blocker_dict,
    diff_document,
    funcs_document,
    info_document,
    package_document,
)
from hpatch.text import json_text, markup, path_text, plain, write_json

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_HOTPATCHABLE = 3
EXIT_REFUSED = 6
MAX_SEQUENCE = 0xFFFFFFFF


def _print_json(document: Any) -> None:
    click.echo(json_text(document))


def _stdout_write(text: str) -> None:
    # JSON text is ASCII; the stream buffers it (click.echo would flush every piece)
    sys.stdout.write(text)


def _identity_lines(document: dict[str, Any]) -> str:
    image = document["image"]
    return (
        f"[bold]{markup(image['name'])}[/bold]  {image['machine']}  "
        f"base 0x{image['image_base']:x}  "
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
    image = read_image(image_path)
    if as_json:
        # written as it is made: a million functions never sit in memory as dicts
        write_json(funcs_document(image, streamed=True), _stdout_write)
        sys.stdout.flush()
        return
    document = funcs_document(image)
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
            markup(function["name"] or ""),
            ",".join(function["sources"]) + fragments,
        )
    console.print(table)


@cli.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
def info(image_path: str, as_json: bool) -> None:
    """Show IMAGE's identity, sections, imports and exports."""
    image = read_image(image_path)
    if as_json:
        write_json(info_document(image, streamed=True), _stdout_write)
        sys.stdout.flush()
        return
    document = info_document(image)
    console = _console()
    console.print(_identity_lines(document))
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
    console.print(sections)
    imports = Table(title=f"{len(document['imports'])} imports", title_justify="left")
    for column in ("DLL", "name / ordinal", "IAT slot"):
        imports.add_column(column)
    for i in document["imports"]:
        label = i["name"] if i["name"] is not None else f"#{i['ordinal']}"
        imports.add_row(markup(i["dll"]), markup(label), f"0x{i['iat_rva']:x}")
    console.print(imports)
    exports = Table(title=f"{len(document['exports'])} exports", title_justify="left")
    for column in ("ordinal", "name", "RVA"):
        exports.add_column(column)
    for e in document["exports"]:
        exports.add_row(
            str(e["ordinal"]),
            markup(e["name"] or ""),
            markup(e["forwarder"]) if e["forwarder"] else f"0x{e['rva']:x}",
        )
    console.print(exports)


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


@cli.command()
@click.argument("old_path", metavar="OLD", type=click.Path(dir_okay=False))
@click.argument("new_path", metavar="NEW", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of tables.")
@click.option(
    "-o",
    "--output",
    "output",
    type=click.Path(dir_okay=False),
    help="Write the hotpatch package here (nothing is written for a blocked update).",
)
@click.option(
    "--force",
    is_flag=True,
    help="With -o: replace an existing package file (never an input, never a non-regular file).",
)
@click.option(
    "--sequence",
    type=click.IntRange(1, MAX_SEQUENCE),
    default=1,
    show_default=True,
    help="The package's place in the baseline's servicing line.",
)
@click.option(
    "--supersedes",
    callback=_supersedes,
    metavar="FIRST-LAST",
    help="Sequence numbers of the earlier packages this one replaces.",
)
@click.option("--description", default="", help="A human description of the update.")
@click.option("--advisory", default="", help="An advisory id, such as a CVE.")
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False),
    help="Sign the package with this Ed25519 private key (see hpatch keygen).",
)
@click.option(
    "--inputs",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="With -o: random input sets each function is emulated with before writing.",
)
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
    if supersedes is not None and supersedes[1] >= sequence:
        raise click.BadParameter(
            f"package {sequence} can supersede only earlier packages (below {sequence})",
            param_hint="'--supersedes'",
        )
    sources = [old_path, new_path] + ([sign_key] if sign_key is not None else [])
    if output is not None:
        # Refused before the work, not after it: the output may not be an input.
        check_output(output, sources, force=force)
    key = load_private_key(sign_key) if sign_key is not None else None
    old, new = read_image(old_path), read_image(new_path)
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
    written = None
    carried = result.with_status(Status.MODIFIED) + result.with_status(Status.ADDED)
    if output is not None and result.hotpatchable and not carried:
        raise HPatchError("no function changed between the builds: there is nothing to package")
    if result.hotpatchable and carried:
        # The verdict holds only if every field of the changed code can be bound too.
        options = BuildOptions(sequence, supersedes, description, advisory)
        try:
            if output is not None:
                # Proving the package runs the emulator: loaded only when it is needed.
                from hpatch.verify import build_verified_package

                package, _ = build_verified_package(
                    result, options, validate=not no_verify, inputs=inputs
                )
            else:
                package = build_package(result, options)
        except PackageBlocked as blocked:
            document["hotpatchable"] = False
            document["blockers"] = [blocker_dict(b) for b in blocked.blockers]
        else:
            if output is not None:
                if key is not None:
                    package = sign_package(package, key)
                data = encode_package(package)
                write_output(output, data, sources, force=force)
                written = {
                    "path": path_text(output),
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
    if output is not None:
        document["package"] = written
    if as_json:
        _print_json(document)
    else:
        _print_diff(document)
        if written is not None:
            _console().print(
                f"package written to {markup(written['path'])} ({written['size']} bytes)"
            )
    if not document["hotpatchable"]:
        raise click.exceptions.Exit(EXIT_NOT_HOTPATCHABLE)


@cli.command()
@click.argument("key_path", metavar="KEY", type=click.Path(dir_okay=False))
def keygen(key_path: str) -> None:
    """Create an Ed25519 signing key: KEY (private) and KEY.pub (public)."""
    public_path = generate_key(key_path)
    key = load_public_key(public_path)
    click.echo(
        f"private key {plain(path_text(key_path))}\npublic key {plain(path_text(public_path))}\n"
        f"key id {key_id(key).hex()}"
    )


@cli.command()
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
    document = package_document(package, data, check)
    if as_json:
        _print_json(document)
    else:
        _print_package(document)
    if check is not None and check.status != SignatureStatus.TRUSTED:
        # asked to check it against a trust store, and it does not hold there
        raise click.exceptions.Exit(EXIT_REFUSED)


def _print_package(document: dict[str, Any]) -> None:
    console = _console()
    servicing, baseline = document["servicing"], document["baseline"]
    signature = document["signature"]
    console.print(
        f"[bold]hotpatch package[/bold] format {document['format_version']}, "
        f"{document['machine']}, {document['size']} bytes, sha256 {document['sha256']}"
    )
    console.print(
        f"baseline [bold]{markup(baseline['name'])}[/bold]  TimeDateStamp "
        f"0x{baseline['time_date_stamp']:08x}  CheckSum 0x{baseline['checksum']:08x}  "
        f"SizeOfImage 0x{baseline['size_of_image']:x}\n"
        f"  mapped sha256 {baseline['mapped_sha256']}\n"
        f"target   mapped sha256 {document['target']['mapped_sha256_prefix']}..."
    )
    supersedes = servicing["supersedes"]
    console.print(
        f"sequence {servicing['sequence']}"
        + (f", supersedes {supersedes[0]}-{supersedes[1]}" if supersedes else "")
        + (f", advisory {markup(servicing['advisory'])}" if servicing["advisory"] else "")
        + f", built by hpatch {markup(servicing['tool_version'])}"
    )
    if servicing["description"]:
        console.print(f"description: {markup(servicing['description'])}")
    console.print(
        "prerequisites: "
        + ", ".join(
            f"{p['kind']}={p['value']:#x}" if p["value"] else p["kind"]
            for p in document["prerequisites"]
        )
    )
    table = Table(title=f"{len(document['functions'])} patched functions", title_justify="left")
    for column in ("status", "old RVA", "name", "old size", "new size", "redirect", "fixups"):
        table.add_column(column)
    for f in document["functions"]:
        table.add_row(
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
    console.print(table)
    data = document["data"]
    console.print(
        f"new read-only data: {len(data)} block(s), {sum(d['size'] for d in data)} bytes; "
        f"{document['fixups']} fixups; {len(document['imports'])} imports; "
        f"{document['unwind_records']} unwind records; region {document['region']['size']} bytes"
    )
    carried = document["globals"]
    if carried:
        console.print(
            f"new globals: {len(carried)} block(s), {sum(d['size'] for d in carried)} bytes "
            "(writable pages of the region, from the new build's initial values)"
        )
    for item in document["new_imports"]:
        symbol = item["name"] or f"#{item['ordinal']}"
        console.print(
            f"new import {markup(item['dll'])}!{markup(symbol)}: "
            f"slot at region offset {item['slot_offset']:#x}"
        )
    if signature["signed"]:
        console.print(f"signature: Ed25519 by key {signature['key_id']} ({signature['status']})")
    else:
        console.print("signature: unsigned")


def _console() -> Console:
    """stdout; wide enough for whole rows when it is a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print_diff(document: dict[str, Any]) -> None:
    console = _console()
    summary = document["summary"]
    console.print(
        f"[bold]{markup(document['old']['name'])}[/bold] -> "
        f"[bold]{markup(document['new']['name'])}[/bold]  "
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
                markup(f["label"]),
                f"{f['match']} ({f['confidence']:.2f})" if f["match"] else "",
                markup(f["reason"] or ""),
            )
        console.print(table)
    blockers = document["blockers"]
    if blockers:
        table = Table(title="blockers", title_justify="left")
        for column in ("class", "cause", "where", "reason"):
            table.add_column(column)
        for blocker in blockers:
            table.add_row(
                blocker["class"],
                blocker["cause"],
                markup(blocker["where"]),
                markup(blocker["reason"]),
            )
        console.print(table)
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
        console.print(f"[bold red]not hotpatchable[/bold red]: {verdict}", highlight=False)
    else:
        console.print("[bold green]hotpatchable[/bold green]")


@cli.command()
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
@click.option(
    "--sequence",
    type=click.IntRange(1, MAX_SEQUENCE),
    default=1,
    show_default=True,
    help="Every package's place in its baseline's servicing line.",
)
@click.option(
    "--supersedes",
    callback=_supersedes,
    metavar="FIRST-LAST",
    help="Sequence numbers of the earlier packages each package replaces.",
)
@click.option("--description", default="", help="A human description of the release.")
@click.option("--advisory", default="", help="An advisory id, such as a CVE.")
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False),
    help="Sign every package and the manifest with this Ed25519 private key.",
)
@click.option(
    "--inputs",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Random input sets each changed function is emulated with.",
)
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
) -> None:
    """Service a whole release: every PE file of OLD_DIR and NEW_DIR, paired by path.

    Each changed binary is diffed, and packaged and proven as ``hpatch diff -o`` does
    when it is hotpatchable. Writes OUT_DIR/packages/<path>.hpk and the manifest
    OUT_DIR/release.json (signed beside it with --sign-key). Exit 0 when every binary
    was handled, whatever its verdict; 1 if any is an error.
    """
    from hpatch.release import Settings, default_jobs, run_release

    if supersedes is not None and supersedes[1] >= sequence:
        raise click.BadParameter(
            f"package {sequence} can supersede only earlier packages (below {sequence})",
            param_hint="'--supersedes'",
        )
    key = load_private_key(sign_key) if sign_key is not None else None
    settings = Settings(
        BuildOptions(sequence, supersedes, description, advisory), inputs, not no_emulate
    )

    def finished(pair: Any, outcome: Any) -> None:
        # One plain line per binary on stderr: stdout stays the report or the document.
        click.echo(f"hpatch: release: {plain(pair.path)}: {outcome.entry['status']}", err=True)

    result = run_release(
        old_dir,
        new_dir,
        out_dir,
        settings,
        jobs=jobs or default_jobs(),
        key=key,
        force=force,
        finished=finished,
        protected=[sign_key] if sign_key is not None else [],
    )
    if as_json:
        _print_json(result.document)
    else:
        _print_release(result.document, result.manifest_path)
    if result.failed:
        raise click.exceptions.Exit(EXIT_ERROR)


def _print_release(document: dict[str, Any], manifest_path: str) -> None:
    console = _console()
    table = Table(title=f"{len(document['binaries'])} binaries", title_justify="left")
    for column in ("path", "status", "machine", "changed", "package / first blocker / error"):
        table.add_column(column)
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
        table.add_row(
            markup(binary["path"]),
            binary["status"],
            binary["machine"] or "",
            changed,
            markup(detail),
        )
    console.print(table)
    console.print(
        ", ".join(f"{count} {status}" for status, count in document["summary"].items())
        + f"; manifest written to {markup(path_text(manifest_path))}"
    )


def _inspect_release(release_dir: str, as_json: bool, trust: tuple[str, ...]) -> None:
    from hpatch.release import check_release

    check = check_release(release_dir, TrustStore.from_paths(list(trust)) if trust else None)
    if as_json:
        _print_json(check.as_dict())
    else:
        console = _console()
        signature = check.signature.value if check.signature is not None else "not checked"
        console.print(
            f"[bold]release manifest[/bold] sha256 {check.manifest_sha256}\n"
            f"signature: {signature}" + (f" (key {check.key_id})" if check.key_id else "")
        )
        for package in check.packages:
            console.print(
                f"{package.result:8} {markup(package.file)}"
                + (f": {markup(package.detail)}" if package.detail else "")
            )
        verdict = "[bold green]ok[/bold green]" if check.ok else "[bold red]refused[/bold red]"
        console.print(f"{len(check.packages)} packages: {verdict}", highlight=False)
    if not check.ok:
        raise click.exceptions.Exit(EXIT_REFUSED)


cli.add_command(apply_command)
cli.add_command(verify_command)


def _run(command: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        returned = command.main(args=argv, prog_name="hpatch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("hpatch: aborted", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.message = plain(exc.message)
        exc.show()
        return exc.exit_code
    except HPatchError as exc:
        # Messages quote names and paths from the inputs: shown escaped, as everywhere.
        click.echo(f"hpatch: error: {plain(exc)}", err=True)
        return EXIT_REFUSED if isinstance(exc, CheckRefused) else EXIT_ERROR
    except Exception as exc:  # a bug, not bad input: say so without a traceback
        if os.environ.get("HPATCH_DEBUG"):
            raise
        click.echo(
            f"hpatch: internal error: {type(exc).__name__}: {plain(exc)} "
            "(set HPATCH_DEBUG=1 for a traceback)",
            err=True,
        )
        return EXIT_ERROR
    return returned if isinstance(returned, int) else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(_run(cli, argv))
