"""funcs -> diff -> package -> verify on every real-world pair, as one results table.

    python bench/realworld.py [--inputs N] [--extra DIR] [--markdown docs/realworld.md]
                              [--svg docs/realworld.svg]

Runs on the pairs ../shared/corpus/fetch.sh fetched (``make realworld`` fetches them
first), and with ``--extra DIR`` on more pairs the same script fetched into DIR from
bench/realworld-pairs.tsv (patch releases of more C extensions). For each pair: the
functions of both builds, the diff's counts and verdict (or its blockers), the package
built and proved by translation validation (or why it is refused), its size next to a
bsdiff4 delta and the zstd-compressed new file, differential emulation's pass / fail /
not-emulated counts over N input sets per function, and how long each stage took.
Whatever blocks a pair (the diff's verdict, the builder's refusal or a failed check) is
counted by class and cause. Writes the tables, every remaining blocker by class and
cause with why hpatch cannot lift each limitation yet, and a bar chart of the sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bsdiff4
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import corpus_pairs

from hpatch import BACKEND
from hpatch.blockers import BlockerCause, BlockerClass
from hpatch.diff import Blocker, Status, diff_images
from hpatch.errors import HPatchError
from hpatch.image import load_image
from hpatch.package import BuildOptions, PackageBlocked, build_package, encode_package
from hpatch.verify import Outcome, validation_blockers, verify_package
from hpatch.verify.startup import new_data_set_at_start

HERE = Path(__file__).resolve().parent

#: Why hpatch cannot lift each limitation yet: the mechanism it lacks. A cause missing
#: here is printed with PLACEHOLDER, so the gap shows in the document.
WHY_NOT_YET: dict[BlockerCause, str] = {
    BlockerCause.NEW_IMPORT: (
        "Data of the new build (a table of function pointers) names the new import's IAT "
        "slot; the package carries slots only for imports its own code calls, and "
        "pointing the running image's data at one would need writable data patched in "
        "place, which hpatch does not do."
    ),
    BlockerCause.IMPORT_DLL_CHANGED: (
        "The process has the old DLL loaded under its old name (often one with a version "
        "or hash in it), so loading the new one beside it would run two copies of the "
        "library, and binding the old one is right only once that DLL is itself brought "
        "up to date: that needs one update servicing a DLL and its importers together, "
        "which hpatch does not have."
    ),
    BlockerCause.NO_REDIRECT_ROOM: (
        "A redirect goes only at the entry (in the function, its trailing padding or the "
        "padding before it); redirecting the callers instead (every call site and stored "
        "address of the function) is not implemented."
    ),
    BlockerCause.CODE_OUTSIDE_FUNCTION: (
        "hpatch binds code only through matched functions, so code that function "
        "discovery leaves outside every function has no proven counterpart in the old "
        "image until discovery claims it and matching pairs it."
    ),
    BlockerCause.FRAGMENT_OF_UNCHANGED_FUNCTION: (
        "An unchanged function's place in the old image is proven from its entry to the "
        "end of its extent only: binding a target in another of its parts (a chained "
        "fragment, a `.cold` part, a literal pool there) needs the parts of matched "
        "functions paired one by one, which matching does not do yet."
    ),
    BlockerCause.PAGE_ACROSS_PARTS: (
        "Translation validation compares a function run by run (parts that touch, copied "
        "whole) and follows an ADRP's page into the part of the run that completes it, as "
        "the builder's relocator does; a page completed in a part copied apart (a `.cold` "
        "part) is not paired by the relocator either, which takes the page as handed on, "
        "so the cause is left only as a guard."
    ),
    BlockerCause.EMULATION_DIVERGED: (
        "The patched code and the new build did different things on the same inputs "
        "(here the module's initialiser leaves a global with another value), and hpatch "
        "cannot yet tell a difference the update itself makes in state the old image "
        "already holds, which only a new baseline delivers, from a fault of its own."
    ),
    BlockerCause.UNKNOWN_DATA: (
        "An address outside every section, or read-only data neither proven the same "
        "object in the old image nor a constant hpatch can carry, has nothing to bind to; "
        "a target far outside the image comes from bytes in a function that decode as a "
        "branch: MSVC ARM64's compressed switch tables are recognised as data now, and "
        "other such bytes need a proof that they never run, which would let hpatch carry "
        "them unbound."
    ),
    BlockerCause.PAST_OLD_SECTION: (
        "A package carries the globals only the new build has, but only where the diff "
        "has placed every old global of the section in the new build (anchors in "
        "identical code, shifts and insertions between them); where it could not (a "
        "tie, an unexplained gap: `writable_data_resized`), a global past the end of the "
        "old section may be a new one or an old one that moved, and binding either way "
        "would be a guess. Placing globals that no identical code names needs evidence "
        "hpatch does not gather yet (symbols, or the code that initialises them)."
    ),
    BlockerCause.NO_OLD_SECTION: (
        "The old image has a section of that name, but not a writable one: the running "
        "image has no writable memory there, and the new build's globals in it are "
        "neither old globals nor new data the package can carry on its own pages."
    ),
    BlockerCause.NEW_DATA_NOT_CARRIED: (
        "The builder copies new read-only data that carried code names, up to the next "
        "label and at most 64 KiB, and the new data its pointers name in turn, 4 MiB in "
        "all; sizing an object past those bounds is missing."
    ),
    BlockerCause.RELOCATION_ERROR: (
        "The relocator rebinds only the instruction forms and register flows it models "
        "(an ARM64 page is followed through moves and the instructions completing it); "
        "each form outside them needs the relocator extended to it. A function whose last "
        "part runs on past its end into other code is refused too: its copy would run on "
        "into whatever follows it in the region (translation validation checks what "
        "follows the copy), and a jump back placed after the copy would run in the "
        "caller's frame outside every unwind record; it needs that jump with unwind data "
        "of its own (the state of the code it leads to), or the code run into carried "
        "with its unwind record. psutil's ARM64 builds showed such run-ons where MSVC "
        "gives the stages of a shrink-wrapped frame primary .pdata entries of their own; "
        "discovery now takes those for one function, and psutil 7.1.0 -> 7.1.1 and "
        "7.1.2 -> 7.1.3 no longer stop here."
    ),
    BlockerCause.RODATA_JUMP_TABLE: (
        "A read-only jump table is rewritten only when every entry leads into the carried "
        "code; a table leading out of it as well would need a copy whose entries are "
        "rebound one by one, which the builder does not make."
    ),
    BlockerCause.SHORT_REFERENCE_OUT_OF_REACH: (
        "A short branch that leaves the carried code for a function's entry (a tail "
        "call) goes through a veneer beside the copy; one into the middle of other code "
        "(the veneer would run in the caller's frame, outside every unwind record), a "
        "literal load or an ADR would need unwind data for the veneer or a rewrite into "
        "a longer sequence (ADRP and ADD), which the builder does not make."
    ),
    BlockerCause.PAGE_PASSED_ON: (
        "hpatch follows an ADRP's page through the carried code and, at a direct call, "
        "along every path of the callee (three calls deep, 256 instructions) until the "
        "register is written; where the page leaves by an indirect call, a return or a "
        "jump out of the code, or a callee path branches indirectly, proving the code "
        "beyond never reads it needs an analysis of code hpatch cannot see from there, "
        "so the target bound in the old image must keep the new build's offset in the page."
    ),
    BlockerCause.NEW_DATA_TOO_LARGE: (
        "New read-only data is copied up to the next label, at most 64 KiB; sizing an "
        "object by its symbol or by the accesses of the code that uses it is missing."
    ),
    BlockerCause.NEW_DATA_START_UNKNOWN: (
        "Whether the new build's start-up code sets the new globals is learned by running "
        "its entry point in the emulator; where start-up calls what the emulator does not "
        "model (docs/startup.md), hpatch cannot tell, and deciding it statically would need "
        "a proof that no path from the entry point stores to them."
    ),
}
assert all(c.blocker_class == BlockerClass.LIMITATION for c in WHY_NOT_YET)
PLACEHOLDER = "**Placeholder:** what hpatch lacks to lift this is not written down yet."


@dataclass
class PairResult:
    pair: str
    machine: str
    functions_old: int = 0
    functions_new: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    verdict: str = ""
    new_size: int = 0
    zstd_size: int = 0
    bsdiff_size: int = 0
    package_size: int | None = None
    translation: str = "-"
    emulation: Counter[str] = field(default_factory=Counter)
    not_emulated_reasons: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    #: What still blocks the pair (from the verdict, the builder or validation), by cause.
    blockers: Counter[BlockerCause] = field(default_factory=Counter)
    #: Old RVAs of the functions the diff reports modified.
    modified_old: set[int] = field(default_factory=set)


_CAUSE_ORDER = {cause: index for index, cause in enumerate(BlockerCause)}


def _by_class(causes: Iterable[BlockerCause]) -> list[BlockerCause]:
    """Hazards before limitations, each in the order the causes are declared."""
    return sorted(causes, key=lambda c: (c.blocker_class != BlockerClass.HAZARD, _CAUSE_ORDER[c]))


def _record_blockers(result: PairResult, label: str, blockers: Iterable[Blocker]) -> None:
    """``label: hazard writable_initial_value (3), limitation new_import (1)``."""
    result.blockers = Counter(b.cause for b in blockers)
    result.verdict = f"{label}: " + ", ".join(
        f"{cause.blocker_class.value} {cause.value} ({result.blockers[cause]})"
        for cause in _by_class(result.blockers)
    )


def run_pair(pair: str, old_path: Path, new_path: Path, inputs: int) -> PairResult:
    old_data, new_data = old_path.read_bytes(), new_path.read_bytes()
    started = time.perf_counter()
    old, new = load_image(old_data, name=old_path.name), load_image(new_data, name=new_path.name)
    result = PairResult(pair, old.identity.machine.name)
    result.functions_old, result.functions_new = len(old.functions), len(new.functions)
    result.seconds["funcs"] = time.perf_counter() - started
    started = time.perf_counter()
    diff = diff_images(old, new)
    result.seconds["diff"] = time.perf_counter() - started
    result.counts = {s.value: len(diff.with_status(s)) for s in Status}
    result.modified_old = {c.old.rva for c in diff.with_status(Status.MODIFIED) if c.old}
    result.new_size = len(new_data)
    result.zstd_size = len(zstandard.ZstdCompressor(level=19).compress(new_data))
    started = time.perf_counter()
    result.bsdiff_size = len(bsdiff4.diff(old_data, new_data))
    result.seconds["bsdiff4"] = time.perf_counter() - started
    if not diff.hotpatchable:
        _record_blockers(result, "blocked", diff.blockers)
        return result
    if not result.counts["modified"] and not result.counts["added"]:
        result.verdict = "no function changed"
        return result
    started = time.perf_counter()
    try:
        package = build_package(diff, BuildOptions(sequence=1))
    except PackageBlocked as blocked:
        result.seconds["package"] = time.perf_counter() - started
        _record_blockers(result, "refused", blocked.blockers)
        return result
    hazards = new_data_set_at_start(diff)  # as diff -o refuses them
    result.seconds["package"] = time.perf_counter() - started
    if hazards:
        _record_blockers(result, "refused", hazards)
        return result
    result.package_size = len(encode_package(package))
    started = time.perf_counter()
    try:
        report = verify_package(diff, package, inputs=inputs)
    except HPatchError as error:
        result.seconds["verify"] = time.perf_counter() - started
        result.verdict = f"package does not apply: {error}"
        return result
    result.seconds["verify"] = time.perf_counter() - started
    failed = [f for f in report.functions if f.translation != Outcome.PASSED]
    result.translation = (
        f"{len(report.functions) - len(failed)}/{len(report.functions)} passed"
        if not failed
        else f"{len(failed)} FAILED"
    )
    unvalidated = validation_blockers(report)
    for function in report.functions:
        result.emulation[function.emulation.outcome.value] += 1
        if function.emulation.outcome == Outcome.NOT_EMULATED:
            detail = function.emulation.detail
            # "N of M input sets comparable: <why>", or "<why>: <the first fault>"
            reason = detail.split(": ", 1)[1] if "comparable" in detail else detail.split(": ")[0]
            result.not_emulated_reasons[reason] += 1
    if unvalidated:
        # hpatch diff -o writes no package that fails either check
        _record_blockers(result, "unvalidated", unvalidated)
    else:
        result.verdict = "hotpatchable"
    return result


def _size(value: int | None) -> str:
    return "-" if value is None else f"{value:,} B"


def _table(results: list[PairResult]) -> list[str]:
    lines = [
        "| pair | machine | functions old / new | unchanged / modified / added / removed "
        "| verdict | zstd(new) | bsdiff4 | package | translation validation "
        "| emulation passed / failed / not emulated | seconds (funcs, diff, package, verify) |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        counts = r.counts
        emulated = (
            f"{r.emulation['passed']} / {r.emulation['failed']} / {r.emulation['not_emulated']}"
            if r.emulation
            else "-"
        )
        timing = ", ".join(
            f"{r.seconds[k]:.2f}" if k in r.seconds else "-"
            for k in ("funcs", "diff", "package", "verify")
        )
        lines.append(
            f"| {r.pair} | {r.machine} | {r.functions_old:,} / {r.functions_new:,} "
            f"| {counts.get('unchanged', 0):,} / {counts.get('modified', 0):,} / "
            f"{counts.get('added', 0):,} / {counts.get('removed', 0):,} | {r.verdict} "
            f"| {_size(r.zstd_size)} | {_size(r.bsdiff_size)} | {_size(r.package_size)} "
            f"| {r.translation} | {emulated} | {timing} |"
        )
    verdicts = Counter(r.verdict.split(":")[0] for r in results)
    lines += [
        "",
        f"{len(results)} pairs: "
        + ", ".join(f"{count} {verdict}" for verdict, count in sorted(verdicts.items()))
        + ".",
    ]
    return lines


def _blocker_table(results: list[PairResult]) -> list[str]:
    """Every remaining blocker over all pairs, by class and cause, then why hpatch cannot
    lift each limitation yet."""
    pairs: dict[BlockerCause, Counter[str]] = {}
    for r in results:
        for cause, count in r.blockers.items():
            pairs.setdefault(cause, Counter())[r.pair] += count
    if not pairs:
        return ["No pair is blocked."]
    lines = [
        "| class | cause | blockers | pairs (blockers in each) |",
        "|---|---|---:|---|",
    ]
    for cause in _by_class(pairs):
        where = ", ".join(f"{pair} ({count})" for pair, count in sorted(pairs[cause].items()))
        lines.append(
            f"| {cause.blocker_class.value} | `{cause.value}` | {sum(pairs[cause].values()):,} "
            f"| {where} |"
        )
    blocked = [r for r in results if r.blockers]
    only_limited = [
        r for r in blocked if all(c.blocker_class == BlockerClass.LIMITATION for c in r.blockers)
    ]
    per_class = Counter()
    for cause, found in pairs.items():
        per_class[cause.blocker_class] += sum(found.values())
    lines += [
        "",
        f"{sum(per_class.values()):,} blockers in {len(blocked)} pairs: "
        f"{per_class[BlockerClass.HAZARD]:,} hazards (the update needs a new baseline) and "
        f"{per_class[BlockerClass.LIMITATION]:,} limitations (hpatch cannot prove or bind it "
        f"yet). {len(only_limited)} of the {len(blocked)} pairs are blocked by limitations "
        "alone: a better hpatch could package them.",
    ]
    limitations = [c for c in _by_class(pairs) if c.blocker_class == BlockerClass.LIMITATION]
    if limitations:
        lines += ["", "Why hpatch cannot lift each limitation yet:", ""]
        lines += [f"- `{c.value}`: {WHY_NOT_YET.get(c, PLACEHOLDER)}" for c in limitations]
    return lines


@dataclass
class CveScore:
    """One CVE pair: hpatch's result and how its modified set compares with the truth."""

    result: PairResult
    build: str
    kind: str  # code-only or data
    true_positives: int
    false_positives: list[str]
    false_negatives: list[str]

    @property
    def agrees(self) -> bool:
        """A code-only pair packaged and proven; a data pair refused for hazards only."""
        if self.kind == "code-only":
            return self.result.verdict == "hotpatchable"
        return bool(self.result.blockers) and all(
            c.blocker_class == BlockerClass.HAZARD for c in self.result.blockers
        )


