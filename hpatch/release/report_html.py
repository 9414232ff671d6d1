"""``OUT_DIR/index.html``: the release as one static page a release manager opens.

The page is one self-contained file: inline CSS, a small inline script that only sorts
the table (every row is in the HTML, so the page reads the same without it), no URL
outside the page. A Content-Security-Policy naming the digests of that style and that
script forbids everything else, so a name that escaped its escaping still could not
load or run anything. Every string from the release (paths, function names, blocker
text, servicing fields) is chosen by whoever made the inputs: each is shown escaped
(``hpatch.text.plain``, then HTML), and the bytes are ASCII (other characters as
character references), so no declared or guessed charset changes what the page says.
The same inputs give the same bytes: nothing here reads the clock or the file system.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hpatch.release.outcome import Status
from hpatch.text import plain

if TYPE_CHECKING:
    from hpatch.package.model import Package, PatchFunction

#: The report's name in OUT_DIR.
REPORT_NAME = "index.html"
#: Shown where a value does not apply (no machine, no package, not diffed).
DASH = "\u2014"
#: What the report calls each status, and what it means for the release.
STATUS_TEXT = {
    Status.PACKAGED: ("packaged", "hotpatch package built and proved"),
    Status.BLOCKED: ("blocked", "not hotpatchable: needs a new baseline"),
    Status.ERROR: ("error", "could not be serviced: see the message"),
    Status.ADDED: ("added", "only in the new tree: needs a new baseline"),
    Status.REMOVED: ("removed", "only in the old tree: needs a new baseline"),
    Status.UNCHANGED: ("unchanged", "no function changed: nothing to ship"),
}
#: Sorting by status puts what needs attention first.
STATUS_RANK = {
    status: rank
    for rank, status in enumerate(
        (
            Status.ERROR,
            Status.BLOCKED,
            Status.ADDED,
            Status.REMOVED,
            Status.PACKAGED,
            Status.UNCHANGED,
        )
    )
}

_STYLE = """
:root { color-scheme: light; --line: #c9ced6; --muted: #4a5361; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
  margin: 0 auto; max-width: 72rem; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .5rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 0 0 .4rem; overflow-wrap: anywhere; }
p.meta { color: var(--muted); margin: 0; }
table { border-collapse: collapse; margin: .5rem 0; }
caption { text-align: left; padding-bottom: .3rem; color: var(--muted); }
th, td { border: 1px solid var(--line); padding: .3rem .6rem; text-align: left;
  vertical-align: top; }
th { background: #eef1f5; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.path, td.name { overflow-wrap: anywhere; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: .92em; }
th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0;
  cursor: pointer; color: inherit; }
