"""The reliability figures of docs/reliability.md, at full scale.

    python -m tests.reliability.figures [--seconds S] [--load-trials N] [--seed SEED]
                                        [--only fuzz flips refusals faults load hostile]
                                        [--targets TARGET ...] [--json PATH]

- fuzz: each campaign (package-reader, package-applier, image-reader, image-loader)
  for ``--seconds`` in isolated child processes (isolation.py); cases that fail are
  saved to tests/reliability/corpus/. The image campaigns also mutate the real-world
  corpus's binaries up to 512 KiB when it is fetched.
- flips: every single-bit flip of every signed sample package, read and applied.
- refusals: the trust scenarios, every build, at the preferred base and rebased.
- faults: every step of every operation failed with each kind of error, every build,
  at the preferred base and rebased.
- load: ``--load-trials`` patch-under-load trials per architecture (x64: shared by the
  three x64 builds).
- hostile: the command line against PE mutants (unbacked sizes, names that are not
  UTF-8 or carry markup, a million .pdata entries or exports), hostile packages
  re-signed with the trusted key, package bombs, misuse with device nodes, FIFOs,
  symbolic links and long names, and concurrent writers (hostile.py); ``--kinds``
  picks some of them.

Exits 1 if anything unexpected happened.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from dataclasses import asdict

from ..apply.support import REBASED
from . import hostile as hostile_campaigns
from .campaigns import TARGETS
from .faults import KINDS, OPERATIONS, FaultTally, inject_every_step
from .isolation import isolated
from .load import LoadTally, run_trials
from .samples import ARCHITECTURES, BUILDS, PAIRS
from .tamper import FlipTally, flip_bits, refusals, refuse

SECTIONS = ("fuzz", "flips", "refusals", "faults", "load", "hostile")


def fuzz(
    seconds: float, seed: str, with_corpus: bool, targets: list[str]
) -> tuple[list[dict], int]:
    rows, failures = [], 0
    for name in targets:
        started = time.perf_counter()
        tally = isolated(name, seed, seconds=seconds, with_corpus=with_corpus)
        wall = time.perf_counter() - started
        failures += tally.failures
        per_case = tally.seconds / max(tally.executions, 1)
        print(
            f"{name}: {tally.executions} executions in {wall:.0f} s (running the cases: "
            f"{tally.seconds:.0f} s, {1000 * per_case:.1f} ms each, slowest "
            f"{tally.slowest:.2f} s: {tally.slowest_case}; the rest is making them); "
            f"unexpected {len(tally.unexpected)}, hangs {tally.hangs}, crashes {tally.crashes}, "
            f"memory {tally.memory}, slow {tally.slow}; peak RSS {tally.peak_rss_kib // 1024} MiB; "
            f"outcomes {dict(tally.outcomes)}",
            flush=True,
        )
        for line in tally.unexpected[:20]:
            print("  ", line)
        rows.append({**tally.to_json(), "wall_seconds": wall})
    return rows, failures


def flips() -> tuple[dict, int]:
    total = FlipTally()
    for build in BUILDS:
        for old, new, sequence in PAIRS:
            total.merge(flip_bits(build, old, new, sequence))
    print(
        f"bit flips: {total.tried} tried, {total.rejected} rejected "
        f"({total.by_reader} by the reader, {total.by_applier} by the applier's signature "
        f"check); accepted {len(total.accepted)}, process changed {len(total.changed)}",
        flush=True,
    )
    return asdict(total), len(total.accepted) + len(total.changed)


def trust() -> tuple[dict, int]:
    tried, failures, messages = 0, 0, {}
    for build in BUILDS:
        for base in (None, REBASED):
            for refusal in refusals(build):
                tried += 1
                message, unchanged = refuse(build, refusal, base)
                if not (unchanged and re.search(refusal.message, message)):
                    failures += 1
                    print(f"  {build} {refusal.name}: {message} (unchanged: {unchanged})")
                messages.setdefault(refusal.name, message)
    print(f"trust refusals: {tried} tried, {tried - failures} refused with their message")
    for name, message in messages.items():
        print(f"  {name}: {message}")
    return {"tried": tried, "refused": tried - failures, "messages": messages}, failures


def faults() -> tuple[dict, int]:
    total = FaultTally()
    for build in BUILDS:
        for base in (None, REBASED):
            for operation, version in OPERATIONS:
                for kind in KINDS:
                    total.merge(inject_every_step(build, operation, version, base, kind))
    print(
        f"faults: {total.injected} injected, {total.restored} images restored; "
        f"steps {sorted(total.steps)}",
        flush=True,
    )
    for line in total.failures[:20]:
        print("  ", line)
    document = {"injected": total.injected, "restored": total.restored}
    return document, len(total.failures)


def load(trials: int, seed: str) -> tuple[dict, int]:
    document, failures = {}, 0
    for architecture, builds in ARCHITECTURES.items():
        total = LoadTally(architecture)
        share = -(-trials // len(builds))
        started = time.perf_counter()
        for build in builds:
            total.merge(run_trials(build, share, seed))
        took = time.perf_counter() - started
        print(
            f"load {architecture}: {total.trials} trials in {took:.0f} s ({total.operations}; "
            f"{total.refused_busy} refused as busy and retried, {total.refused_as_expected} "
            f"rollback attacks refused); {total.calls} calls checked, "
            f"{total.calls_across_changes} across a change, {total.distinct_results} with "
            f"version-dependent results; crashes {len(total.crashes)}, wrong {len(total.wrong)}",
            flush=True,
        )
        for line in (total.crashes + total.wrong)[:20]:
            print("  ", line)
        failures += len(total.crashes) + len(total.wrong)
        document[architecture] = {**asdict(total), "seconds": took}
    return document, failures


def hostile(kinds: list[str]) -> tuple[list[dict], int]:
    rows, failures = [], 0
    for kind in kinds:
        tally = hostile_campaigns.campaign(kind, "full")
        failures += tally.failures
        print(
            f"{kind}: {tally.inputs} inputs (largest {tally.input_bytes:,} bytes), "
            f"{tally.runs} runs in {tally.seconds:.0f} s, slowest {tally.slowest:.1f} s "
            f"({tally.slowest_run}); peak RSS {tally.peak_kib // 1024} MiB ({tally.peak_run}); "
            f"exit codes {dict(sorted(tally.codes.items()))}; internal errors {tally.internal}, "
            f"tracebacks {tally.tracebacks}, hangs {tally.hangs}, over 1 GiB "
            f"{tally.over_memory}, unexpected {len(tally.unexpected)}",
            flush=True,
        )
        for line in tally.unexpected[:20]:
            print("  ", line)
        inputs: dict[str, list[tuple[str, int | None, float, int]]] = {}
        for result in tally.results:
            inputs.setdefault(result[0].split(": ")[0], []).append(result)
        for name, results in inputs.items():
            print(
                f"  {name}: {len(results)} runs, exit codes "
                f"{sorted({str(code) for _, code, _, _ in results})}, slowest "
                f"{max(took for _, _, took, _ in results):.1f} s, peak "
                f"{max(peak for _, _, _, peak in results) // 1024} MiB",
                flush=True,
            )
        # asdict would rebuild the Counter from its (key, count) pairs, counting them.
        rows.append({**asdict(tally), "codes": dict(tally.codes)})
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.figures")
    parser.add_argument("--seconds", type=float, default=300.0, help="per fuzz target")
    parser.add_argument("--load-trials", type=int, default=5000, help="per architecture")
    parser.add_argument("--seed", default="reliability")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument(
        "--kinds", nargs="+", choices=hostile_campaigns.KINDS, default=list(hostile_campaigns.KINDS)
    )
    parser.add_argument("--no-corpus", action="store_true", help="samples only")
    parser.add_argument("--json", help="write every figure to this file too")
    arguments = parser.parse_args(argv)
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, Python {platform.python_version()}, "
        f"seed {arguments.seed!r}",
        flush=True,
    )
    figures: dict[str, object] = {}
    failures = 0
    if "fuzz" in arguments.only:
        figures["fuzz"], count = fuzz(
            arguments.seconds, arguments.seed, not arguments.no_corpus, arguments.targets
        )
        failures += count
    if "flips" in arguments.only:
        figures["flips"], count = flips()
        failures += count
    if "refusals" in arguments.only:
        figures["refusals"], count = trust()
        failures += count
    if "faults" in arguments.only:
        figures["faults"], count = faults()
        failures += count
    if "load" in arguments.only:
        figures["load"], count = load(arguments.load_trials, arguments.seed)
        failures += count
    if "hostile" in arguments.only:
        figures["hostile"], count = hostile(arguments.kinds)
        failures += count
    if arguments.json:
        with open(arguments.json, "w") as out:
            json.dump(figures, out, indent=1, default=str)
    print("no unexpected outcome" if not failures else f"{failures} unexpected outcomes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