_CVE_BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hp", "arm64-clang")


def score_cves(root: Path, inputs: int, only: Iterable[str]) -> list[CveScore]:
    """Every pair of the CVE corpus (``root``/pairs.tsv), run as the public pairs are and
    its modified set compared with the pair's ground truth (by the truth's names)."""
    scores = []
    for line in (root / "pairs.tsv").read_text().splitlines():
        pair, _machine, old, new, truth_path, kind = line.split("\t")
        if only and not any(s in pair for s in only):
            continue
        truth = json.loads(Path(truth_path).read_text())
        names = {start: name for name, (start, _end) in truth["old_funcs"].items()}
        result = run_pair(pair, Path(old), Path(new), inputs)
        reported = {names.get(rva, f"sub_{rva:x}") for rva in result.modified_old}
        wanted = set(truth["modified"])
        build = next(b for b in sorted(_CVE_BUILDS, key=len, reverse=True) if f"-{b}-" in pair)
        scores.append(
            CveScore(
                result,
                build,
                kind,
                len(reported & wanted),
                sorted(reported - wanted),
                sorted(wanted - reported),
            )
        )
        print(
            f"{pair}: {result.verdict}; fp {scores[-1].false_positives} fn "
            f"{scores[-1].false_negatives}",
            flush=True,
        )
    return scores


