"""``hpatch apply``: load an image into an emulated process, apply packages, call."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from hpatch import __version__
from hpatch.cli.inputs import read_image, read_package_file
from hpatch.cli.output import console as output_console
from hpatch.cli.output import error_fields, mark_reported
from hpatch.cli.tables import Column, fitted_table
from hpatch.errors import CheckRefused, EmulationFault, HPatchError
from hpatch.image import PEImage, SectionFlags
from hpatch.package import Package, target_digest
from hpatch.package.checks import check_prerequisites
from hpatch.package.envelope import read_trusted
from hpatch.package.model import EncodedPackage
from hpatch.package.signing import TrustStore
from hpatch.report import apply_document
from hpatch.text import json_text, markup, path_text, plain

if TYPE_CHECKING:  # the emulator (Unicorn) loads only when ``apply`` runs
    from hpatch.apply import ApplyReport
    from hpatch.emu import Process

CALL_MARKER = "--call"
#: The ``hpatch apply --json`` document's schema. 1: the first with a schema, an
#: ``error`` and the ``rolled_back`` record of a run that failed. 2: ``hpatch_version``;
#: ``error`` is the object every command's failure document holds (code, exit_code,
#: message, file).
APPLY_SCHEMA = "hpatch.apply/2"
_WORD = 1 << 64


@dataclass(frozen=True, slots=True)
class CallSpec:
    """A function and its arguments as given on the command line."""

    function: str
    arguments: tuple[str, ...]


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise HPatchError(f"{what} '{plain(text)}' is not an integer") from None


def _base(text: str | None) -> int | None:
    """--base: a 64 KiB-aligned address the image can start at (Windows' granularity)."""
    if text is None:
        return None
    base = _parse_int(text, "--base")
    if base <= 0 or base >= _WORD or base % 0x10000:
        raise HPatchError(
            f"--base {plain(text)}: expected a non-zero address below 2^64 that is a "
            "multiple of 64 KiB (0x10000)"
        )
    return base


def _split_items(items: tuple[str, ...]) -> tuple[list[str], CallSpec | None]:
    if CALL_MARKER not in items:
        return list(items), None
    at = items.index(CALL_MARKER)
    call = items[at + 1 :]
    if not call:
        raise HPatchError("--call needs a function name or RVA")
    return list(items[:at]), CallSpec(call[0], tuple(call[1:]))


def _check_arguments(spec: CallSpec) -> None:
    """Integer arguments are 64-bit words: -2^63 .. 2^64-1, never silently wrapped."""
    for text in spec.arguments:
        if text.startswith(("bytes:", "buffer:")):
            continue
        value = _parse_int(text, "--call argument")
        if not -(1 << 63) <= value < _WORD:
            raise HPatchError(
                f"--call argument {plain(text)} does not fit 64 bits (-2^63 .. 2^64-1)"
            )


def _code_rva(image: PEImage, spec: CallSpec, base: int) -> int | None:
    """FUNC given as a number: the RVA (or a VA of the loaded image) of executable
    code; None when FUNC is a name."""
    try:
        value = int(spec.function, 0)
    except ValueError:
        return None
    shown = plain(spec.function)
    if value < 0:
        raise HPatchError(f"--call {shown}: an RVA is not negative")
    rva = value if value < image.identity.size_of_image else value - base
    if not 0 <= rva < image.identity.size_of_image:
        raise HPatchError(f"--call {shown}: neither an RVA nor an address of {plain(image.name)}")
    for section in image.sections:
        if section.rva <= rva < section.rva + section.virtual_size:
            if section.characteristics & SectionFlags.MEM_EXECUTE:
                return rva
            raise HPatchError(
                f"--call {shown}: RVA 0x{rva:x} is in {plain(section.name)}, which is not code"
            )
    raise HPatchError(f"--call {shown}: RVA 0x{rva:x} is in no section of {plain(image.name)}")


def _call(process: Process, spec: CallSpec, when: str, target: str | int) -> dict[str, Any]:
    arguments = [process.argument(text) for text in spec.arguments]
    document: dict[str, Any] = {
        "when": when,
        "function": spec.function,
        "arguments": list(spec.arguments),
    }
    try:
        result = process.call(target, *arguments)
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


def _read_encoded(data: bytes, store: TrustStore | None, allow_unsigned: bool) -> EncodedPackage:
    """The package of a file's bytes, its signature checked over them before anything
    is decoded; kept with the bytes, so the applier checks and records those."""
    return EncodedPackage(read_trusted(data, store, allow_unsigned=allow_unsigned)[0], data)


def check_before_loading(image: PEImage, path: str, package: Package) -> None:
    """The package's prerequisites (machine, baseline identity, format) against the
    file, before the emulator runs anything of it."""
    for result in check_prerequisites(package, image):
        if result.passed:
            continue
        detail = result.detail
        if result.name == "baseline" and target_digest(image) == package.servicing.target_sha256:
            detail = (
                f"this image is already the package's target build "
                f"(sequence {package.servicing.sequence} installs it); {detail}"
            )
        raise CheckRefused(f"{path_text(path)}: check '{result.name}' failed: {detail}")


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

    All or nothing: when a package fails, the ones this run applied are rolled back
    and the image is left as it was loaded. With --call FUNC ARG ..., FUNC (an export
    name or the RVA of code) is called on the baseline, after the packages, and after
    --rollback; ARG is an integer, bytes:HEX (copied into emulated memory, pointer
    passed) or buffer:N.
    """
    paths, spec = _split_items(items)
    if len(paths) < 2:
        raise click.UsageError("apply needs an IMAGE and at least one PKG")
    document: dict[str, Any] = {
        "schema": APPLY_SCHEMA,
        "hpatch_version": __version__,
        "image": None,
        "machine": None,
        "base": None,
        "rebased": None,
        "packages": [],
        "calls": [],
        "error": None,
        "rolled_back": None,
    }
    run = _Run(document, as_json, output_console())
    try:
        run.apply(
            paths[0],
            paths[1:],
            spec,
            _base(base_text),
            trust,
            allow_unsigned,
            wait_steps,
            then_rollback,
            no_entry_point,
        )
    except HPatchError as error:
        document["error"] = error_fields(error)
        if as_json:
            mark_reported(error)
        raise
    finally:
        # The document is printed however the run ends: what was applied, what undone.
        if as_json:
            click.echo(json_text(document, sort_keys=True))


class _Run:
    """One ``hpatch apply``: fills the document as it goes, prints the text form."""

    def __init__(self, document: dict[str, Any], as_json: bool, console: Console) -> None:
        self.document = document
        self.as_json = as_json
        self.console = console

    def say(self, text: str) -> None:
        if not self.as_json:
            self.console.print(text)

    def show_call(self, entry: dict[str, Any]) -> None:
        self.document["calls"].append(entry)
        head = (
            f"{entry['when']}: {markup(entry['function'])}({markup(', '.join(entry['arguments']))})"
        )
        if "fault" in entry:
            self.say(f"{head} -> [bold red]fault[/bold red]: {markup(entry['fault']['message'])}")
        else:
            self.say(f"{head} -> {entry['result_int32']} (0x{entry['result']:x})")

    def apply(
        self,
        image_path: str,
        package_paths: list[str],
        spec: CallSpec | None,
        base: int | None,
        trust: tuple[str, ...],
        allow_unsigned: bool,
        wait_steps: int,
        then_rollback: bool,
        no_entry_point: bool,
    ) -> None:
        from hpatch.apply import ApplyOptions, active_patch, apply_package, rollback
        from hpatch.emu import Process

        document = self.document
        store = TrustStore.from_paths(list(trust)) if trust else None
        # Each signature is checked over the raw bytes before the package is decoded.
        packages = [
            _read_encoded(read_package_file(p), store, allow_unsigned) for p in package_paths
        ]
        image = read_image(image_path)
        document.update(image=image.name, machine=image.identity.machine.name)
        for path, encoded in zip(package_paths, packages, strict=True):
            check_before_loading(image, path, encoded.package)
        if spec is not None:
            _check_arguments(spec)
            # Numbers are checked against the file now; the VA form needs the base.
            _code_rva(image, spec, base if base is not None else image.identity.image_base)
        options = ApplyOptions(
            trust=store,
            allow_unsigned=allow_unsigned,
            wait_steps=wait_steps,
        )
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
        document.update(base=module.base, rebased=module.rebased)
        target: str | int = spec.function if spec is not None else ""
        if spec is not None:
            rva = _code_rva(image, spec, module.base)
            target = module.base + rva if rva is not None else spec.function
        self.say(
            f"loaded {markup(image.name)} ({image.identity.machine.name}) at 0x{module.base:x}"
        )
        if spec is not None:
            self.show_call(_call(process, spec, "baseline", target))
        for path, encoded in zip(package_paths, packages, strict=True):
            try:
                report = apply_package(process, encoded, module=module, options=options)
            except HPatchError as error:
                message = f"{path_text(path)}: {error}"
                if active_patch(module) is not None:
                    # All or nothing: what this run applied goes, the image is as loaded.
                    try:
                        undone = rollback(process, module, wait_steps=wait_steps)
                    except HPatchError as undo_error:
                        raise HPatchError(
                            f"{message}; rolling back what this run applied failed too: "
                            f"{undo_error}"
                        ) from error
                    restored = process.module_pages(module) == loaded
                    document["rolled_back"] = {
                        **apply_document(undone),
                        "code_identical_to_baseline": restored,
                    }
                    self.say(
                        f"rolled back package {undone.replaced_sequence}, which this run "
                        "applied: the image "
                        + ("is as it was loaded" if restored else "[bold red]DIFFERS[/bold red]")
                    )
                    message += (
                        f"; rolled back package {undone.replaced_sequence}, which this run applied"
                        + ("" if restored else ", but the image differs from the one loaded")
                    )
                # a refused check stays one (exit 6), whatever was rolled back
                raise (CheckRefused if isinstance(error, CheckRefused) else HPatchError)(
                    message
                ) from error
            document["packages"].append({"path": path_text(path), **apply_document(report)})
            if not self.as_json:
                _print_report(self.console, report)
        if spec is not None:
            self.show_call(_call(process, spec, "patched", target))
        if then_rollback:
            report = rollback(process, module, wait_steps=wait_steps)
            restored = process.module_pages(module) == loaded
            document["rollback"] = {
                **apply_document(report),
                "code_identical_to_baseline": restored,
            }
            self.say(
                f"rolled back package {report.replaced_sequence}: code and protections "
                + (
                    "identical to the freshly loaded image"
                    if restored
                    else "[bold red]DIFFER[/bold red] from the loaded image"
                )
            )
            if spec is not None:
                self.show_call(_call(process, spec, "rolled back", target))
            if not restored:
                raise HPatchError("the rolled-back image differs from the baseline")


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
        f"applied package {report.sequence} to {markup(report.module)}{replaced}: region "
        f"0x{report.region_va:x} (0x{report.region_size:x} bytes), signature {signature}"
    )
    columns = (
        Column("function"),
        Column("old address", "right", drop=2),
        Column("new address", "right", drop=3),
        Column("strategy", drop=1),
        Column("bytes written", prose=True, drop=4),
    )
    rows = [
        (
            markup(redirect.function),
            f"0x{redirect.old_va:x}",
            f"0x{redirect.new_va:x}",
            redirect.strategy.name,
            redirect.written.hex(" "),
        )
        for redirect in report.redirects
    ]
    console.print(fitted_table(None, columns, rows, console.width))
