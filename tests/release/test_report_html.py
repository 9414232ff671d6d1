"""``OUT_DIR/index.html``: the HTML as written, and what a real headless chromium shows
of it (the summary, a blocker's cause, sorting by a click on a column heading)."""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hpatch.package import BuildOptions
from hpatch.package.model import Package
from hpatch.release import Outcome, Pair, Settings, run_release
from hpatch.release.report_html import REPORT_NAME, index_html
from hpatch.release.run import Status, new_entry

from .test_release import EXPECTED, make_trees

NO_BROWSER = (
    "chromium is not on PATH: the release report is tested in a real headless browser; "
    "`make browser` (part of `make test`) installs it (Debian: apt-get install chromium)"
)
HOSTILE = "<script>alert(1)</script>\"'&amp;.dll"


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text outside scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)


def parsed(data: bytes) -> Tags:
    tags = Tags()
    tags.feed(data.decode("ascii"))
    tags.close()
    return tags


def assert_self_contained(data: bytes) -> None:
    """One inline script, no handler attribute, no URL but the page's own anchors."""
    tags = parsed(data)
    names = [tag for tag, _ in tags.tags]
    assert names.count("script") == 1 and names.count("style") == 1
    assert not {"img", "iframe", "object", "embed", "link", "form", "base"} & set(names)
    for tag, attrs in tags.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        assert "src" not in attrs and "srcset" not in attrs and "style" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    lowered = data.lower()
    assert b"http:" not in lowered and b"https:" not in lowered and b"url(" not in lowered
    assert b"@import" not in lowered


def document_of(binaries: list[dict[str, Any]], **servicing: Any) -> dict[str, Any]:
    from hpatch.release.manifest import manifest_document

    return manifest_document(
        binaries,
        {"sequence": 3, "supersedes": [1, 2], "description": "", "advisory": ""} | servicing,
        {"inputs": 5, "emulate": True},
    )


def every_status() -> list[dict[str, Any]]:
    """One entry per status, as the tasks make them."""
    counts = {"functions_old": 10, "functions_new": 11, "unchanged": 8}
    packaged = new_entry("a/packaged.dll", Status.PACKAGED, "AMD64") | {
        "functions": counts | {"modified": 2, "added": 1, "removed": 0},
        "package": {"file": "packages/a/packaged.dll.hpk", "sha256": "ab" * 32, "size": 4321},
    }
    blocked = new_entry("b/blocked.dll", Status.BLOCKED, "ARM64") | {
        "functions": counts | {"modified": 12, "added": 0, "removed": 1},
        "blockers": [
            {
                "kind": "writable_data",
                "class": "hazard",
                "cause": "writable_data_resized",
                "where": "section .data",
                "reason": "writable data changes size",
            }
        ],
    }
    return [
        packaged,
        blocked,
        new_entry("c/error.dll", Status.ERROR) | {"error": "truncated file"},
        new_entry("d/added.dll", Status.ADDED, "AMD64"),
        new_entry("e/removed.dll", Status.REMOVED, "ARM64"),
        new_entry("f/unchanged.dll", Status.UNCHANGED, "AMD64") | {"identical": True},
    ]


def test_every_status_is_rendered() -> None:
    data = index_html(document_of(every_status()))
    assert_self_contained(data)
    tags = parsed(data)
    rows = [a["data-status"] for t, a in tags.tags if t == "tr" and "data-status" in a]
    sections = [a["data-status"] for t, a in tags.tags if t == "section" and "data-status" in a]
    manifest_order = [e["status"] for e in every_status()]
    assert sorted(rows) == sorted([*Status.ALL, *manifest_order])  # counts, then the table
    assert rows[len(Status.ALL) :] == manifest_order
    assert sections == manifest_order
    text = " ".join(" ".join(tags.text).split())
    assert "writable_data_resized" in text and "truncated file" in text
    assert "packages/a/packaged.dll.hpk" in text and "4,321" in text
    assert "AMD64: 3, ARM64: 2, unknown: 1" in text
    assert "supersedes 1\u20132" in text