def _cve_section(scores: list[CveScore]) -> list[str]:
    lines = [
        "| build | pairs | code-only: packaged, both proofs passed | data: refused, hazards only "
        "| modified set equal to the truth | tp / fp / fn |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for build in _CVE_BUILDS:
        mine = [s for s in scores if s.build == build]
        if not mine:
            continue
        code = [s for s in mine if s.kind == "code-only"]
        data = [s for s in mine if s.kind != "code-only"]
        exact = sum(1 for s in mine if not s.false_positives and not s.false_negatives)
        tp = sum(s.true_positives for s in mine)
        fp = sum(len(s.false_positives) for s in mine)
        fn = sum(len(s.false_negatives) for s in mine)
        lines.append(
            f"| {build} | {len(mine)} | {sum(s.agrees for s in code)} / {len(code)} "
            f"| {sum(s.agrees for s in data)} / {len(data)} | {exact} / {len(mine)} "
            f"| {tp:,} / {fp} / {fn} |"
        )
    tp = sum(s.true_positives for s in scores)
    fp = sum(len(s.false_positives) for s in scores)
    fn = sum(len(s.false_negatives) for s in scores)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    exact = sum(1 for s in scores if not s.false_positives and not s.false_negatives)
    lines += [
        "",
        f"Over all {len(scores)} pairs: precision {precision:.3f}, recall {recall:.3f} "
        f"({tp:,} of {tp + fn:,}), {exact} of {len(scores)} modified sets exact; "
        f"{sum(s.agrees for s in scores)} of {len(scores)} pairs end as their kind says "
        "(a code-only pair packaged and proven, a data pair refused for hazards only).",
    ]
    differing = [s for s in scores if s.false_positives or s.false_negatives or not s.agrees]
    if differing:
        lines += [
            "",
            "Where hpatch and the truth differ (each explained in [cves.md](cves.md)):",
            "",
        ]
        for s in differing:
            what = [f"extra {name}" for name in s.false_positives]
            what += [f"missing {name}" for name in s.false_negatives]
            if not s.agrees:
                what.append(s.result.verdict)
            lines.append(f"- {s.result.pair} ({s.kind}): " + "; ".join(what))
    return lines


def markdown(
    sections: list[tuple[str, str, list[PairResult]]],
    inputs: int,
    command: str,
    minutes: float,
    cves: list[CveScore] | None = None,
    cves_extra: list[CveScore] | None = None,
) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# Real-world pairs",
        "",
        "funcs, diff, package, verify on consecutive releases of Windows binaries from",
        "public wheels (C extensions and the DLLs they ship), x64 and ARM64, and on the",
        "CVE corpus of real security fixes with ground truth (first; [cves.md](cves.md)",
        "says what it is and explains each disagreement).",
        "",
        f"Command: `{command}` (recorded {today}, {platform.machine()}, Python "
        f"{platform.python_version()}, {BACKEND} core; {inputs} input sets per function; "
        f"{max(1, round(minutes))} min in all).",
        "",
        "![package size against bsdiff4 and zstd per pair](realworld.svg)",
    ]
    if cves:
        lines += [
            "",
            "## The CVE corpus",
            "",
            "Real security fixes: Debian's patches to sqlite3, libwebp, libpng, nghttp2 and "
            "cJSON built as DLLs in four builds by `../shared/cves/build.sh`, with a "
            "symbol-aware ground truth per pair (hpatch gets the stripped DLLs). Each pair "
            "runs as the public pairs below do (diff, package, translation validation, "
            "differential emulation, as `hpatch diff -o` proves a package), and its modified "
            "set is compared with the truth. `make cves` builds the corpus and holds hpatch "
            "to it (tests/cves).",
            "",
            *_cve_section(cves),
        ]
    if cves_extra:
        lines += [
            "",
            "## The second CVE corpus",
            "",
            "Three more libraries hpatch was not developed against, built the same way by "
            "`tests/cves/extra/build.sh`: Debian 12's security updates to expat (2 updates), "
            "openjpeg2 (3) and libxml2 (6), scored as above.",
            "",
            *_cve_section(cves_extra),
        ]
    every = []
    for title, description, results in sections:
        lines += ["", f"## {title}", "", description, "", *_table(results)]
        every += results
    lines += ["", "## Blockers", "", *_blocker_table(every)]
    lines += [
        "",
        "## Reading",
        "",
        "A pair is blocked by the diff's verdict, refused by the package builder (it passed "
        "the verdict but holds code the builder cannot bind with certainty), or unvalidated "
        "(the package built, but a function failed translation validation or differential "
        "emulation, so `hpatch diff -o` writes nothing). Each names its blockers by class "
        "and cause, with how many: a `hazard` is the update's (it changes writable data, "
        "exports, TLS or the entry point, which only a new baseline can deliver), a "
        "`limitation` is hpatch's (see [cli.md](cli.md) for every cause). The verdict "
        "reports at most nine `writable_initial_value` blockers per section (eight ranges, "
        "then one for the rest), and an import that blocks counts once for the import and "
        "once per site that uses it. Every package counted as hotpatchable passed both "
        "checks on every function it carries.",
    ]
    packaged = [r for r in every if r.emulation]
    total = sum(sum(r.emulation.values()) for r in packaged)
    emulated = sum(r.emulation["passed"] + r.emulation["failed"] for r in packaged)
    failed = sum(r.emulation["failed"] for r in packaged)
    lines += [
        "",
        f"Patched functions across the packages built: {total}; emulated (passed or failed): "
        f"{emulated}"
        + (f" ({100 * emulated / total:.0f}%)" if total else "")
        + f"; failed: {failed}.",
    ]
    reasons: Counter[str] = Counter()
    for r in packaged:
        reasons.update(r.not_emulated_reasons)
    if reasons:
        lines += ["", "Why functions were not emulated:", ""]
        for reason, count in reasons.most_common():
            lines.append(f"- {count} x {reason}")
    return "\n".join(lines) + "\n"


