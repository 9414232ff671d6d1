"""Does a package apply to an image? Each prerequisite checked on its own and reported.

The applier runs these before anything else and refuses on the first failure; a
report lists them all so an operator sees every reason at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpatch.arch import machine_name
from hpatch.image import PEImage
from hpatch.package.model import FORMAT_VERSION, Baseline, Package, Prerequisite


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One prerequisite: its name, whether it holds, and what was found."""

    name: str
    passed: bool
    detail: str


def baseline_mismatches(baseline: Baseline, image: PEImage) -> list[str]:
    """The identity fields in which ``image`` differs from ``baseline`` (empty: it is it)."""
    identity = image.identity
    found = []
    for field, expected, actual, shown in (
        ("machine", baseline.machine, identity.machine, lambda v: getattr(v, "name", v)),
        ("TimeDateStamp", baseline.time_date_stamp, identity.time_date_stamp, "0x{:08x}".format),
        ("SizeOfImage", baseline.size_of_image, identity.size_of_image, "0x{:x}".format),
        ("CheckSum", baseline.checksum, identity.checksum, "0x{:08x}".format),
        (
            "mapped SHA-256",
            baseline.mapped_sha256.hex(),
            identity.mapped_sha256,
            str,
        ),
    ):
        if expected != actual:
            found.append(
                f"{field}: the package needs {shown(expected)}, the image has {shown(actual)}"
            )
    if baseline.file_name.lower() != image.name.lower():
        found.append(
            f"file name: the package needs {baseline.file_name}, the image is {image.name}"
        )
    return found


def check_prerequisites(package: Package, image: PEImage) -> list[CheckResult]:
    """Every prerequisite of ``package`` checked against ``image``, in the package's order.

    Placement prerequisites (region reach, region above the image) concern where the
    applier puts the patch region and are reported here as requirements it must meet.
    """
    results = []
    for kind, value in package.prerequisites:
        if kind == Prerequisite.MACHINE:
            machine = int(image.identity.machine)
            results.append(
                CheckResult(
                    "machine",
                    machine == value,
                    f"needs {machine_name(value)}, the image is {machine_name(machine)}",
                )
            )
        elif kind == Prerequisite.BASELINE:
            mismatches = baseline_mismatches(package.baseline, image)
            results.append(
                CheckResult(
                    "baseline",
                    not mismatches,
                    "; ".join(mismatches) or f"{image.name} is the baseline",
                )
            )
        elif kind == Prerequisite.MIN_FORMAT_VERSION:
            results.append(
                CheckResult(
                    "format version",
                    value <= FORMAT_VERSION,
                    f"needs format {value}, this hpatch applies up to {FORMAT_VERSION}",
                )
            )
        elif kind == Prerequisite.NOT_HYBRID:
            # PEImage refuses CHPE/ARM64EC/ARM64X images when it loads them.
            results.append(CheckResult("not hybrid", True, "not a CHPE/ARM64EC/ARM64X image"))
        elif kind == Prerequisite.REGION_REACH:
            results.append(
                CheckResult(
                    "region reach",
                    True,
                    f"the patch region must lie within 0x{value:x} bytes of the whole image",
                )
            )
        elif kind == Prerequisite.REGION_ABOVE_IMAGE:
            results.append(
                CheckResult(
                    "region above image", True, "the patch region must lie above the image base"
                )
            )
    return results
