"""Map a PE image into an address space the way the Windows loader does.

Headers read-only, each section at its RVA with the protection its characteristics
ask for, base relocations applied when the image does not sit at its preferred base,
and every IAT slot bound to the address its import resolves to (given by the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hpatch.emu.memory import PAGE_SIZE, AddressSpace, Protection, Region, page_ceil
from hpatch.errors import AddressSpaceError, ImageFormatError, UnsupportedError
from hpatch.image import PEImage
from hpatch.image.model import BaseRelocationType, Import

_MEM_EXECUTE = 0x20000000
_MEM_READ = 0x40000000
_MEM_WRITE = 0x80000000

#: Bytes of the address field each base relocation type the loader applies adjusts.
RELOCATION_WIDTHS = {BaseRelocationType.DIR64: 8, BaseRelocationType.HIGHLOW: 4}

#: Resolves one import to the VA its IAT slot receives.
ImportResolver = Callable[[Import], int]


@dataclass(eq=False)
class Module:
    """A PE image mapped into an emulated process."""

    name: str
    image: PEImage
    base: int
    region: Region

    @property
    def end(self) -> int:
        return self.base + self.image.size_of_image

    @property
    def rebased(self) -> bool:
        return self.base != self.image.image_base

    def va(self, rva: int) -> int:
        return self.base + rva

    def contains(self, va: int) -> bool:
        return self.base <= va < self.end

    def export_rva(self, name: str | None = None, ordinal: int | None = None) -> int | None:
        """The RVA an export names (by name, or by ordinal), or None."""
        return export_rva(self.image, name, ordinal)

    def forwarder(self, name: str | None = None, ordinal: int | None = None) -> str | None:
        return export_forwarder(self.image, name, ordinal)


def export_rva(image: PEImage, name: str | None, ordinal: int | None) -> int | None:
    """The RVA an export of ``image`` names (by name, or by ordinal), or None."""
    for export in image.exports:
        if export.forwarder is not None:
            continue
        if (name is not None and export.name == name) or (
            name is None and ordinal is not None and export.ordinal == ordinal
        ):
            return export.rva
    return None


def export_forwarder(image: PEImage, name: str | None, ordinal: int | None) -> str | None:
    """The forwarder string of the export of ``image`` so named, or None."""
    for export in image.exports:
        if (name is not None and export.name == name) or (
            name is None and ordinal is not None and export.ordinal == ordinal
        ):
            return export.forwarder
    return None


def section_protection(characteristics: int) -> Protection:
    """The page protection a section's characteristics ask for; W^X is refused."""
    protection = Protection.NONE
    if characteristics & _MEM_READ:
        protection |= Protection.R
    if characteristics & _MEM_WRITE:
        protection |= Protection.W | Protection.R
    if characteristics & _MEM_EXECUTE:
        protection |= Protection.X | Protection.R
    if protection & Protection.W and protection & Protection.X:
        raise UnsupportedError(
            "a section is both writable and executable; hpatch keeps code and data apart (W^X)"
        )
    return protection


def relocated_image(image: PEImage, base: int) -> bytearray:
    """The mapped image with every base relocation adjusted for ``base``."""
    data = bytearray(image.mapped)
    _relocate(memoryview(data), image, base)
    return data


def _relocate(data: memoryview | bytearray, image: PEImage, base: int) -> None:
    """Adjust every base relocation of ``image``, mapped in ``data``, for ``base``."""
    delta = base - image.image_base
    if delta == 0:
        return
    for relocation in image.relocations:
        if relocation.type == BaseRelocationType.ABSOLUTE:
            continue
        width = RELOCATION_WIDTHS.get(relocation.type)
        if width is None:
            raise UnsupportedError(
                f"base relocation type {relocation.type.name} at RVA 0x{relocation.rva:x}"
            )
        if relocation.rva + width > len(data):
            raise ImageFormatError(f"base relocation at RVA 0x{relocation.rva:x} leaves the image")
        value = int.from_bytes(data[relocation.rva : relocation.rva + width], "little")
        value = (value + delta) & ((1 << (8 * width)) - 1)
        data[relocation.rva : relocation.rva + width] = value.to_bytes(width, "little")


def _backed(image: PEImage) -> list[tuple[int, int]]:
    """(RVA, size) of the mapped image's bytes that are not zero fill: the headers and
    each section's raw data (the rest of a fresh mapping is zero already)."""
    ranges = [(0, min(image.headers_end, image.size_of_image))]
    for section in image.sections:
        ranges.append((section.rva, min(section.raw_size, section.virtual_size)))
    return [(rva, size) for rva, size in ranges if size > 0]


def map_image(
    space: AddressSpace,
    image: PEImage,
    resolve: ImportResolver,
    *,
    base: int | None = None,
    name: str | None = None,
) -> Module:
    """Map ``image`` at ``base`` (its preferred base when None), bind its imports through
    ``resolve``, and give every page its section's protection."""
    base = image.image_base if base is None else base
    if base % 0x10000:
        raise UnsupportedError(f"base 0x{base:x} is not a multiple of 64 KiB")
    if base != image.image_base and not image.relocations:
        raise UnsupportedError(
            f"{image.name} has no base relocations, so it loads only at 0x{image.image_base:x}"
        )
    layout = []
    for section in image.sections:
        if section.rva % PAGE_SIZE:
            raise UnsupportedError(
                f"section {section.name} is not page-aligned (RVA 0x{section.rva:x}); "
                "Windows maps such images read-write-execute"
            )
        if section.virtual_size:
            layout.append(
                (section.rva, section.virtual_size, section_protection(section.characteristics))
            )
    size = page_ceil(image.size_of_image)
    if not space.is_free(base, size):
        raise AddressSpaceError(f"0x{base:x}..0x{base + size:x} is already in use")
    # Mapped before the imports resolve: resolving may load other DLLs, which must not
    # take this image's place.
    region = space.map(base, size, Protection.R, name or image.name)
    try:
        # Only what the file backs is copied, and relocated in place: the zero fill stays
        # untouched pages, so the cost follows the file, not SizeOfImage.
        mapped = memoryview(image.mapped)
        for rva, length in _backed(image):
            region.view[rva : rva + length] = mapped[rva : rva + length]
        _relocate(region.view, image, base)
        for entry in image.imports:
            if entry.iat_rva + 8 > size:
                raise ImageFormatError(f"IAT slot 0x{entry.iat_rva:x} leaves the image")
            region.view[entry.iat_rva : entry.iat_rva + 8] = resolve(entry).to_bytes(8, "little")
        for rva, length, protection in layout:
            space.protect(base + rva, length, protection)
    except BaseException:
        # Taking back our own mapping is no new step for the fault hook to fail.
        hook, space.fault_hook = space.fault_hook, None
        try:
            space.unmap(base)
        finally:
            space.fault_hook = hook
        raise
    return Module(name=name or image.name, image=image, base=base, region=region)