def svg(results: list[PairResult]) -> str:
    """A horizontal bar chart per pair, log scale: zstd(new), bsdiff4, package."""
    bar, gap, label_width, width = 11, 14, 330, 860
    series = (("zstd(new)", "#9e9e9e"), ("bsdiff4", "#1f77b4"), ("hpatch package", "#d62728"))
    top = 40
    height = top + len(results) * (3 * bar + gap) + 40
    lo, hi = 2.0, 7.0  # log10 of 100 B .. 10 MB
    scale = (width - label_width - 20) / (hi - lo)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="18" font-size="13">What a machine running the old build must '
        "download (log scale)</text>",
    ]
    for index, (name, colour) in enumerate(series):
        x = label_width + index * 150
        out.append(f'<rect x="{x}" y="26" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="35">{name}</text>')
    for power in range(int(lo), int(hi) + 1):
        x = label_width + (power - lo) * scale
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 30}" stroke="#ddd"/>')
        label = ("100 B", "1 KB", "10 KB", "100 KB", "1 MB", "10 MB")[power - 2]
        out.append(f'<text x="{x - 12:.1f}" y="{height - 15}">{label}</text>')
    y = top + 4
    for r in results:
        out.append(f'<text x="10" y="{y + 2 * bar}">{r.pair[:48]}</text>')
        for index, value in enumerate((r.zstd_size, r.bsdiff_size, r.package_size)):
            by = y + index * bar
            if value:
                length = max(1.0, (math.log10(value) - lo) * scale)
                out.append(
                    f'<rect x="{label_width}" y="{by}" width="{length:.1f}" height="{bar - 2}" '
                    f'fill="{series[index][1]}"/>'
                )
            elif index == 2:
                reason = r.verdict.split(":")[0] if r.verdict else "none"
                out.append(
                    f'<text x="{label_width + 4}" y="{by + bar - 3}" fill="#d62728">'
                    f"no package ({reason})</text>"
                )
        y += 3 * bar + gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def unfetched(listing: Path, pairs: list[tuple[str, Path, Path]]) -> list[str]:
    """The pair ids ``listing`` names that were not fetched (named as fetch.sh names them)."""
    have = {pair for pair, _, _ in pairs}
    missing = []
    for line in listing.read_text().splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) != 5:
            continue
        package, old, new, platform_tag, member = fields
        pair = re.sub(r"[^A-Za-z0-9._-]", "_", f"{package}-{old}-{new}-{platform_tag}-")
        pair = (pair + re.sub(r"[^A-Za-z0-9._-]", "_", Path(member).name)).rstrip("_")
        if pair not in have:
            missing.append(pair)
    return missing