def test_hostile_names_are_escaped() -> None:
    entries = every_status()
    entries[0]["path"] = HOSTILE
    entries[1]["blockers"][0] |= {"where": "<img src=x onerror=alert(1)>", "reason": "a & b"}
    entries[2]["error"] = "</p><script>alert(2)</script>"
    entries[3]["path"] = "caf\\xe9 \u202egnp.exe"  # a Latin-1 name, decoded; a bidi override
    entries[4]["path"] = "lone\udce9.dll"  # a surrogate from an undecodable byte
    entries[5]["machine"] = '"><b>'
    document = document_of(entries, description="<!-- x", advisory="</title><a href=//evil>")
    data = index_html(document)
    assert_self_contained(data)
    text = " ".join(" ".join(parsed(data).text).split())
    for shown in (
        HOSTILE,
        "<img src=x onerror=alert(1)>",
        "</p><script>alert(2)</script>",
        '"><b>',
        "<!-- x",
        "</title><a href=//evil>",
        "caf\\xe9 \\u202egnp.exe",  # shown as escapes, not reordering the line
        "lone\\udce9.dll",
    ):
        assert shown in text, shown


def test_report_is_deterministic_and_independent_of_the_document_object() -> None:
    document = document_of(every_status())
    data = index_html(document)
    assert index_html(copy.deepcopy(document)) == data
    assert index_html(json.loads(json.dumps(document))) == data  # as read back from disk
    assert data.isascii()


def test_the_table_is_in_the_html() -> None:
    """The script only sorts: the rows, the summary and the details need none of it."""
    data = index_html(document_of(every_status()))
    tags = parsed(data)
    body_rows = [a for t, a in tags.tags if t == "tr" and "data-status" in a]
    assert len(body_rows) == len(Status.ALL) + len(every_status())
    assert not [t for t, _ in tags.tags if t == "button"]


# A real release of the sample trees, reported as run_release's caller does.


@dataclasses.dataclass(frozen=True)
class Released:
    root: Path
    out: Path
    document: dict[str, Any]
    packages: dict[str, Package]
    report: Path


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Released:
    root = tmp_path_factory.mktemp("report")
    old, new = make_trees(root)
    out = root / "out"
    packages: dict[str, Package] = {}

    def finished(pair: Pair, outcome: Outcome) -> None:
        if outcome.package is not None:
            packages[pair.path] = outcome.package

    options = BuildOptions(2, (1, 1), "month 2 <fixes> & more", "CVE-2026-0001")
    result = run_release(
        str(old), str(new), str(out), Settings(options, emulate=False), jobs=2, finished=finished
    )
    report = out / REPORT_NAME
    report.write_bytes(index_html(result.document, packages))
    return Released(root, out, result.document, packages, report)


def test_report_of_a_release(released: Released) -> None:
    data = released.report.read_bytes()
    assert_self_contained(data)
    assert str(released.root).encode() not in data  # no absolute path
    assert index_html(released.document, dict(released.packages)) == data
    # The functions each package carries are named in its details.
    names = [f.name for p in released.packages.values() for f in p.functions if f.name]
    assert names and all(name.encode() in data for name in names)
    function = released.packages["X64/Core.DLL"].functions[0]
    hostile = {
        "X64/Core.DLL": dataclasses.replace(
            released.packages["X64/Core.DLL"],
            functions=(dataclasses.replace(function, name=HOSTILE),),
        )
    }
    assert_self_contained(index_html(released.document, hostile))


# The browser, driven over the DevTools protocol on the pipe chromium offers
# (--remote-debugging-pipe: commands on fd 3, replies on fd 4, each JSON text ended by
# a NUL byte), with the standard library only.


