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
Writes the tables as Markdown and a bar chart of the sizes as SVG.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import bsdiff4
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import corpus_pairs

from hpatch import BACKEND
from hpatch.diff import Status, diff_images
from hpatch.errors import HPatchError
from hpatch.image import load_image
from hpatch.package import BuildOptions, PackageBlocked, build_package, encode_package
from hpatch.verify import Outcome, verify_package


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


def _blocker_summary(blockers) -> str:  # type: ignore[no-untyped-def]
    kinds = Counter(b.kind.value for b in blockers)
    return "blocked: " + ", ".join(f"{kind} ({count})" for kind, count in sorted(kinds.items()))


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
    result.new_size = len(new_data)
    result.zstd_size = len(zstandard.ZstdCompressor(level=19).compress(new_data))
    started = time.perf_counter()
    result.bsdiff_size = len(bsdiff4.diff(old_data, new_data))
    result.seconds["bsdiff4"] = time.perf_counter() - started
    if not diff.hotpatchable:
        result.verdict = _blocker_summary(diff.blockers)
        return result
    if not result.counts["modified"] and not result.counts["added"]:
        result.verdict = "no function changed"
        return result
    started = time.perf_counter()
    try:
        package = build_package(diff, BuildOptions(sequence=1))
    except PackageBlocked as blocked:
        result.seconds["package"] = time.perf_counter() - started
        result.verdict = "refused: " + blocked.blockers[0].reason
        return result
    result.seconds["package"] = time.perf_counter() - started
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
    for function in report.functions:
        result.emulation[function.emulation.outcome.value] += 1
        if function.emulation.outcome == Outcome.NOT_EMULATED:
            detail = function.emulation.detail
            # "N of M input sets comparable: <why>", or "<why>: <the first fault>"
            reason = detail.split(": ", 1)[1] if "comparable" in detail else detail.split(": ")[0]
            result.not_emulated_reasons[reason] += 1
    result.verdict = (
        "hotpatchable" if not failed else "blocked: unvalidated (no package is written)"
    )
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
            f"| {counts.get('unchanged', 0):,} / {counts.get('modified', 0)} / "
            f"{counts.get('added', 0)} / {counts.get('removed', 0)} | {r.verdict} "
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


def markdown(sections: list[tuple[str, str, list[PairResult]]], inputs: int, command: str) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# Real-world pairs",
        "",
        "funcs, diff, package, verify on consecutive releases of MSVC-built Windows",
        "binaries from public wheels, x64 and ARM64.",
        "",
        f"Command: `{command}` (recorded {today}, {platform.machine()}, Python "
        f"{platform.python_version()}, {BACKEND} core; {inputs} input sets per function).",
        "",
        "![package size against bsdiff4 and zstd per pair](realworld.svg)",
    ]
    every = []
    for title, description, results in sections:
        lines += ["", f"## {title}", "", description, "", *_table(results)]
        every += results
    lines += [
        "",
        "## Reading",
        "",
        "A blocked pair is the expected answer for a feature release (it changes writable "
        "data, TLS or imports, which only a new baseline can deliver); a refused one passed "
        "the diff's verdict but holds code the builder cannot bind with certainty (the "
        "reason names the instruction). Every package written has passed translation "
        "validation, and differential emulation ran on every function it carries.",
    ]
    packaged = [r for r in every if r.emulation]
    total = sum(sum(r.emulation.values()) for r in packaged)
    emulated = sum(r.emulation["passed"] + r.emulation["failed"] for r in packaged)
    failed = sum(r.emulation["failed"] for r in packaged)
    lines += [
        "",
        f"Patched functions across emitted packages: {total}; emulated (passed or failed): "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--svg", type=Path)
    parser.add_argument("--only", nargs="*", default=(), help="pair ids containing these strings")
    parser.add_argument(
        "--extra", type=Path, help="a corpus fetched from bench/realworld-pairs.tsv"
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
        groups.append(
            (
                "More pairs",
                "Patch releases of more C extensions, fetched by the same script from "
                "`bench/realworld-pairs.tsv`.",
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
    command = "make realworld"
    if arguments.markdown:
        arguments.markdown.write_text(markdown(sections, arguments.inputs, command))
    if arguments.svg:
        arguments.svg.write_text(svg([r for _, _, results in sections for r in results]))


if __name__ == "__main__":
    main()
