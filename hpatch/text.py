"""Showing text that comes from inputs: file names, PE names, package strings.

Names, descriptions and paths are chosen by whoever made the input. Before they reach
a terminal, control and format characters (escape sequences, clear-screen, OSC,
right-to-left override, lone surrogates from undecodable bytes) are shown escaped as
``\\xNN`` / ``\\uNNNN``, and rich markup (``[bold]``, ``[/]``) is shown literally.
"""

from __future__ import annotations

import os
import unicodedata

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
    value = str(text)
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
    return os.fsencode(path).decode("utf-8", "backslashreplace")
