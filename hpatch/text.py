"""Showing text that comes from inputs: file names, PE names, package strings.

Names, descriptions and paths are chosen by whoever made the input. Before they reach
a terminal, control and format characters (escape sequences, clear-screen, OSC,
right-to-left override, lone surrogates from undecodable bytes) are shown escaped as
``\\xNN`` / ``\\uNNNN``, and rich markup (``[bold]``, ``[/]``) is shown literally.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from rich.markup import escape

# Cc control, Cf format (bidi overrides, zero-width), Cs surrogates (undecodable bytes),
# Co private use, Cn unassigned, Zl/Zp line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escaped(character: str) -> str:
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def plain(text: object) -> str:
    """``text`` with every character that could move the cursor, recolour or reorder
    the terminal, or fail to encode, shown escaped."""
    value = decoded(text) if isinstance(text, bytes) else str(text)
    if value.isprintable():  # the common case: nothing to escape (space is printable)
        return value
    return "".join(_escaped(c) if unicodedata.category(c) in _HIDDEN else c for c in value)


def markup(text: object) -> str:
    """``text`` safe to put inside a rich markup string: escaped, then markup-quoted."""
    return escape(plain(text))


def file_name(path: str | os.PathLike[str]) -> str:
    """A file's base name as text: its bytes decoded as UTF-8, each undecodable byte
    written ``\\xNN`` (so a name in another encoding still names its file readably)."""
    return path_text(os.path.basename(os.fspath(path)))


def path_text(path: str | os.PathLike[str]) -> str:
    """A path as text, decoded as ``file_name`` decodes a name."""
    return decoded(os.fsencode(path))


def decoded(raw: bytes) -> str:
    """Bytes from an input (a PE name) as text: UTF-8, each undecodable byte ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


def _json_default(value: object) -> str:
    if isinstance(value, bytes):
        return decoded(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _valid(text: str) -> str:
    """``text`` without lone surrogates, which strict JSON readers refuse: the bytes
    that ``surrogateescape`` stood for, decoded as ``decoded`` decodes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return decoded(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _json_ready(value: Any) -> Any:
    if isinstance(value, str):
        return _valid(value)
    if isinstance(value, dict):
        return {_json_ready(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def json_text(document: Any, *, sort_keys: bool = False) -> str:
    """A ``--json`` document as text: ASCII, control characters as ``\\uNNNN``
    escapes; names held as bytes, or as text with undecodable bytes escaped by
    ``surrogateescape``, decoded as ``decoded`` decodes them."""
    return json.dumps(_json_ready(document), indent=2, sort_keys=sort_keys, default=_json_default)


class Streamed:
    """A list of a ``--json`` document made one item at a time as it is written (see
    ``write_json``): a million functions never sit in memory as a million dicts."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


def write_json(document: dict[str, Any], write: Callable[[str], object]) -> None:
    """Write ``document`` as ``json_text`` would, its ``Streamed`` values item by item:
    the same bytes, in memory that follows one item."""

    def dumped(value: Any, indent: str) -> str:
        text = json.dumps(_json_ready(value), indent=2, default=_json_default)
        return text.replace("\n", "\n" + indent)

    write("{")
    for index, (key, value) in enumerate(document.items()):
        write(("," if index else "") + "\n  " + json.dumps(_valid(key)) + ": ")
        if not isinstance(value, Streamed):
            write(dumped(value, "  "))
            continue
        count = 0
        for item in value.items:
            write(("," if count else "[") + "\n    " + dumped(item, "    "))
            count += 1
        write("\n  ]" if count else "[]")
    write("\n}\n" if document else "}\n")
