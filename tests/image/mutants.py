"""PE mutants made from real files: sizes claimed but not backed, names that are not
UTF-8, tables pushed to huge counts. Byte surgery on the headers, checked by pefile."""

from __future__ import annotations

import struct

from .corrupt import optional_offset, pe_offset, sections

SCN_UNINITIALIZED_READ_WRITE = 0xC0000080
SCN_CODE_READ_EXECUTE = 0x60000020


def _section_table(data: bytes) -> int:
    optional_size = struct.unpack_from("<H", data, pe_offset(data) + 20)[0]
    return optional_offset(data) + optional_size


def _alignment(data: bytes) -> int:
    return int(struct.unpack_from("<I", data, optional_offset(data) + 32)[0])


def with_section(
    data: bytes,
    name: bytes,
    virtual_size: int,
    characteristics: int = SCN_UNINITIALIZED_READ_WRITE,
    raw: bytes = b"",
) -> bytes:
    """``data`` with one more section after the last, of ``virtual_size`` bytes, holding
    ``raw`` (appended to the file; nothing for a zero-fill section), and SizeOfImage grown
    to cover it. The section table must have room for one more header."""
    out = bytearray(data)
    count = struct.unpack_from("<H", out, pe_offset(out) + 6)[0]
    table = _section_table(out)
    at = table + 40 * count
    first_raw = min(s[3] for s in sections(data) if s[4])
    if at + 40 > first_raw or out[at : at + 40].strip(b"\0"):
        raise ValueError("no room for another section header")
    alignment = _alignment(data)
    last = max(sections(data), key=lambda s: s[1])
    rva = last[1] + last[2]
    rva += -rva % alignment
    raw_offset = len(out) + -len(out) % 0x200 if raw else 0
    raw_size = len(raw) + -len(raw) % 0x200 if raw else 0
    header = name.ljust(8, b"\0")[:8] + struct.pack(
        "<IIIIIIHHI", virtual_size, rva, raw_size, raw_offset, 0, 0, 0, 0, characteristics
    )
    out[at : at + 40] = header
    struct.pack_into("<H", out, pe_offset(out) + 6, count + 1)
    end = rva + virtual_size
    struct.pack_into("<I", out, optional_offset(out) + 56, end + -end % alignment)
    if raw:
        out += bytes(raw_offset - len(out)) + raw.ljust(raw_size, b"\0")
    return bytes(out)


def renamed_section(data: bytes, index: int, name: bytes) -> bytes:
    """``data`` with section ``index`` (from 0) named ``name`` (at most 8 bytes)."""
    out = bytearray(data)
    at = _section_table(out) + 40 * index
    out[at : at + 8] = name.ljust(8, b"\0")[:8]
    return bytes(out)


def renamed_string(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with the one NUL-terminated string ``old`` (an export's or import's name)
    replaced by ``new`` of the same length."""
    if len(old) != len(new) or data.count(old + b"\0") != 1:
        raise ValueError(f"{old!r} is not one string of the file, or {new!r} differs in length")
    at = data.index(old + b"\0")
    return data[:at] + new + data[at + len(new) :]


SCN_INITIALIZED_READ = 0x40000040
_EXCEPTION, _EXPORT = 3, 0
#: One tiny function: ``ret`` and int3 padding (x64).
_X64_FUNCTION = b"\xc3" + b"\xcc" * 15
#: UNWIND_INFO version 1, no flags, no prolog, no codes: a frameless leaf.
_LEAF_UNWIND = bytes([1, 0, 0, 0])


def _set_directory(data: bytes, index: int, rva: int, size: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<II", out, optional_offset(out) + 112 + 8 * index, rva, size)
    return bytes(out)


def _next_rva(data: bytes) -> int:
    last = max(sections(data), key=lambda s: s[1])
    rva = last[1] + last[2]
    return rva + -rva % _alignment(data)


def with_functions(data: bytes, count: int, pdata: bool = True, exports: bool = False) -> bytes:
    """The x64 ``data`` with ``count`` more 16-byte functions in a new code section, each
    with a .pdata entry (the exception directory then names only them) and, with
    ``exports``, each exported (the export directory then names only them): the first
    65536 by name (``fNNNNNNN``; a name's ordinal index is 16 bits), the rest by ordinal."""
    code_rva = _next_rva(data)
    out = with_section(data, b".text2", 16 * count, SCN_CODE_READ_EXECUTE, _X64_FUNCTION * count)
    table_rva = _next_rva(out)
    if pdata:
        table = bytearray(_LEAF_UNWIND)
        unwind_rva = table_rva
        for index in range(count):
            begin = code_rva + 16 * index
            table += struct.pack("<III", begin, begin + 1, unwind_rva)
        out = with_section(out, b".pdata2", len(table), SCN_INITIALIZED_READ, bytes(table))
        out = _set_directory(out, _EXCEPTION, table_rva + 4, 12 * count)
        table_rva = _next_rva(out)
    if exports:
        named = min(count, 1 << 16)
        functions_at = table_rva + 40
        names_at = functions_at + 4 * count
        ordinals_at = names_at + 4 * named
        strings_at = ordinals_at + 2 * named
        directory = struct.pack(
            "<IIHHIIIIIII",
            0, 0, 0, 0, strings_at, 1, count, named, functions_at, names_at, ordinals_at,
        )  # fmt: skip
        strings = b"x.dll\0"
        name_rvas = []
        for index in range(named):
            name_rvas.append(strings_at + len(strings))
            strings += b"f%07d\0" % index
        body = (
            directory
            + struct.pack(f"<{count}I", *(code_rva + 16 * i for i in range(count)))
            + struct.pack(f"<{named}I", *name_rvas)
            + struct.pack(f"<{named}H", *range(named))
            + strings
        )
        out = with_section(out, b".edata2", len(body), SCN_INITIALIZED_READ, body)
        out = _set_directory(out, _EXPORT, table_rva, len(body))
    return out
