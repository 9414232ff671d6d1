"""Time the native core against its pure-Python twin on identical inputs, in one run.

    python bench/native_bench.py [--repeat N] [--fixups N] [--redirects N]

- fixup application: one batch of 1,000,000 mixed valid fixups (every kind) into an
  8 MB buffer, through ``apply_fixups`` of ``hpatch._native`` and ``hpatch._fallback``;
- redirect encoding: 100,000 ``encode_redirect`` calls per strategy;
- normalisation: every function part (entry and fragments, as the fingerprints cut
  them) of the largest x64 binary of the real-world corpus through ``normalise_x64``,
  and of the largest ARM64 binary through ``normalise_arm64`` when both backends have
  it. MB/s counts the code bytes normalised;
- the whole command: ``hpatch diff --json OLD NEW`` on the largest corpus pair (by the
  size of both files), as a subprocess with the C core and with
  ``HPATCH_PURE_PYTHON=1``, runs alternating between the two, median of
  ``--diff-runs`` each (0 skips it); the two JSON documents must be equal.

The native figure of the function rows is the best of N runs (the machine is shared:
the minimum is the least disturbed run); the fallback, much slower, runs once.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from corpus import corpus_pairs

from hpatch import _fallback, _native
from hpatch.arch.rewrite import Fixup, Redirect
from hpatch.image import load_image

VA = 0x1_4000_1000
BASE = 0x1_4000_0000
SLOT = 8  # bytes of buffer per fixup: the widest field

# An instruction of the class each ARM64 kind names, immediate 0, and how far its
# target may be (bytes; pages are checked on the target itself).
ARM64_WORDS = {
    Fixup.ARM64_BRANCH26: (0x94000000, 1 << 27),  # bl
    Fixup.ARM64_BRANCH19: (0xB4000003, 1 << 20),  # cbz x3
    Fixup.ARM64_BRANCH14: (0x37380003, 1 << 15),  # tbnz w3, #7
    Fixup.ARM64_PAGEBASE_REL21: (0x90000000, 1 << 31),  # adrp x0
    Fixup.ARM64_REL21: (0x10000004, 1 << 20),  # adr x4
    Fixup.ARM64_PAGEOFFSET_12A: (0x91000041, 1 << 31),  # add x1, x2, #0
    Fixup.ARM64_PAGEOFFSET_12L: (0xF9400041, 1 << 31),  # ldr x1, [x2]
}


def fixup_batch(count: int) -> tuple[bytes, bytes]:
    """(buffer, packed records): ``count`` valid fixups cycling through every kind."""
    rng = random.Random(0)
    kinds = list(Fixup)
    buffer = bytearray(SLOT * count)
    packed = bytearray(16 * count)
    for index in range(count):
        kind = kinds[index % len(kinds)]
        offset = SLOT * index
        site = VA + offset
        if kind in ARM64_WORDS:
            word, reach = ARM64_WORDS[kind]
            struct.pack_into("<I", buffer, offset, word)
            # 8-aligned: the LDR X's page offset is scaled by 8
            target = site + 8 * rng.randrange(-reach // 16, reach // 16)
        elif kind in (Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB):
            target = BASE + rng.randrange(1 << 32)
        elif kind in (Fixup.X64_ADDR64, Fixup.ARM64_ADDR64):
            target = rng.randrange(1 << 64)
        else:
            target = site + rng.randrange(-(1 << 30), 1 << 30)
        struct.pack_into("<IHHQ", packed, 16 * index, offset, kind, 0, target)
    return bytes(buffer), bytes(packed)


def timed(
    action: Callable[[], object], repeat: int, prepare: Callable[[], None] = lambda: None
) -> tuple[float, object]:
    """(best time of ``repeat`` runs, what the last run returned); as timeit, the
    cyclic garbage collector is off while the clock runs."""
    timings = []
    result = None
    gc.collect()
    for _ in range(repeat):
        prepare()
        result = None
        gc.disable()
        try:
            start = time.perf_counter()
            result = action()
            timings.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(timings), result


def bench_fixups(count: int, repeat: int) -> tuple[float, float]:
    buffer, records = fixup_batch(count)
    results = []
    for module, runs in ((_native, repeat), (_fallback, 1)):
        target = bytearray(buffer)

        def reset(target: bytearray = target) -> None:
            target[:] = buffer

        seconds, _ = timed(
            lambda m=module, t=target: m.apply_fixups(t, VA, BASE, records), runs, reset
        )
        results.append((seconds, bytes(target)))
    assert results[0][1] == results[1][1], "the backends disagree"
    return results[0][0], results[1][0]


def bench_redirects(count: int, repeat: int) -> list[tuple[str, float, float]]:
    pairs = [(VA + 16 * i, VA + 16 * i + 0x10_0000) for i in range(count)]
    rows = []
    for strategy in Redirect:
        timings, outputs = [], []
        for module, runs in ((_native, repeat), (_fallback, 1)):
            encode = module.encode_redirect
            seconds, output = timed(lambda e=encode, s=strategy: [e(s, *p) for p in pairs], runs)
            timings.append(seconds)
            outputs.append(output)
        assert outputs[0] == outputs[1], "the backends disagree"
        rows.append((strategy.name, timings[0], timings[1]))
    return rows


def _machine(path: Path) -> int:
    head = path.read_bytes()[:4096]
    (pe,) = struct.unpack_from("<I", head, 0x3C)
    return struct.unpack_from("<H", head, pe + 4)[0]


def largest_binary(machine: int) -> Path | None:
    paths = {p for _, old, new in corpus_pairs() for p in (old, new)}
    found = [p for p in paths if _machine(p) == machine]
    return max(found, key=lambda p: (p.stat().st_size, str(p))) if found else None


def function_parts(path: Path) -> list[tuple[bytes, int, int, int, bytes, int]]:
    """(code, code_rva, lo, hi, relocated, image_base) of every function part, as
    hpatch.diff.fingerprint cuts and calls them."""
    image = load_image(path.read_bytes())
    relocated = array("I", sorted(r.rva for r in image.relocations)).tobytes()
    parts = []
    for function in image.functions:
        spans = [(function.rva, function.end_rva, function.extent_end)]
        spans += [(f.rva, f.rva + f.size, f.rva + f.size) for f in function.fragments]
        for start, end, own_end in spans:
            if end > start:
                code = image.read(start, end - start)
                parts.append((code, start, start, own_end, relocated, image.image_base))
    return parts


def bench_normalise(name: str, path: Path, repeat: int) -> tuple[int, int, float, float]:
    parts = function_parts(path)
    size = sum(len(p[0]) for p in parts)
    timings, outputs = [], []
    for module, runs in ((_native, repeat), (_fallback, 1)):
        normalise = getattr(module, name)
        seconds, output = timed(lambda f=normalise: [f(*part) for part in parts], runs)
        timings.append(seconds)
        outputs.append(output)
    assert outputs[0] == outputs[1], "the backends disagree"
    return len(parts), size, timings[0], timings[1]


def largest_pair() -> tuple[str, Path, Path] | None:
    pairs = corpus_pairs()
    if not pairs:
        return None
    return max(pairs, key=lambda p: (p[1].stat().st_size + p[2].stat().st_size, p[0]))


def bench_cli_diff(old: Path, new: Path, runs: int) -> tuple[float, float]:
    """Median wall time of ``hpatch diff --json old new`` with each core; the runs
    alternate so that a change in the load of a shared machine hits both alike."""
    timings: dict[str, list[float]] = {"0": [], "1": []}
    outputs: dict[str, str] = {}
    command = [sys.executable, "-m", "hpatch", "diff", "--json", str(old), str(new)]
    for _ in range(runs):
        for pure in ("0", "1"):
            env = dict(
                os.environ, HPATCH_PURE_PYTHON=pure, HPATCH_REQUIRE_NATIVE=str(1 - int(pure))
            )
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            timings[pure].append(time.perf_counter() - start)
            if done.returncode not in (0, 3):  # 3: not hotpatchable, still a full diff
                raise SystemExit(f"hpatch diff failed ({done.returncode}): {done.stderr}")
            outputs[pure] = done.stdout
    assert outputs["0"] == outputs["1"], "the backends disagree"
    return statistics.median(timings["0"]), statistics.median(timings["1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="native runs (best of)")
    parser.add_argument("--fixups", type=int, default=1_000_000)
    parser.add_argument("--redirects", type=int, default=100_000)
    parser.add_argument("--diff-runs", type=int, default=3, help="hpatch diff runs per core")
    args = parser.parse_args()

    print("| work | size | native | fallback | speedup | native throughput |")
    print("|---|---:|---:|---:|---:|---:|")

    def row(work: str, size: str, native: float, fallback: float, throughput: str) -> None:
        print(
            f"| {work} | {size} | {native * 1000:.1f} ms | {fallback * 1000:.0f} ms"
            f" | {fallback / native:.0f}x | {throughput} |",
            flush=True,
        )

    native, fallback = bench_fixups(args.fixups, args.repeat)
    row(
        "apply_fixups, all kinds",
        f"{args.fixups:,} fixups",
        native,
        fallback,
        f"{args.fixups / native / 1e6:.0f} M fixups/s",
    )
    for name, native, fallback in bench_redirects(args.redirects, args.repeat):
        row(
            f"encode_redirect {name}",
            f"{args.redirects:,} calls",
            native,
            fallback,
            f"{args.redirects / native / 1e6:.1f} M calls/s",
        )
    targets = [("normalise_x64", 0x8664)]
    if hasattr(_native, "normalise_arm64") and hasattr(_fallback, "normalise_arm64"):
        targets.append(("normalise_arm64", 0xAA64))
    for name, machine in targets:
        path = largest_binary(machine)
        if path is None:
            print(f"| {name} | no corpus binary (run ../shared/corpus/fetch.sh) | | | | |")
            continue
        parts, size, native, fallback = bench_normalise(name, path, args.repeat)
        pair = path.parent.name
        row(
            f"{name}: {pair}/{path.name}, {parts:,} function parts",
            f"{size / 1e6:.2f} MB",
            native,
            fallback,
            f"{size / native / 1e6:.0f} MB/s",
        )
    pair = largest_pair()
    if args.diff_runs and pair is not None:
        pair_id, old, new = pair
        native, fallback = bench_cli_diff(old, new, args.diff_runs)
        size = (old.stat().st_size + new.stat().st_size) / 1e6
        print()
        print("| command | pair | size (both files) | C core | pure Python | speedup |")
        print("|---|---|---:|---:|---:|---:|")
        print(
            f"| `hpatch diff --json`, median of {args.diff_runs} | {pair_id} | {size:.1f} MB"
            f" | {native:.2f} s | {fallback:.2f} s | {fallback / native:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