class Browser:
    """One headless chromium and one page of it."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        def plumb() -> None:
            # Moved above 4 first, so that placing one on fd 3 cannot close the other.
            read_end = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            close_fds=False,  # the pipe's ends must reach chromium; the rest are CLOEXEC
            preexec_fn=plumb,  # a test process: no threads to deadlock
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        self.session: str = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=self.session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise EOFError("chromium closed its pipe (see chromium.log)")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)  # type: ignore[no-any-return]

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]
            self.events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._message(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url}, self.session)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            self.session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A left click at the middle of the element, as the mouse would make it."""
        x, y = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                self.session,
            )

    def problems(self) -> list[str]:
        """What the page logged as a warning or an error (a refused style or script)."""
        return [
            str(e["params"]["entry"].get("text"))
            for e in self.events
            if e.get("method") == "Log.entryAdded"
            and e["params"]["entry"].get("level") in ("warning", "error")
        ] + [
            str(e["params"]["exceptionDetails"])
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
        ]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=30)
        except (OSError, TimeoutError, EOFError, RuntimeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self._log.close()


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail(NO_BROWSER)  # not a skip: the setup provides it
    return executable


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    instance = Browser(chromium, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield instance
    finally:
        instance.close()


ROWS = "Array.from(document.querySelectorAll('#binaries tbody tr'), r => r.cells[0].innerText)"


def test_browser_shows_the_release(browser: Browser, released: Released) -> None:
    browser.open(released.report.as_uri())
    assert browser.problems() == []  # the policy let the page's own style and script run
    text = browser.evaluate("document.body.innerText")
    counts = browser.evaluate(
        "Object.fromEntries(Array.from(document.querySelectorAll('#status-counts tbody tr'),"
        " r => [r.dataset.status, r.cells[1].innerText]))"
    )
    assert counts == {s: str(n) for s, n in released.document["summary"].items()}
    assert "Packages\t2" in text or "Packages\n2" in text
    assert "month 2 <fixes> & more" in text  # escaped text shows as typed
    blocked = browser.evaluate("document.getElementById('binary-2').innerText")
    assert blocked.startswith("blocked/data.dll")
    causes = {b["cause"] for b in released.document["binaries"][1]["blockers"]}
    assert causes and all(cause in blocked for cause in causes)
    assert "truncated" in browser.evaluate("document.getElementById('binary-3').innerText")
    # The styles applied: a status is a badge, not plain inline text.
    assert browser.evaluate(
        "getComputedStyle(document.querySelector('#binaries .status')).display"
    ) == ("inline-block")
    assert browser.evaluate(ROWS) == list(EXPECTED)  # the manifest's order
    shot = browser.send("Page.captureScreenshot", {"format": "png"}, browser.session)
    assert len(shot["data"]) > 10_000


def test_browser_sorts_by_a_click(browser: Browser, released: Released) -> None:
    browser.open(released.report.as_uri())
    heading = "#binaries thead th:nth-child({}) button"
    # Status: what needs attention first; ties keep the manifest's order.
    browser.click(heading.format(3))
    assert browser.evaluate(ROWS) == [
        "broken.dll",
        "blocked/data.dll",
        "fresh.dll",
        "gone.dll",
        "arm64/core.dll",
        "X64/Core.DLL",
        "same.dll",
    ]
    assert browser.evaluate(
        "document.querySelector('#binaries thead th:nth-child(3)').getAttribute('aria-sort')"
    ) == ("ascending")
    browser.click(heading.format(3))
    assert browser.evaluate(ROWS) == [
        "same.dll",
        "arm64/core.dll",
        "X64/Core.DLL",
        "gone.dll",
        "fresh.dll",
        "blocked/data.dll",
        "broken.dll",
    ]
    # Changed functions sort as numbers (17 after 7), a dash below every number.
    browser.click(heading.format(4))
    rows = browser.evaluate(ROWS)
    changed = {b["path"]: b["functions"] for b in released.document["binaries"]}
    counts = [
        -1
        if changed[p] is None
        else changed[p]["modified"] + changed[p]["added"] + changed[p]["removed"]
        for p in rows
    ]
    assert counts == sorted(counts) and counts[-1] > 9 and rows[-1] == "blocked/data.dll"
    browser.click(heading.format(1))
    assert browser.evaluate(ROWS) == sorted(EXPECTED, key=str.casefold)
    assert browser.problems() == []


def test_browser_without_script_shows_every_row(browser: Browser, released: Released) -> None:
    """Rendered with JavaScript off: the same rows and details, no sort controls."""
    browser.send("Emulation.setScriptExecutionDisabled", {"value": True}, browser.session)
    try:
        browser.open(released.report.as_uri())
        root = browser.send("DOM.getDocument", {}, browser.session)["root"]["nodeId"]
        shown = browser.send("DOM.getOuterHTML", {"nodeId": root}, browser.session)
    finally:
        browser.send("Emulation.setScriptExecutionDisabled", {"value": False}, browser.session)
    tags = parsed(shown["outerHTML"].encode("ascii", "xmlcharrefreplace"))
    anchors = [a.get("href") for t, a in tags.tags if t == "a"]
    assert anchors == [f"#binary-{n}" for n in range(1, len(EXPECTED) + 1)]
    assert not [t for t, _ in tags.tags if t == "button"]  # the script made none
    text = " ".join(tags.text)
    assert all(path in text for path in EXPECTED)
    assert "Select a column heading" not in text
