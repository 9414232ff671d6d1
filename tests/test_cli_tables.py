"""Tables fit the console: detail columns are dropped first, names are never cut."""

from __future__ import annotations

import re

from rich.console import Console

from hpatch.cli.tables import Column, fitted_table

COLUMNS = (
    Column("status"),
    Column("old RVA", "right", drop=2),
    Column("new RVA", "right", drop=3),
    Column("name"),
    Column("why", prose=True, drop=1),
)
NAME = "?GetImplementation@CFoo@@QEAAPEAUIUnknown@@AEBU_GUID@@PEAPEAXW4Flags@1@@Z"


def rendered(width: int, names: list[str]) -> str:
    rows = [
        ("modified", "0x1480", "0x1490", name, "the data reference at 0x1755 points elsewhere")
        for name in names
    ]
    console = Console(width=width, record=True, force_terminal=False)
    console.print(fitted_table("changed functions", COLUMNS, rows, width))
    return console.export_text()


def cells(text: str) -> str:
    """The text of the table without its borders and line breaks."""
    return re.sub(r"[\s│┃┏┓┗┛┡┩└┘━─┳┻╇┴┬╋┼]+", "", text)


def test_wide_console_keeps_every_column() -> None:
    text = rendered(200, ["hp_version"])
    for header in ("status", "old RVA", "new RVA", "name", "why"):
        assert header in text
    assert max(len(line) for line in text.splitlines()) <= 200


def test_80_columns_drop_detail_and_keep_names_whole() -> None:
    names = ["hp_tlv_copy_string", "hp_json_escape", NAME]
    text = rendered(80, names)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # nothing is cut short
    assert "new RVA" not in text  # the first detail to go
    assert "status" in text and "name" in text
    flat = cells(text)
    for name in names:
        # a name longer than its column folds onto the next lines: all of it is there
        assert re.sub(r"\s", "", name) in flat
    for name in names[:2]:
        assert name in text  # short names stay on one line
