"""Time to apply (and roll back) a package of 100+ patched functions in the emulator.

    python bench/bench_apply.py [--runs N]

Loading the image is excluded. For the x64 and ARM64 real-world corpus images (the
old side of the largest pair per machine; the samples when no corpus is fetched) a
package is made that replaces N functions that can take a direct redirect (N = 100
and 400) with a small bound stub each (x64 ``lea rax, [rip+entry]; ret``, ARM64
``adrp/add/ret``: one or two fixups per function against the old image). Each run
applies it to the loaded process (every check, the thread-safety walk, region,
binding, unwind table, redirects) and rolls it back; the medians of apply, of its
publish step (first redirect write to last) and of rollback are printed. The first
run is a warm-up: it pays for function discovery on the image, which an operator's
process would have done once.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

from corpus import corpus_pairs

from hpatch.apply import ApplyOptions, apply_package, rollback
from hpatch.arch import Machine, arch_for
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.diff.verdict import redirect_problem
from hpatch.emu import Process
from hpatch.image import PEImage, load_image
from hpatch.package.build import REGION_ALIGNMENT, baseline_of, target_digest
from hpatch.package.model import (
    FORMAT_VERSION,
    Blob,
    BlobKind,
    FixupEntry,
    FunctionStatus,
    Package,
    Part,
    PatchFunction,
    Prerequisite,
    RedirectEntry,
    Servicing,
    TargetKind,
)

REPO = Path(__file__).resolve().parent.parent
_STUB = {
    Machine.AMD64: (bytes.fromhex("488d0500000000c3"), ((3, Fixup.X64_REL32),)),
    Machine.ARM64: (
        bytes.fromhex("0000009000000091c0035fd6"),
        ((0, Fixup.ARM64_PAGEBASE_REL21), (4, Fixup.ARM64_PAGEOFFSET_12A)),
    ),
}
_STRATEGY = {Machine.AMD64: Redirect.X64_JMP_REL32, Machine.ARM64: Redirect.ARM64_B}


def synthetic_package(image: PEImage, count: int) -> Package:
    """A package replacing ``count`` functions of ``image`` with bound stubs."""
    machine = image.identity.machine
    strategy = _STRATEGY[machine]
    stub, stub_fixups = _STUB[machine]
    chosen = [f for f in image.functions if redirect_problem(image, f, strategy) is None]
    if len(chosen) < count:
        raise SystemExit(f"{image.name}: only {len(chosen)} functions take a {strategy.name}")
    functions, fixups, redirects, code = [], [], [], bytearray()
    for function in chosen[:count]:
        offset = len(code)
        code += stub + bytes(-len(stub) % 16)
        functions.append(
            PatchFunction(
                FunctionStatus.MODIFIED,
                function.rva,
                function.size,
                function.rva,
                "",
                (Part(offset, len(stub), function.rva),),
            )
        )
        fixups.extend(
            FixupEntry(offset + at, kind, TargetKind.OLD_RVA, function.rva)
            for at, kind in stub_fixups
        )
        start, length = strategy.span
        digest = hashlib.sha256(image.read(function.rva + start, length)).digest()
        redirects.append(RedirectEntry(function.rva, strategy, offset, digest))
    baseline = baseline_of(image)
    return Package(
        machine=machine,
        baseline=baseline,
        servicing=Servicing(
            1, None, "synthetic benchmark package", "", "bench", target_digest(image)
        ),
        prerequisites=(
            (Prerequisite.MACHINE, int(machine)),
            (Prerequisite.BASELINE, 0),
            (Prerequisite.MIN_FORMAT_VERSION, FORMAT_VERSION),
            (Prerequisite.NOT_HYBRID, 0),
            (Prerequisite.REGION_REACH, arch_for(machine).region_reach),
        ),
        region_size=len(code),
        region_alignment=REGION_ALIGNMENT,
        blobs=(Blob(BlobKind.CODE, 0, bytes(code)),),
        functions=tuple(functions),
        imports=(),
        fixups=tuple(fixups),
        redirects=tuple(redirects),
        unwind=(),
    )


def images() -> list[Path]:
    found: dict[Machine, Path] = {}
    for _, old, _new in corpus_pairs():
        machine = load_image(old).identity.machine
        if machine not in found or old.stat().st_size > found[machine].stat().st_size:
            found[machine] = old
    for build in ("x64-clang", "arm64-clang"):
        sample = REPO / "samples" / "bin" / build / "v1" / "sample.stripped.dll"
        found.setdefault(load_image(sample).identity.machine, sample)
    return [found[m] for m in (Machine.AMD64, Machine.ARM64) if m in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=31)
    runs = parser.parse_args().runs
    options = ApplyOptions(allow_unsigned=True)
    columns = ("image", "machine", "patched functions", "apply", "publish", "rollback")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---:|---:|---:|")
    for path in images():
        image = load_image(path)
        process = Process(image.identity.machine)
        module = process.load_image(image, run_entry_point=False)
        for count in (100, 400):
            package = synthetic_package(image, count)
            applies, publishes, rollbacks = [], [], []
            for run in range(runs + 1):
                started = time.perf_counter_ns()
                report = apply_package(process, package, module=module, options=options)
                applied = time.perf_counter_ns()
                rollback(process, module)
                ended = time.perf_counter_ns()
                if run:
                    applies.append(applied - started)
                    publishes.append(report.publish_ns)
                    rollbacks.append(ended - applied)
            print(
                f"| {path.parent.name if path.name.startswith('old') else path.name} "
                f"| {image.identity.machine.name} | {count} "
                f"| {statistics.median(applies) / 1e6:.2f} ms "
                f"| {statistics.median(publishes) / 1e6:.3f} ms "
                f"| {statistics.median(rollbacks) / 1e6:.2f} ms |"
            )


if __name__ == "__main__":
    main()
