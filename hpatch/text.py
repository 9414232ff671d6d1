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
from json.encoder import encode_basestring_ascii as _encode_string
from typing import Any

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
    from rich.markup import escape  # rich only where markup is made: not for --json

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
    return _indented(document, 0, sort_keys)


def _indented(value: Any, level: int, sort_keys: bool) -> str:
    """``json.dumps(_json_ready(value), indent=2, ...)`` nested ``level`` deep (each line
    after the first indented by ``level`` steps more), made with the C encoder.

    The C encoder cannot indent, but a container that holds only scalars is one line per
    item: its item separator can carry the newline and the indent. Text with a lone
    surrogate escaped (``\\udXXX``: rare, and only in names) is made again by the
    reference route, which decodes such strings first.
    """
    try:
        text = _Indenter(sort_keys).text(value, level)
    except _Unusual:
        text = None
    if text is None or "\\ud" in text:
        text = json.dumps(_json_ready(value), indent=2, sort_keys=sort_keys, default=_json_default)
        return text.replace("\n", "\n" + "  " * level) if level else text
    return text


class _Unusual(Exception):
    """A value the fast route does not take (a key that is not text, a cycle)."""


_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONSTANTS = {None: "null", True: "true", False: "false"}


class _Indenter:
    """Makes the text ``json.dumps(value, indent=2)`` makes, container by container."""

    def __init__(self, sort_keys: bool) -> None:
        self.sort_keys = sort_keys
        self.flat: dict[int, Callable[[Any], str]] = {}
        self.depth = 0

    def _flat_encoder(self, level: int) -> Callable[[Any], str]:
        encode = self.flat.get(level)
        if encode is None:
            encoder = json.JSONEncoder(
                separators=(",\n" + "  " * (level + 1), ": "),
                sort_keys=self.sort_keys,
                default=_json_default,
            )
            encode = self.flat[level] = encoder.encode
        return encode

    def text(self, value: Any, level: int) -> str:
        if type(value) in _SCALARS:
            return self.scalar(value)
        if isinstance(value, dict):
            if not value:
                return "{}"
            if any(type(key) is not str for key in value):
                raise _Unusual
            if all(type(item) in _SCALARS for item in value.values()):
                return self.wrapped(self._flat_encoder(level)(value), level)
            items = sorted(value.items()) if self.sort_keys else value.items()
            return self.joined(
                [f"{self.scalar(key)}: {self.nested(item, level)}" for key, item in items],
                "{",
                "}",
                level,
            )
        if isinstance(value, (list, tuple)):
            if not value:
                return "[]"
            if all(type(item) in _SCALARS for item in value):
                return self.wrapped(self._flat_encoder(level)(list(value)), level)
            return self.joined([self.nested(item, level) for item in value], "[", "]", level)
        if isinstance(value, (str, int, float)):  # subclasses: enums and the like
            return self.scalar(value)
        return self.text(_json_default(value), level)

    def nested(self, value: Any, level: int) -> str:
        self.depth += 1
        if self.depth > 100:
            raise _Unusual  # deeper than any document: a cycle, which json reports
        try:
            return self.text(value, level + 1)
        finally:
            self.depth -= 1

    @staticmethod
    def scalar(value: Any) -> str:
        if isinstance(value, str):
            return _encode_string(value)
        if value is None or value is True or value is False:
            return _CONSTANTS[value]
        if isinstance(value, int):
            return int.__repr__(value)
        return json.dumps(float(value))

    @staticmethod
    def wrapped(text: str, level: int) -> str:
        """One line of a flat container, opened up: ``{"a": 1,\\n  "b": 2}`` from the
        flat encoder becomes the indented form."""
        return f"{text[0]}\n{'  ' * (level + 1)}{text[1:-1]}\n{'  ' * level}{text[-1]}"

    @staticmethod
    def joined(items: list[str], opening: str, closing: str, level: int) -> str:
        inner = "  " * (level + 1)
        return f"{opening}\n{inner}" + f",\n{inner}".join(items) + f"\n{'  ' * level}{closing}"


class Streamed:
    """A list of a ``--json`` document made one item at a time as it is written (see
    ``write_json``): a million functions never sit in memory as a million dicts."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


def write_json(document: dict[str, Any], write: Callable[[str], object]) -> None:
    """Write ``document`` as ``json_text`` would, its ``Streamed`` values item by item:
    the same bytes, in memory that follows one item."""

    def dumped(value: Any, level: int) -> str:
        return _indented(value, level, False)

    write("{")
    for index, (key, value) in enumerate(document.items()):
        write(("," if index else "") + "\n  " + json.dumps(_valid(key)) + ": ")
        if not isinstance(value, Streamed):
            write(dumped(value, 1))
            continue
        count = 0
        for item in value.items:
            write(("," if count else "[") + "\n    " + dumped(item, 2))
            count += 1
        write("\n  ]" if count else "[]")
    write("\n}\n" if document else "}\n")
