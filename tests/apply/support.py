"""Sample packages with chosen sequence numbers, processes, and the bugs' calls."""

from __future__ import annotations

import json
from functools import cache

from hpatch.arch import Machine
from hpatch.emu import Process
from hpatch.errors import EmulationFault
from hpatch.package import BuildOptions, Package, build_package

from ..conftest import REPO, SAMPLES
from ..diff.samples import sample_diff

BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")
IMAGE = "sample.stripped.dll"
REBASED = 0x7FF6_0000_0000
BUGS = json.loads((REPO / "samples" / "bugs.json").read_text())["bugs"]
#: Calls no package of v1->v2 or v1->v3 changes (their results must not move).
UNAFFECTED = (
    ("hp_crc32", ["bytes:313233343536373839", 9]),
    ("hp_adler32", ["bytes:313233343536373839", 9]),
    ("hp_url_encode", ["bytes:6120622f63", 5, "buffer:32", 32]),
)


@cache
def package(build: str, old: str, new: str, sequence: int) -> Package:
    """The package turning ``old`` into ``new``, numbered ``sequence`` (cumulative:
    it supersedes every earlier one)."""
    options = BuildOptions(
        sequence=sequence,
        supersedes=(1, sequence - 1) if sequence > 1 else None,
        description=f"{old} to {new}",
    )
    return build_package(sample_diff(build, old, new), options)


def machine(build: str) -> Machine:
    return Machine.ARM64 if build.startswith("arm64") else Machine.AMD64


def process(build: str, version: str = "v1", base: int | None = None) -> Process:
    """A process running ``version`` of the stripped sample (samplehost.dll beside it)."""
    result = Process(machine(build))
    result.load_image(SAMPLES / build / version / IMAGE, base=base)
    return result


def call(target: Process, function: str, arguments: list) -> object:
    """Call with ``bytes:HEX`` / ``buffer:N`` arguments made fresh; the int32 result,
    or ("fault", access) when the call faults."""
    values = [target.argument(argument) for argument in arguments]
    try:
        result = target.call(function, *values) & 0xFFFFFFFF
    except EmulationFault as fault:
        return ("fault", fault.access)
    return result - (1 << 32) if result & 0x80000000 else result


def outcomes(target: Process) -> list[object]:
    """Every bug's call, then every unaffected call."""
    return [call(target, bug["function"], bug["call"]) for bug in BUGS] + [
        call(target, function, arguments) for function, arguments in UNAFFECTED
    ]
