"""``hpatch apply``: load an image into an emulated process, apply packages, call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from hpatch.errors import EmulationFault, HPatchError
from hpatch.image import load_image
from hpatch.package import decode_package
from hpatch.package.signing import TrustStore

if TYPE_CHECKING:  # the emulator (Unicorn) loads only when ``apply`` runs
    from hpatch.apply import ApplyReport
    from hpatch.emu import Process

CALL_MARKER = "--call"


@dataclass(frozen=True, slots=True)
class CallSpec:
    """A function and its arguments as given on the command line."""

    function: str
    arguments: tuple[str, ...]


def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise HPatchError(f"'{text}' is not an integer") from None


def _split_items(items: tuple[str, ...]) -> tuple[list[str], CallSpec | None]:
    if CALL_MARKER not in items:
        return list(items), None
    at = items.index(CALL_MARKER)
    call = items[at + 1 :]
    if not call:
        raise HPatchError("--call needs a function name or RVA")
    return list(items[:at]), CallSpec(call[0], tuple(call[1:]))


def _function(spec: CallSpec) -> str | int:
    try:
        return int(spec.function, 0)
    except ValueError:
        return spec.function


def _call(process: Process, spec: CallSpec, when: str) -> dict[str, Any]:
    arguments = [process.argument(text) for text in spec.arguments]
    document: dict[str, Any] = {
        "when": when,
        "function": spec.function,
        "arguments": list(spec.arguments),
    }
    try:
        result = process.call(_function(spec), *arguments)
    except EmulationFault as fault:
        document["fault"] = {
            "message": str(fault),
            "address": fault.address,
            "access": fault.access,
            "pc": fault.pc,
        }
        return document
    low = result & 0xFFFFFFFF
    document["result"] = result
    document["result_int32"] = low - (1 << 32) if low & 0x80000000 else low
    return document


def _report_document(report: ApplyReport) -> dict[str, Any]:
    return {
        "module": report.module,
        "outcome": report.outcome,
        "sequence": report.sequence,
        "replaced_sequence": report.replaced_sequence,
        "region_va": report.region_va,
        "region_size": report.region_size,
        "signature": report.signature.status.value if report.signature else None,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
        "redirects": [
            {
                "function": r.function,
                "old_va": r.old_va,
                "new_va": r.new_va,
                "strategy": r.strategy.name,
                "bytes": r.written.hex(),
            }
            for r in report.redirects
        ],
    }


@click.command(
    "apply",
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)
@click.argument(
    "items", metavar="IMAGE PKG [PKG ...] [--call FUNC ARG ...]", nargs=-1, type=click.UNPROCESSED
)
@click.option("--base", "base_text", default=None, help="Load the image at this address (rebased).")
@click.option(
    "--trust", multiple=True, type=click.Path(), help="A public key, or a directory of *.pub keys."
)
@click.option("--allow-unsigned", is_flag=True, help="Apply unsigned or untrusted packages.")
@click.option(
    "--wait",
    "wait_steps",
    default=0,
    type=click.IntRange(0, 10**9),
    help="Let threads in code being replaced run up to this many instructions to leave it.",
)
@click.option(
    "--rollback", "then_rollback", is_flag=True, help="Roll back to the baseline at the end."
)
@click.option(
    "--no-entry-point",
    "no_entry_point",
    is_flag=True,
    help="Do not run the image's entry point (DllMain) when loading it; its globals keep "
    "their initial data. For images whose start-up needs imports the emulator does not model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document instead of tables.")
def apply_command(
    items: tuple[str, ...],
    base_text: str | None,
    trust: tuple[str, ...],
    allow_unsigned: bool,
    wait_steps: int,
    then_rollback: bool,
    no_entry_point: bool,
    as_json: bool,
) -> None:
    """Load IMAGE into an emulated process and apply each PKG in order.

    With --call FUNC ARG ..., FUNC (an export name or an RVA) is called on the
    baseline, after the packages, and after --rollback; ARG is an integer,
    bytes:HEX (copied into emulated memory, pointer passed) or buffer:N.
    """
    from hpatch.apply import ApplyOptions, apply_package, rollback
    from hpatch.cli import _read_package_file  # the shared, size-capped reader
    from hpatch.emu import Process

    paths, spec = _split_items(items)
    if len(paths) < 2:
        raise click.UsageError("apply needs an IMAGE and at least one PKG")
    image_path, package_paths = paths[0], paths[1:]
    packages = [decode_package(_read_package_file(p)) for p in package_paths]
    image = load_image(image_path)
    base = _parse_int(base_text) if base_text is not None else None
    process = Process(image.identity.machine, search_path=[Path(image_path).parent])
    try:
        module = process.load_image(image, base=base, run_entry_point=not no_entry_point)
    except EmulationFault as fault:
        if no_entry_point:
            raise
        raise HPatchError(
            f"{fault} (--no-entry-point loads the image without running its entry point)"
        ) from fault
    loaded = process.module_pages(module)
    options = ApplyOptions(
        trust=TrustStore.from_paths(list(trust)) if trust else None,
        allow_unsigned=allow_unsigned,
        wait_steps=wait_steps,
    )
    document: dict[str, Any] = {
        "image": image.name,
        "machine": image.identity.machine.name,
        "base": module.base,
        "rebased": module.rebased,
        "packages": [],
        "calls": [],
    }
    console = Console(highlight=False, soft_wrap=True)

    def show_call(entry: dict[str, Any]) -> None:
        document["calls"].append(entry)
        if as_json:
            return
        head = f"{entry['when']}: {entry['function']}({', '.join(entry['arguments'])})"
        if "fault" in entry:
            console.print(f"{head} -> [bold red]fault[/bold red]: {entry['fault']['message']}")
        else:
            console.print(f"{head} -> {entry['result_int32']} (0x{entry['result']:x})")

    if not as_json:
        console.print(f"loaded {image.name} ({image.identity.machine.name}) at 0x{module.base:x}")
    if spec is not None:
        show_call(_call(process, spec, "baseline"))
    for path, package in zip(package_paths, packages, strict=True):
        report = apply_package(process, package, module=module, options=options)
        document["packages"].append({"path": path, **_report_document(report)})
        if not as_json:
            _print_report(console, report)
    if spec is not None:
        show_call(_call(process, spec, "patched"))
    if then_rollback:
        report = rollback(process, module, wait_steps=wait_steps)
        restored = process.module_pages(module) == loaded
        document["rollback"] = {**_report_document(report), "code_identical_to_baseline": restored}
        if not as_json:
            console.print(
                f"rolled back package {report.replaced_sequence}: code and protections "
                + (
                    "identical to the freshly loaded image"
                    if restored
                    else "[bold red]DIFFER[/bold red] from the loaded image"
                )
            )
        if spec is not None:
            show_call(_call(process, spec, "rolled back"))
        if not restored:
            raise HPatchError("the rolled-back image differs from the baseline")
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))


def _print_report(console: Console, report: ApplyReport) -> None:
    if report.outcome == "already applied":
        console.print(f"package {report.sequence} is applied already: nothing to do")
        return
    replaced = (
        f", replacing package {report.replaced_sequence}"
        if report.replaced_sequence is not None
        else ""
    )
    signature = report.signature.status.value if report.signature else "-"
    console.print(
        f"applied package {report.sequence} to {report.module}{replaced}: region "
        f"0x{report.region_va:x} (0x{report.region_size:x} bytes), signature {signature}"
    )
    table = Table(box=None, pad_edge=False)
    for column in ("function", "old address", "new address", "strategy", "bytes written"):
        table.add_column(column)
    for redirect in report.redirects:
        table.add_row(
            redirect.function,
            f"0x{redirect.old_va:x}",
            f"0x{redirect.new_va:x}",
            redirect.strategy.name,
            redirect.written.hex(" "),
        )
    console.print(table)
