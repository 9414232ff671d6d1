"""The import slots of a baseline, read from its mapped image.

A package lists the IAT slots its code calls through by RVA only: the baseline, which
the package pins by the SHA-256 of its mapped image, says which DLL and function each
slot holds. Resolving a package reads them here, from the same bytes the region stream
is decoded against, so the names it reports are the baseline's own. The reader takes
nothing on trust: every RVA is bounds-checked against the image, and every walk is
bounded by the image's size.
"""

from __future__ import annotations

import struct

from hpatch.errors import ImageFormatError, PackageFormatError, UnsupportedError
from hpatch.image.reader import check_headers
from hpatch.package.model import ImportRef, Package

_IMPORT_DIRECTORY = 1
_DESCRIPTOR = struct.Struct("<5I")
_ORDINAL_FLAG = 1 << 63
_MAX_NAME = 4096


def _u32(image: bytes, rva: int) -> int:
    return int.from_bytes(image[rva : rva + 4], "little")


def _c_string(image: bytes, rva: int) -> str:
    end = image.find(b"\0", rva, rva + _MAX_NAME)
    if not 0 < rva < len(image) or end < 0:
        raise PackageFormatError(f"baseline imports: no name at RVA 0x{rva:x}")
    return image[rva:end].decode("ascii", errors="replace")


def _import_directory(image: bytes) -> tuple[int, int]:
    """(RVA, size) of the import directory; (0, 0) when there is none."""
    try:
        _machine, optional = check_headers(image)
    except (ImageFormatError, UnsupportedError) as exc:
        raise PackageFormatError(f"baseline imports: {exc}") from None
    if optional + 112 > len(image):
        raise PackageFormatError("baseline imports: the optional header is cut short")
    if _u32(image, optional + 108) <= _IMPORT_DIRECTORY:
        return 0, 0
    entry = optional + 112 + 8 * _IMPORT_DIRECTORY
    return _u32(image, entry), _u32(image, entry + 4)


def import_slots(image: bytes) -> dict[int, tuple[str, str, int]]:
    """Every IAT slot of the mapped image ``image``: its RVA -> (DLL, name, ordinal), the
    name empty for an import by ordinal and the ordinal 0 for one by name."""
    directory, _size = _import_directory(image)
    slots: dict[int, tuple[str, str, int]] = {}
    if not directory:
        return slots
    size = len(image)
    if directory + _DESCRIPTOR.size > size:
        raise PackageFormatError("baseline imports: the import directory lies past the image")
    for at in range(directory, size - _DESCRIPTOR.size + 1, _DESCRIPTOR.size):
        lookup, _stamp, _chain, name_rva, iat = _DESCRIPTOR.unpack_from(image, at)
        if not (lookup or name_rva or iat):
            break
        dll = _c_string(image, name_rva)
        thunks = lookup or iat
        if not 0 < iat < size or not 0 < thunks < size:
            raise PackageFormatError(f"baseline imports: {dll} has its thunks outside the image")
        for index in range((size - max(thunks, iat)) // 8):
            thunk = int.from_bytes(image[thunks + 8 * index : thunks + 8 * index + 8], "little")
            if not thunk:
                break
            if thunk & _ORDINAL_FLAG:
                entry = (dll, "", thunk & 0xFFFF)
            else:
                entry = (dll, _c_string(image, (thunk & 0x7FFFFFFF) + 2), 0)
            slots[iat + 8 * index] = entry
    else:
        raise PackageFormatError("baseline imports: the import directory does not end in the image")
    return slots


def named_imports(package: Package, baseline: bytes) -> tuple[ImportRef, ...]:
    """The package's imports named as the baseline names its slots; a slot the baseline
    does not import through is refused, and so is a new import the baseline has."""
    if not package.imports and not package.new_imports:
        return ()
    slots = import_slots(baseline)
    imported = {(dll.lower(), name or ordinal) for dll, name, ordinal in slots.values()}
    for added in package.new_imports:
        if (added.dll.lower(), added.name or added.ordinal) in imported:
            raise PackageFormatError(
                f"the new import {added.label} is one the baseline imports: it binds to the "
                "baseline's slot"
            )
    named = []
    for item in package.imports:
        held = slots.get(item.old_iat_rva)
        if held is None:
            raise PackageFormatError(
                f"the import slot at 0x{item.old_iat_rva:x} is not an import slot of the baseline"
            )
        if item.dll and (item.dll.lower(), item.name, item.ordinal) != (
            held[0].lower(),
            held[1],
            held[2],
        ):
            raise PackageFormatError(
                f"the import slot at 0x{item.old_iat_rva:x} holds {held[0]}!{held[1] or held[2]} "
                f"in the baseline, not {item.dll}!{item.name or item.ordinal}"
            )
        named.append(ImportRef(held[0], held[1], held[2], item.old_iat_rva))
    return tuple(named)
