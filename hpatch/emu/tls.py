"""Static thread-local storage as the Windows loader sets it up: each image with a TLS
directory gets an index (written to its AddressOfIndex), and every thread a copy of the
image's template (plus its zero fill) in the array its TEB's ThreadLocalStoragePointer
names; the image's TLS callbacks run before its entry point."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hpatch.emu.loader import Module
from hpatch.emu.memory import PAGE_SIZE, AddressSpace, Protection
from hpatch.errors import ImageFormatError

_TLS_DIRECTORY = 9
#: Where a 64-bit TEB (x64 and ARM64 alike) keeps ThreadLocalStoragePointer.
TEB_TLS_POINTER = 0x58
#: Images with static TLS one process holds: the slots of a thread's array.
MAX_TLS_MODULES = PAGE_SIZE // 8
#: Callbacks one image may list before its list is taken for garbage.
MAX_CALLBACKS = 1024
#: Bytes one image's TLS block may take (template and zero fill).
MAX_BLOCK = 1 << 24


@dataclass(frozen=True, slots=True)
class TlsDirectory:
    """An image's IMAGE_TLS_DIRECTORY64, its VAs as mapped (relocated)."""

    template_va: int
    template_size: int
    index_va: int
    callbacks_va: int
    zero_fill: int


def tls_directory(space: AddressSpace, module: Module) -> TlsDirectory | None:
    """The TLS directory of a mapped module, read from its mapped headers and data as the
    loader reads them; None when it has none."""
    header = module.base + int.from_bytes(space.read(module.base + 0x3C, 4), "little")
    optional = header + 24
    magic = int.from_bytes(space.read(optional, 2), "little")
    if magic != 0x20B:  # PE32+: hpatch's machines are 64-bit
        return None
    count = int.from_bytes(space.read(optional + 108, 4), "little")
    if count <= _TLS_DIRECTORY:
        return None
    rva, size = struct.unpack("<II", space.read(optional + 112 + 8 * _TLS_DIRECTORY, 8))
    if not rva or not size:
        return None
    start, end, index, callbacks, zero_fill, _ = struct.unpack(
        "<QQQQII", space.read(module.va(rva), 40)
    )
    if end < start or end - start + zero_fill > MAX_BLOCK:
        raise ImageFormatError(f"{module.name}: its TLS template is corrupt or too big")
    return TlsDirectory(start, end - start, index, callbacks, zero_fill)


def tls_callbacks(space: AddressSpace, directory: TlsDirectory) -> list[int]:
    """The VAs of the callbacks the directory lists (up to its null entry)."""
    found: list[int] = []
    if not directory.callbacks_va:
        return found
    while True:
        va = space.read_u64(directory.callbacks_va + 8 * len(found))
        if not va:
            return found
        found.append(va)
        if len(found) > MAX_CALLBACKS:
            raise ImageFormatError("a TLS callback list does not end")


class StaticTls:
    """The process's static TLS: the images that have it, and each thread's blocks."""

    def __init__(self, space: AddressSpace) -> None:
        self.space = space
        #: By index; None where an unloaded image's was (indexes are not reused).
        self.images: list[tuple[Module, TlsDirectory] | None] = []

    def add(self, module: Module, directory: TlsDirectory, tebs: list[int]) -> int:
        """Give ``module`` the next index, and every thread (by TEB) its block."""
        index = len(self.images)
        if index >= MAX_TLS_MODULES:
            raise ImageFormatError(f"more than {MAX_TLS_MODULES} images with static TLS")
        # The loader writes the index whatever the page's protection.
        self.space.poke(directory.index_va, index.to_bytes(4, "little"))
        self.images.append((module, directory))
        for teb in tebs:
            self._block(teb, index, directory)
        return index

    def remove(self, module: Module) -> None:
        """``module`` is unloaded: threads made from now on get no block of it."""
        self.images = [
            None if entry is not None and entry[0] is module else entry for entry in self.images
        ]

    def thread_created(self, teb: int) -> None:
        """A new thread (its TEB at ``teb``): a block of every loaded image's template."""
        for index, entry in enumerate(self.images):
            if entry is not None:
                self._block(teb, index, entry[1])

    def _block(self, teb: int, index: int, directory: TlsDirectory) -> None:
        array = self.space.read_u64(teb + TEB_TLS_POINTER)
        if not array:
            array = self.space.allocate(PAGE_SIZE, Protection.RW, "tls slots").va
            self.space.poke(teb + TEB_TLS_POINTER, array.to_bytes(8, "little"))
        size = directory.template_size + directory.zero_fill
        block = self.space.allocate(max(size, 1), Protection.RW, "tls block")
        template = self.space.read(directory.template_va, directory.template_size)
        self.space.poke(block.va, template)
        self.space.poke(array + 8 * index, block.va.to_bytes(8, "little"))
