"""The PE/COFF structures hpatch reads, parsed with ``struct`` over the file's bytes.

Plain functions over a buffer, no state: the headers and section table from the file,
the directories (imports, exports, base relocations, load config, debug) from the
mapped image, the COFF symbol table from the file. Every count and offset a structure
holds is bounded by the buffer before it is used: a walk never runs past the bytes
there are, a loop never runs longer than the buffer could hold entries, and a
truncated header is an ImageFormatError. What each result means, and the checks
against the image as a whole, are the reader's (hpatch.image.reader).
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat, zip_longest
from operator import add, eq

from hpatch.arch import arch_for
from hpatch.errors import ImageFormatError, UnsupportedError

PE32PLUS_MAGIC = 0x20B
#: The data directories the loader reads; NumberOfRvaAndSizes beyond it names nothing.
MAX_DIRECTORIES = 16
#: The longest name (DLL, import, export, forwarder, COFF symbol) taken from a file;
#: bounds each search for the terminating NUL.
MAX_NAME = 1 << 16

_FILE_HEADER = struct.Struct("<HHIIIHH")  # Machine .. Characteristics
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")
_SECTION_HEADER_SIZE = 40
_DESCRIPTOR = struct.Struct("<5I")  # IMAGE_IMPORT_DESCRIPTOR
_EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")
_DEBUG_ENTRY = struct.Struct("<IIHHIIII")
_SYMBOL = struct.Struct("<8sIhHBB")
_SYMBOL_SIZE = 18
_ORDINAL_FLAG = 1 << 63
#: Load config fields hpatch reads (IMAGE_LOAD_CONFIG_DIRECTORY64 offsets, sizes).
#: SecurityCookie lies in the part every version of the structure has; each later
#: field counts only when the structure's own Size reaches past its start.
LOAD_CONFIG_FIELDS: dict[str, tuple[int, int]] = {
    "security_cookie": (88, 8),
    "guard_cf_function_table": (128, 8),
    "guard_cf_function_count": (136, 8),
    "guard_flags": (144, 4),
    "chpe_metadata_pointer": (200, 8),
    "dynamic_value_reloc_table_offset": (224, 4),
    "hotpatch_table_offset": (240, 4),
}
_LOAD_CONFIG_ALWAYS = 112  # the fields up to SEHandlerCount: the oldest structure


def u16(data: bytes | memoryview, offset: int) -> int:
    """The little-endian 16-bit value at ``offset``."""
    return int(struct.unpack_from("<H", data, offset)[0])


def u32(data: bytes | memoryview, offset: int) -> int:
    """The little-endian 32-bit value at ``offset``."""
    return int(struct.unpack_from("<I", data, offset)[0])


def check_headers(data: bytes) -> tuple[int, int]:
    """The DOS and PE signatures, a machine hpatch supports and a PE32+ optional header,
    on a file or a mapped image (both start with the headers); returns (machine, offset
    of the optional header)."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise ImageFormatError("not a PE file: no MZ header")
    pe_offset = u32(data, 0x3C)
    if pe_offset + 24 > len(data) or data[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise ImageFormatError("not a PE file: no PE signature at e_lfanew")
    machine = u16(data, pe_offset + 4)
    optional_offset = pe_offset + 24
    if optional_offset + 2 > len(data):
        raise ImageFormatError("truncated file: the optional header is missing")
    arch_for(machine)  # UnsupportedError for other machines
    magic = u16(data, optional_offset)
    if magic != PE32PLUS_MAGIC:
        raise UnsupportedError(f"unsupported optional header magic 0x{magic:x}: hpatch needs PE32+")
    return machine, optional_offset


def c_string(data: bytes, offset: int) -> bytes:
    """The NUL-terminated bytes at ``offset`` (at most MAX_NAME of them; empty when
    ``offset`` is outside ``data``)."""
    if not 0 <= offset < len(data):
        return b""
    end = data.find(b"\0", offset, offset + MAX_NAME)
    return data[offset : end if end >= 0 else offset + MAX_NAME]


@dataclass(frozen=True, slots=True)
class RawSection:
    """One section header as the file holds it (the name cut at its first NUL)."""

    name: bytes
    virtual_size: int
    rva: int
    raw_size: int
    raw_offset: int
    characteristics: int


@dataclass(frozen=True, slots=True)
class Headers:
    """The COFF file header, the PE32+ optional header and the section table."""

    machine: int
    time_date_stamp: int
    symbol_table_offset: int
    number_of_symbols: int
    entry_rva: int
    image_base: int
    section_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    #: (RVA, size) of each data directory, min(NumberOfRvaAndSizes, 16) of them
    directories: tuple[tuple[int, int], ...]
    sections: tuple[RawSection, ...]


def parse_headers(data: bytes) -> Headers:
    """The headers of the PE file ``data``; ImageFormatError when they are cut short."""
    machine, optional = check_headers(data)
    pe_offset = optional - 24
    (
        _machine,
        section_count,
        time_date_stamp,
        symbol_table_offset,
        number_of_symbols,
        optional_size,
        _characteristics,
    ) = _FILE_HEADER.unpack_from(data, pe_offset + 4)
    # The data directories follow the fixed part of the PE32+ optional header (112 bytes).
    if optional + 112 > len(data):
        raise ImageFormatError("truncated file: the optional header is cut short")
    entry_rva = u32(data, optional + 16)
    image_base = int(struct.unpack_from("<Q", data, optional + 24)[0])
    section_alignment = u32(data, optional + 32)
    size_of_image, size_of_headers, checksum = struct.unpack_from("<III", data, optional + 56)
    count = min(u32(data, optional + 108), MAX_DIRECTORIES)
    if optional + 112 + 8 * count > len(data):
        raise ImageFormatError("truncated file: the data directories are cut short")
    pairs = struct.unpack_from(f"<{2 * count}I", data, optional + 112)
    directories = tuple(zip(pairs[0::2], pairs[1::2], strict=True))
    table = optional + optional_size
    if table + _SECTION_HEADER_SIZE * section_count > len(data):
        raise ImageFormatError(
            f"truncated file: the section table of {section_count} sections at 0x{table:x} "
            f"ends past the file (0x{len(data):x} bytes)"
        )
    sections = tuple(
        RawSection(
            name.split(b"\0", 1)[0], virtual_size, rva, raw_size, raw_offset, characteristics
        )
        for name, virtual_size, rva, raw_size, raw_offset, *_, characteristics in (
            _SECTION_HEADER.iter_unpack(data[table : table + _SECTION_HEADER_SIZE * section_count])
        )
    )
    return Headers(
        machine=machine,
        time_date_stamp=time_date_stamp,
        symbol_table_offset=symbol_table_offset,
        number_of_symbols=number_of_symbols,
        entry_rva=entry_rva,
        image_base=image_base,
        section_alignment=section_alignment,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        checksum=checksum,
        directories=directories,
        sections=sections,
    )


# imports --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawImport:
    """One import: by ``name`` or by ``ordinal``, bound through the IAT slot ``iat_rva``."""

    dll: bytes
    name: bytes | None
    ordinal: int | None
    iat_rva: int


def _thunks(view: memoryview, rva: int) -> Iterator[tuple[int]]:
    """The 64-bit values of a thunk table at ``rva``, up to the image's end (none for
    ``rva`` 0)."""
    if not 0 < rva < len(view):
        return iter(())
    return struct.iter_unpack("<Q", view[rva : rva + (len(view) - rva) // 8 * 8])


def _printable(name: bytes) -> bool:
    """Every byte printable ASCII (a space up to a tilde)."""
    return not name.translate(None, _PRINTABLE)


_PRINTABLE = bytes(range(0x20, 0x7F))
#: A DLL name is 4 to 255 printable bytes, a function name 1 to 4096: descriptors and
#: entries whose names are not are garbage, and skipped.
_DLL_NAME_SIZES = range(4, 256)
_IMPORT_NAME_SIZES = range(1, 0x1001)


def read_imports(mapped: bytes, directory_rva: int, directory_size: int) -> list[RawImport]:
    """The imports the descriptors of the import directory name, in order.

    Descriptors are read up to the directory's end, the all-zero one, or one without a
    name; one whose DLL name is not a plausible name is skipped. Each DLL's entries
    come from its lookup table, or from its IAT where the lookup table is absent or
    ends first, up to the slot where both hold zero; an entry by name whose name is
    not a plausible name is skipped (its slot still counts). Ordinals are thunks with
    bit 63 set and bits 16 to 62 clear; any other thunk is a hint/name RVA.
    """
    imports: list[RawImport] = []
    size = len(mapped)
    view = memoryview(mapped)
    # Each descriptor's tables are walked once; tables shared between descriptors
    # could make the walks cost the square of the image, so entries are bounded by
    # what an image of this size can hold (each needs its own 8-byte IAT slot).
    budget = size // 8 + 1
    end = min(directory_rva + directory_size, size - _DESCRIPTOR.size + 1)
    for at in range(directory_rva, max(end, directory_rva), _DESCRIPTOR.size):
        lookup, stamp, chain, name_rva, iat = _DESCRIPTOR.unpack_from(mapped, at)
        if not (lookup or stamp or chain or name_rva or iat):
            break
        if not name_rva:
            break
        dll = c_string(mapped, name_rva)
        if len(dll) not in _DLL_NAME_SIZES or not _printable(dll):
            continue

        # The slot's value comes from the lookup table, or from the IAT where the
        # lookup table is absent, unreadable or zero; a table reads 0 past the image.
        for index, ((current,), (slot,)) in enumerate(
            zip_longest(_thunks(view, lookup), _thunks(view, iat), fillvalue=(0,))
        ):
            value = current or slot
            if not value:
                break
            budget -= 1
            if budget < 0:
                raise ImageFormatError(
                    "corrupt import directory: its tables name more imports than the "
                    "image has room for"
                )
            iat_rva = iat + 8 * index
            if value & _ORDINAL_FLAG and not (value & ~_ORDINAL_FLAG) >> 16:
                imports.append(RawImport(dll, None, value & 0xFFFF, iat_rva))
            else:
                name = c_string(mapped, value + 2) if value + 2 < size else b""
                if len(name) in _IMPORT_NAME_SIZES and _printable(name):
                    imports.append(RawImport(dll, name, None, iat_rva))
    return imports


# exports --------------------------------------------------------------------------


#: One export: (ordinal, name, RVA, forwarder). The name is empty when the entry is
#: exported by ordinal only; the RVA is what the address table holds, 0 when that
#: points inside the export directory; the forwarder, for a forwarded export, is the
#: (DLL, function) of its forwarder string, split at the first dot. Tuples, not
#: records: a large DLL exports tens of thousands.
RawExport = tuple[int, bytes, int, "tuple[bytes, bytes] | None"]

#: More entries than this in either table make the export directory corrupt (and cost
#: nothing to refuse); a name longer than MAX_EXPORT_NAME makes its entry corrupt.
MAX_EXPORTS = 0x1000000
MAX_EXPORT_NAME = 4096


def _names(mapped: bytes, rvas: tuple[int, ...]) -> list[bytes]:
    """The NUL-terminated string at each RVA (as c_string reads it).

    Linkers write export names back to back in the order of the name table; then one
    split reads them all, checked against the RVAs without a Python loop. Otherwise
    each is read on its own.
    """
    if rvas and 0 < rvas[0] <= rvas[-1] < len(mapped):
        end = mapped.find(b"\0", rvas[-1], rvas[-1] + MAX_NAME)
        if end >= 0:
            parts = mapped[rvas[0] : end].split(b"\0")
            if len(parts) == len(rvas):
                starts = accumulate(map(add, map(len, parts), repeat(1)), initial=rvas[0])
                if all(map(eq, starts, rvas)):
                    return parts
    return [c_string(mapped, rva) for rva in rvas]


def read_exports(mapped: bytes, directory_rva: int, directory_size: int) -> list[RawExport]:
    """The exports of the export directory, in address-table order.

    Ordinals are 16 bits (Base + index). An entry whose address is 0, or whose name
    the name table cannot supply, is corrupt and left out; an address inside the
    export directory is a forwarder string. An entry takes the first name pointing at
    it; the name table stops at the first ordinal index past the address table.
    """
    size = len(mapped)
    if not directory_rva or directory_rva + _EXPORT_DIRECTORY.size > size:
        return []
    (
        _flags,
        _stamp,
        _major,
        _minor,
        _name_rva,
        base,
        address_count,
        name_count,
        addresses_rva,
        names_rva,
        ordinals_rva,
    ) = _EXPORT_DIRECTORY.unpack_from(mapped, directory_rva)
    if address_count > MAX_EXPORTS or name_count > MAX_EXPORTS:
        return []

    def table(rva: int, count: int, width: int) -> tuple[int, ...]:
        """The first ``count`` entries at ``rva``, cut where the image ends: the counts
        cost only what the image holds."""
        count = min(count, max(size - rva, 0) // width)
        return struct.unpack_from(f"<{count}{'HI'[width // 4]}", mapped, rva) if count else ()

    addresses = table(addresses_rva, address_count, 4)
    name_rvas = table(names_rva, name_count, 4)
    indexes = table(ordinals_rva, name_count, 2)
    directory_end = directory_rva + directory_size
    count = len(addresses)
    base &= 0xFFFF
    names: list[bytes] = [b""] * count
    corrupt: set[int] = set()  # ordinals
    extern: set[int] = set()  # indexes
    ascending = sorted(addresses)  # in C: whether any entry is empty or a forwarder
    first_inside = bisect.bisect_left(ascending, directory_rva)
    if (ascending and not ascending[0]) or (
        first_inside < count and ascending[first_inside] < directory_end
    ):
        for index, rva in enumerate(addresses):
            if not rva:
                corrupt.add((base + index) & 0xFFFF)
            elif directory_rva <= rva < directory_end:
                extern.add(index)
                forwarder = c_string(mapped, rva)
                if len(forwarder) <= MAX_EXPORT_NAME and _printable(forwarder):
                    names[index] = forwarder
    forwarders: dict[int, tuple[bytes, bytes]] = {}
    by_position = _names(mapped, name_rvas)

    def name_at(position: int) -> bytes:
        return by_position[position] if position < len(by_position) else b""

    if (
        not extern
        and len(by_position) == len(indexes)
        and max(indexes, default=0) < count
        and len(set(indexes)) == len(indexes)
        and b"" not in by_position
        and max(map(len, by_position), default=0) <= MAX_EXPORT_NAME
    ):
        # The usual table (each entry named once, every name readable): placed in C.
        deque(map(names.__setitem__, indexes, by_position), maxlen=0)
        indexes = ()
    for position, index in enumerate(indexes):
        if index >= count:
            break
        if not names[index]:
            name = name_at(position)
            if not name or len(name) > MAX_EXPORT_NAME:
                corrupt.add((base + index) & 0xFFFF)
                continue
            names[index] = name
        if index in extern and names[index]:
            # A forwarder string names DLL.function; without a dot it forwards nowhere
            library, dot, function = names[index].partition(b".")
            if dot:
                name = name_at(position)
                if name and len(name) <= MAX_EXPORT_NAME and _printable(name):
                    names[index] = name
                forwarders[index] = (library, function)
    ordinals = (
        list(range(base, base + count))
        if base + count <= 0x10000
        else [(base + index) & 0xFFFF for index in range(count)]
    )
    if not corrupt and not extern:  # the usual table: built in C
        return list(zip(ordinals, names, addresses, repeat(None, count), strict=True))
    return [
        (ordinal, names[index], 0 if index in extern else rva, forwarders.get(index))
        for index, (ordinal, rva) in enumerate(zip(ordinals, addresses, strict=True))
        if ordinal not in corrupt
    ]


# base relocations -------------------------------------------------------------------


def read_relocation_blocks(
    mapped: bytes, directory_rva: int, directory_size: int
) -> list[tuple[int, memoryview]]:
    """(page RVA, its 16-bit entries as bytes) of each base relocation block, in order.

    A block starts before the directory's end; the walk stops at a block of page RVA
    0, or one whose size is less than its header or more than the image. A block's
    entries are what its size says, cut at the image's end.
    """
    blocks: list[tuple[int, memoryview]] = []
    view = memoryview(mapped)
    size = len(mapped)
    at, end = directory_rva, directory_rva + directory_size
    while at < end and at + 8 <= size:
        page_rva, block_size = struct.unpack_from("<II", mapped, at)
        if not page_rva or not 8 <= block_size <= size:
            break
        stop = min(at + block_size, size)
        blocks.append((page_rva, view[at + 8 : stop - (stop - at - 8) % 2]))
        at += block_size
    return blocks


# load config, debug, COFF symbols -------------------------------------------------


def read_load_config(data: bytes | memoryview, at: int) -> dict[str, int] | None:
    """The load config fields hpatch reads (LOAD_CONFIG_FIELDS, and ``size``, the
    structure's own Size) from the structure at ``at`` in ``data`` (the section that
    holds it); a field the structure is too short for, or that runs past ``data``,
    reads 0. None when not even the oldest structure fits."""
    if at + _LOAD_CONFIG_ALWAYS > len(data):
        return None
    declared = u32(data, at)
    fields = {"size": declared}
    for field, (offset, width) in LOAD_CONFIG_FIELDS.items():
        present = offset < _LOAD_CONFIG_ALWAYS or declared > offset
        start = at + offset
        if present and start + width <= len(data):
            fields[field] = int.from_bytes(data[start : start + width], "little")
        else:
            fields[field] = 0
    return fields


def read_debug_entries(mapped: bytes, rva: int, size: int) -> list[tuple[int, int]]:
    """(AddressOfRawData, SizeOfData) of each IMAGE_DEBUG_DIRECTORY entry: one per 28
    bytes of the directory, a partial one counting; none when the directory does not
    lie inside the image, and only those inside it."""
    if not rva or not size or rva + size > len(mapped):
        return []
    count = -(-size // _DEBUG_ENTRY.size)
    count = min(count, (len(mapped) - rva) // _DEBUG_ENTRY.size)
    return [
        (entry[6], entry[5])
        for entry in _DEBUG_ENTRY.iter_unpack(mapped[rva : rva + count * _DEBUG_ENTRY.size])
    ]


@dataclass(frozen=True, slots=True)
class RawSymbol:
    """A COFF symbol-table entry (auxiliary records skipped)."""

    name: bytes
    value: int
    section_number: int
    type: int
    storage_class: int


def read_symbols(data: bytes, offset: int, count: int) -> list[RawSymbol]:
    """The COFF symbol table of ``count`` records at file ``offset``, up to what the
    file holds; long names come from the string table after it."""
    if not offset or not count or offset >= len(data):
        return []
    strings = offset + count * _SYMBOL_SIZE  # the string table follows the declared count
    count = min(count, (len(data) - offset) // _SYMBOL_SIZE)
    table = data[offset : offset + count * _SYMBOL_SIZE]
    symbols: list[RawSymbol] = []
    index = 0
    unpack = _SYMBOL.unpack_from
    while index < count:
        short, value, section, kind, storage, aux = unpack(table, index * _SYMBOL_SIZE)
        if short[:4] == b"\0\0\0\0":
            name = c_string(data, strings + int.from_bytes(short[4:], "little"))
        else:
            name = short.split(b"\0", 1)[0]
        symbols.append(RawSymbol(name, value, section, kind, storage))
        index += 1 + aux
    return symbols