th button:focus-visible { outline: 2px solid #1f5fbf; outline-offset: 2px; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
.status { display: inline-block; padding: 0 .45rem; border-radius: .6rem;
  border: 1px solid; font-weight: 600; font-size: .9em; }
.s-packaged { color: #0b5a1f; background: #e3f4e7; }
.s-blocked { color: #7a2a00; background: #fde9dc; }
.s-error { color: #8b0b16; background: #fbe1e3; }
.s-added, .s-removed { color: #5a3d00; background: #fbf1d6; }
.s-unchanged { color: var(--muted); background: #f1f3f5; }
section.binary { border: 1px solid var(--line); border-radius: .4rem; padding: .8rem 1rem;
  margin: .8rem 0; }
section.binary:target { outline: 3px solid #1f5fbf; }
p.error { color: #8b0b16; white-space: pre-wrap; overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
  margin: .4rem 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
@media print { th button::after { content: none; } section.binary { break-inside: avoid; } }
"""

# Sorting only reorders the rows the HTML already holds; ties keep the manifest's
# order, so a sort is the same whatever the browser's sort algorithm. The buttons are
# made here: without the script the headers are plain text, not controls that do nothing.
_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("binaries");
  if (!table) { return; }
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var original = Array.prototype.slice.call(body.rows);
  function key(row, column, numeric) {
    var value = row.cells[column].getAttribute("data-sort");
    return numeric ? Number(value) : value;
  }
  function sortBy(column, ascending) {
    var numeric = heads[column].getAttribute("data-type") === "number";
    var keyed = original.map(function (row, index) {
      return { row: row, index: index, key: key(row, column, numeric) };
    });
    keyed.sort(function (a, b) {
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      if (!ascending) { order = -order; }
      return order || a.index - b.index;
    });
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    heads[column].setAttribute("aria-sort", ascending ? "ascending" : "descending");
    keyed.forEach(function (item) { body.appendChild(item.row); });
  }
  Array.prototype.forEach.call(heads, function (head, column) {
    var button = document.createElement("button");
    button.type = "button";
    button.title = "Sort by this column";
    while (head.firstChild) { button.appendChild(head.firstChild); }
    head.appendChild(button);
    button.addEventListener("click", function () {
      sortBy(column, head.getAttribute("aria-sort") !== "ascending");
    });
  });
  var caption = table.querySelector("caption span.hint");
  if (caption) { caption.textContent = " Select a column heading to sort by it."; }
})();
"""


def _digest(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


# Only the page's own style and script may apply; nothing is fetched, not even images.
_POLICY = (
    f"default-src 'none'; style-src '{_digest(_STYLE)}'; script-src '{_digest(_SCRIPT)}'; "
    "base-uri 'none'; form-action 'none'"
)


def _number(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def _t(value: object) -> str:
    """Text from the release, safe as HTML text and inside a quoted attribute."""
    return html.escape(plain(value), quote=True)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    return f"{size:,} bytes ({size / 1024:,.1f} KiB)"


def _rva(rva: object) -> str:
    return f"0x{rva:x}" if isinstance(rva, int) and not isinstance(rva, bool) else DASH


def _changed_count(entry: Mapping[str, Any]) -> int | None:
    """Functions the update changes (modified, added, removed), when the pair was diffed."""
    functions = entry.get("functions")
    if not isinstance(functions, Mapping):
        return None
    return sum(
        value
        for name in ("modified", "added", "removed")
        if isinstance(value := functions.get(name), int)
    )


def _package_size(entry: Mapping[str, Any]) -> int | None:
    package = entry.get("package")
    if isinstance(package, Mapping) and isinstance(package.get("size"), int):
        return int(package["size"])
    return None


def _status_badge(status: object) -> str:
    name = str(status)
    css = f"s-{name}" if name in STATUS_TEXT else "s-error"
    return f'<span class="status {css}">{_t(name)}</span>'


def _anchor(index: int) -> str:
    # Anchors by position, not by path: a path is hostile text and need not be unique
    # once escaped; the position in the manifest is both.
    return f"binary-{index + 1}"


def _summary(binaries: list[Mapping[str, Any]]) -> list[str]:
    counts = Counter(str(b.get("status")) for b in binaries)
    statuses = [*STATUS_TEXT, *sorted(s for s in counts if s not in STATUS_TEXT)]
    out = [
        '<section aria-labelledby="summary"><h2 id="summary">Summary</h2>',
        '<table id="status-counts"><caption>Binaries by status</caption>',
        '<thead><tr><th scope="col">Status</th><th scope="col" class="num">Binaries</th>'
        '<th scope="col">Meaning</th></tr></thead><tbody>',
    ]
    for status in statuses:
        meaning = STATUS_TEXT.get(status, (status, ""))[1]
        out.append(
            f'<tr data-status="{_t(status)}"><th scope="row">{_status_badge(status)}</th>'
            f'<td class="num">{counts.get(status, 0):,}</td><td>{_t(meaning)}</td></tr>'
        )
    out.append(
        f'</tbody><tfoot><tr><th scope="row">total</th><td class="num">{len(binaries):,}</td>'
        "<td></td></tr></tfoot></table>"
    )
    machines = Counter(
        str(b["machine"]) if b.get("machine") is not None else "unknown" for b in binaries
    )
    sizes = [s for b in binaries if (s := _package_size(b)) is not None]
    facts = [
        (
            "Machines",
            ", ".join(f"{_t(m)}: {machines[m]:,}" for m in sorted(machines)) or "none",
        ),
        ("Packages", f"{len(sizes):,}"),
        ("Package bytes in all", _size(sum(sizes)) if sizes else "none"),
    ]
    if sizes:
        facts.append(("Largest package", _size(max(sizes))))
    out.append('<dl class="facts" id="summary-facts">')
    out += [f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts]
    out.append("</dl></section>")
    return out


def _servicing(document: Mapping[str, Any]) -> str:
    parts = [f"hpatch {_t(document.get('hpatch_version', ''))}"]
    servicing = document.get("servicing")
    if isinstance(servicing, Mapping):
        if servicing.get("sequence") is not None:
            parts.append(f"sequence {_t(servicing['sequence'])}")
        supersedes = servicing.get("supersedes")
        if isinstance(supersedes, list) and len(supersedes) == 2:
            parts.append(f"supersedes {_t(supersedes[0])}\u2013{_t(supersedes[1])}")
        for name in ("advisory", "description"):
            if servicing.get(name):
                parts.append(_t(servicing[name]))
    verification = document.get("verification")
    if isinstance(verification, Mapping):
        if verification.get("emulate") and isinstance(verification.get("inputs"), int):
            parts.append(f"differential emulation on {verification['inputs']:,} input sets")
        elif verification.get("emulate") is False:
            parts.append("no differential emulation")
    return " \u00b7 ".join(parts)


def _table(binaries: list[Mapping[str, Any]]) -> list[str]:
    out = [
        '<section aria-labelledby="binaries-title"><h2 id="binaries-title">Binaries</h2>',
        '<table id="binaries"><caption>Every binary of the release, in the '
        'manifest\'s order.<span class="hint"></span></caption><thead><tr>'
        '<th scope="col">Path</th><th scope="col">Machine</th><th scope="col">Status</th>'
        '<th scope="col" class="num" data-type="number">Changed functions</th>'
        '<th scope="col" class="num" data-type="number">Package size (bytes)</th>'
        "</tr></thead><tbody>",
    ]
    for index, entry in enumerate(binaries):
        path = str(entry.get("path"))
        status = str(entry.get("status"))
        machine = entry.get("machine")
        changed = _changed_count(entry)
        size = _package_size(entry)
        # Sort keys: paths case-insensitively as the manifest orders them, statuses by
        # urgency, and a missing number below every number.
        out.append(
            f'<tr data-status="{_t(status)}">'
            f'<td class="path" data-sort="{_t(path.casefold())}">'
            f'<a href="#{_anchor(index)}">{_t(path)}</a></td>'
            f'<td data-sort="{_t(machine or "")}">{_t(machine) if machine else DASH}</td>'
            f'<td data-sort="{STATUS_RANK.get(status, -1)}">{_status_badge(status)}</td>'
            f'<td class="num" data-sort="{-1 if changed is None else changed}">'
            f"{_number(changed)}</td>"
            f'<td class="num" data-sort="{-1 if size is None else size}">'
            f"{_number(size)}</td></tr>"
        )
    out.append("</tbody></table></section>")
    return out


def _functions_table(functions: Iterable[PatchFunction]) -> list[str]:
    rows = []
    for function in functions:
        change = function.status.name.lower()
        old = DASH if change == "added" else _rva(function.old_rva)
        name = _t(function.name) if function.name else f"sub_{function.new_rva:x}"
        rows.append(
            f'<tr><td class="name mono">{name}</td><td>{_t(change)}</td>'
            f'<td class="mono">{old}</td><td class="mono">{_rva(function.new_rva)}</td>'
            f'<td class="num">{function.new_size:,}</td></tr>'
        )
    if not rows:
        return []
    return [
        f"<details open><summary>Functions the package carries ({len(rows):,})</summary>",
        '<table class="functions"><thead><tr><th scope="col">Function</th>'
        '<th scope="col">Change</th><th scope="col">Old RVA</th><th scope="col">New RVA</th>'
        '<th scope="col" class="num">New size (bytes)</th></tr></thead><tbody>',
        *rows,
        "</tbody></table></details>",
    ]


def _blockers_table(blockers: list[Any]) -> list[str]:
    out = [
        f"<h4>Blockers ({len(blockers):,})</h4>",
        '<table class="blockers"><thead><tr><th scope="col">Class</th><th scope="col">Cause</th>'
        '<th scope="col">Where</th><th scope="col">Reason</th></tr></thead><tbody>',
    ]
    for blocker in blockers:
        fields = blocker if isinstance(blocker, Mapping) else {}
        out.append(
            "<tr>"
            + "".join(
                f'<td class="{name}">{_t(fields.get(name) or "")}</td>'
                for name in ("class", "cause", "where", "reason")
            )
            + "</tr>"
        )
    out.append("</tbody></table>")
    return out


def _details(index: int, entry: Mapping[str, Any], package: Package | None) -> list[str]:
    path = str(entry.get("path"))
    status = str(entry.get("status"))
    out = [
        f'<section class="binary" id="{_anchor(index)}" data-status="{_t(status)}" '
        f'aria-labelledby="{_anchor(index)}-title">',
        f'<h3 id="{_anchor(index)}-title"><span class="mono">{_t(path)}</span> '
        f"{_status_badge(status)}</h3>",
        f'<p class="meta">{_t(STATUS_TEXT.get(status, (status, ""))[1])}</p>',
        '<dl class="facts">',
    ]
    if entry.get("machine"):
        out.append(f"<dt>Machine</dt><dd>{_t(entry['machine'])}</dd>")
    functions = entry.get("functions")
    if isinstance(functions, Mapping):
        counted = ", ".join(
            f"{_t(name)} {functions[name]:,}"
            for name in ("modified", "added", "removed", "unchanged")
            if isinstance(functions.get(name), int)
        )
        out.append(f"<dt>Functions</dt><dd>{counted}</dd>")
    elif entry.get("identical"):
        out.append("<dt>Bytes</dt><dd>identical in both trees</dd>")
    package_entry = entry.get("package")
    if isinstance(package_entry, Mapping):
        out.append(f'<dt>Package</dt><dd class="mono">{_t(package_entry.get("file", ""))}</dd>')
        if _package_size(entry) is not None:
            out.append(f"<dt>Package size</dt><dd>{_size(_package_size(entry) or 0)}</dd>")
        out.append(f'<dt>SHA-256</dt><dd class="mono">{_t(package_entry.get("sha256", ""))}</dd>')
    out.append("</dl>")
    if package is not None:
        out += _functions_table(package.functions)
    blockers = entry.get("blockers")
    if isinstance(blockers, list) and blockers:
        out += _blockers_table(blockers)
    if entry.get("error"):
        out.append(f'<p class="error" role="note"><strong>Error:</strong> {_t(entry["error"])}</p>')
    out.append("</section>")
    return out


def index_html(document: Mapping[str, Any], packages: Mapping[str, Package] | None = None) -> bytes:
    """The bytes of ``OUT_DIR/index.html`` for a release.

    ``document`` is the manifest document (``hpatch.release/1``, as ``run_release``
    writes it); binaries are shown in its order. ``packages`` maps a binary's manifest
    ``path`` to the package built for it (``Outcome.package``, signed or not): the
    manifest counts changed functions, the package names them, so a packaged binary
    whose package is given lists its functions. Binaries without one show the counts.
    """
    packages = packages or {}
    binaries = [b for b in document.get("binaries", ()) if isinstance(b, Mapping)]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        "<title>Release report</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<header><h1>Release report</h1>",
        f'<p class="meta" id="servicing">{_servicing(document)}</p></header>',
        "<main>",
        *_summary(binaries),
        *_table(binaries),
        '<section aria-labelledby="details-title"><h2 id="details-title">Details</h2>',
    ]
    for index, entry in enumerate(binaries):
        out += _details(index, entry, packages.get(str(entry.get("path"))))
    out += ["</section>", "</main>", f"<script>{_SCRIPT}</script>", "</body>", "</html>", ""]
    return "\n".join(out).encode("ascii", "xmlcharrefreplace")