def main() -> None:
    begun = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--svg", type=Path)
    parser.add_argument("--only", nargs="*", default=(), help="pair ids containing these strings")
    parser.add_argument(
        "--extra", type=Path, help="a corpus fetched from bench/realworld-pairs.tsv"
    )
    parser.add_argument("--cves", type=Path, help="the CVE corpus ../shared/cves/build.sh built")
    parser.add_argument(
        "--cves-extra", type=Path, help="the second CVE corpus tests/cves/extra/build.sh built"
    )
    arguments = parser.parse_args()
    groups = [
        (
            "The public pairs",
            "Fetched by `../shared/corpus/fetch.sh`.",
            corpus_pairs(),
        )
    ]
    if arguments.extra is not None:
        missing = unfetched(HERE / "realworld-pairs.tsv", corpus_pairs(arguments.extra))
        if missing:
            print(
                f"{len(missing)} pairs of bench/realworld-pairs.tsv are not fetched (the first: "
                f"{missing[0]}): HPCORPUS={arguments.extra} bash ../shared/corpus/fetch.sh "
                "bench/realworld-pairs.tsv fetches them (make realworld only fetches into an "
                "empty corpus)",
                file=sys.stderr,
            )
        groups.append(
            (
                "More pairs",
                "Patch releases of more C extensions and of the DLLs they ship, fetched by "
                "the same script from `bench/realworld-pairs.tsv`.",
                corpus_pairs(arguments.extra),
            )
        )
    sections = []
    for title, description, pairs in groups:
        if arguments.only:
            pairs = [p for p in pairs if any(s in p[0] for s in arguments.only)]
        results = []
        for pair, old, new in pairs:
            result = run_pair(pair, old, new, arguments.inputs)
            print(
                f"{pair}: {result.verdict}; package {_size(result.package_size)}, bsdiff4 "
                f"{_size(result.bsdiff_size)}; translation {result.translation}; emulation "
                f"{dict(result.emulation)}",
                flush=True,
            )
            results.append(result)
        sections.append((title, description, results))
    if not any(results for _, _, results in sections):
        sys.exit("no real-world pairs: run ../shared/corpus/fetch.sh (make corpus)")
    cves = None
    if arguments.cves is not None:
        cves = score_cves(arguments.cves, arguments.inputs, arguments.only)
    cves_extra = None
    if arguments.cves_extra is not None:
        cves_extra = score_cves(arguments.cves_extra, arguments.inputs, arguments.only)
    command = "make realworld"
    minutes = (time.perf_counter() - begun) / 60
    print(f"{minutes:.1f} minutes", flush=True)
    if arguments.markdown:
        arguments.markdown.write_text(
            markdown(sections, arguments.inputs, command, minutes, cves, cves_extra)
        )
    if arguments.svg:
        arguments.svg.write_text(svg([r for _, _, results in sections for r in results]))


if __name__ == "__main__":
    main()
