"""Parse a PE file once into the immutable model; the one place parse errors surface.

The structures come from hpatch.image.pe_parse (``struct`` over the bytes); everything
they hold is checked against the file and the image size before it enters the model,
so a truncated or hostile file gives ImageFormatError, not garbage.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from hpatch.arch import Arch, Machine, UnwindEntry, arch_for
from hpatch.errors import HPatchError, ImageFormatError, UnsupportedError
from hpatch.image.model import (
    BaseRelocation,
    BaseRelocationType,
    Export,
    Function,
    ImageIdentity,
    Import,
    LoadConfig,
    Section,
    SectionFlags,
    Symbol,
    TlsInfo,
)
from hpatch.image.pe_parse import (
    PE32PLUS_MAGIC,
    check_headers,
    parse_headers,
    read_debug_entries,
    read_exports,
    read_imports,
    read_load_config,
    read_relocation_blocks,
    read_symbols,
)

__all__ = ["PE32PLUS_MAGIC", "PEImage", "check_headers", "load_image", "pe_text"]

MAX_IMAGE_SIZE = 1 << 30
#: Most bytes of the mapped image the file may leave unbacked (zero fill: SizeOfImage
#: past what headers and section raw data hold). Real DLLs leave under 100 KiB; the cap
#: keeps a small file from making hpatch map, hash and scan gigabytes of zeros.
MAX_UNBACKED = 64 << 20
#: The same for executable sections, whose bytes are scanned for code.
MAX_UNBACKED_CODE = 1 << 20
_PIECE_LOOKBACK = 8
#: A section's data until the image is mapped: then a view of the mapped bytes.
_UNMAPPED = memoryview(b"")
DIRECTORY_NAMES = {
    0: "export",
    1: "import",
    3: "exception",
    5: "base relocation",
    10: "load config",
    12: "IAT",
}
_EXCEPTION_DIRECTORY = 3
_DEBUG_DIRECTORY = 6
_TLS_DIRECTORY = 9
_LOAD_CONFIG_DIRECTORY = 10
_MAX_TLS_CALLBACKS = 1024
_GUARD_CF_STRIDE_SHIFT = 28
#: IMAGE_SYM_DTYPE_FUNCTION in the complex-type bits of a COFF symbol's Type
_COFF_FUNCTION_TYPE = 2
_COFF_COMPLEX_SHIFT = 4


def pe_text(value: str | bytes) -> str:
    """A name from the file as text: PE names are bytes, decoded as UTF-8 where they
    are UTF-8, every other byte written ``\\xNN``. The one way the model turns names
    into str; see docs/image-model.md."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "backslashreplace")


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0])


#: The data directory of the CLR runtime header (IMAGE_DIRECTORY_ENTRY_COM_DESCRIPTOR),
#: the size of that header, and its flag for an image of IL only.
_CLR_RUNTIME_HEADER = 14
_COR20_HEADER_SIZE = 72
_COMIMAGE_FLAGS_ILONLY = 0x1


class PEImage:
    """One PE file, parsed once; read-only after construction.

    The expensive, optional parts (functions) are computed on first use.
    """

    def __init__(self, data: bytes, name: str) -> None:
        self.name = name
        headers = parse_headers(data)  # checks the signatures, machine and magic first
        self._headers = headers
        self.arch: Arch = arch_for(headers.machine)
        self._directories = headers.directories
        self.image_base: int = headers.image_base
        self.size_of_image: int = headers.size_of_image
        self.entry_rva: int = headers.entry_rva
        if not 0 < self.size_of_image <= MAX_IMAGE_SIZE:
            raise ImageFormatError(f"implausible SizeOfImage 0x{self.size_of_image:x}")
        self.sections: tuple[Section, ...] = self._read_sections(data, headers.size_of_headers)
        self._check_image_size(headers.section_alignment, headers.size_of_headers)
        self.mapped: bytes = self._map(data, headers.size_of_headers)
        # The sections' bytes are views of the mapped image: each byte is held once.
        view = memoryview(self.mapped)
        self.sections = tuple(
            replace(s, data=view[s.rva : s.rva + s.virtual_size]) for s in self.sections
        )
        self._check_directories()
        self.identity = ImageIdentity(
            machine=Machine(headers.machine),
            image_base=self.image_base,
            size_of_image=self.size_of_image,
            time_date_stamp=headers.time_date_stamp,
            checksum=headers.checksum,
            file_sha256=hashlib.sha256(data).hexdigest(),
            mapped_sha256=hashlib.sha256(self.mapped).hexdigest(),
            file_size=len(data),
        )
        self.load_config: LoadConfig | None = self._read_load_config()
        self._refuse_hybrid()
        self._refuse_managed()
        self.imports: tuple[Import, ...] = self._read_imports()
        self.exports: tuple[Export, ...] = self._read_exports()
        self.relocations: tuple[BaseRelocation, ...] = self._read_relocations()
        self.symbols: tuple[Symbol, ...] = self._read_symbols(data)
        self.tls: TlsInfo | None = self._read_tls()
        self.unwind_entries: tuple[UnwindEntry, ...] = self._read_unwind_entries()

    # mapping ------------------------------------------------------------

    def _read_sections(self, data: bytes, sizeof_headers: int) -> tuple[Section, ...]:
        sections: list[Section] = []
        previous_end = 0
        # Zero fill (gaps and sections past their raw data), checked before any section is
        # zero-filled: the cost follows the file's bytes, not the sizes it claims.
        unbacked = 0
        backed_end = min(sizeof_headers, len(data), self.size_of_image)
        for index, raw in enumerate(self._headers.sections, start=1):
            rva, raw_offset, raw_size = raw.rva, raw.raw_offset, raw.raw_size
            virtual_size = raw.virtual_size or raw_size
            name = pe_text(raw.name)
            if raw_size and raw_offset + raw_size > len(data):
                raise ImageFormatError(
                    f"truncated file: section {name!r} needs bytes up to "
                    f"0x{raw_offset + raw_size:x}, the file has 0x{len(data):x}"
                )
            if rva < max(previous_end, sizeof_headers):
                raise ImageFormatError(
                    f"section {name!r} at rva 0x{rva:x} overlaps what precedes it"
                )
            if rva + virtual_size > self.size_of_image:
                raise ImageFormatError(
                    f"section {name!r} ends at rva 0x{rva + virtual_size:x}, past SizeOfImage "
                    f"0x{self.size_of_image:x}"
                )
            previous_end = rva + virtual_size
            backed = min(raw_size, virtual_size) if raw_size else 0
            fill = virtual_size - backed
            unbacked += max(rva - backed_end, 0) + fill
            backed_end = rva + virtual_size
            if raw.characteristics & SectionFlags.MEM_EXECUTE and fill > MAX_UNBACKED_CODE:
                raise ImageFormatError(
                    f"{self.name}: executable section {name!r} claims 0x{virtual_size:x} bytes "
                    f"but the file holds 0x{backed:x} of them; hpatch zero-fills at most "
                    f"0x{MAX_UNBACKED_CODE:x} bytes of code"
                )
            self._check_unbacked(unbacked)
            sections.append(
                Section(
                    index=index,
                    name=name,
                    rva=rva,
                    virtual_size=virtual_size,
                    raw_offset=raw_offset,
                    raw_size=raw_size,
                    characteristics=raw.characteristics,
                    data=_UNMAPPED,
                )
            )
        if not sections:
            raise ImageFormatError("PE file has no sections")
        return tuple(sections)

    def _check_unbacked(self, unbacked: int) -> None:
        if unbacked > MAX_UNBACKED:
            raise ImageFormatError(
                f"{self.name}: SizeOfImage 0x{self.size_of_image:x} claims 0x{unbacked:x} or more "
                f"bytes the file does not hold (zero fill); hpatch maps at most "
                f"0x{MAX_UNBACKED:x} such bytes"
            )

    def _check_image_size(self, alignment: int, sizeof_headers: int) -> None:
        """Every section starts at a multiple of the section alignment (code also at a
        multiple of the machine's instruction alignment), and SizeOfImage is what the
        sections need, rounded up to the section alignment.

        Linkers write exactly that; a larger SizeOfImage is corrupt (and would make
        hpatch map and hash memory no section describes), and code at a misaligned RVA
        cannot be decoded.
        """
        if alignment == 0 or alignment & (alignment - 1):
            raise ImageFormatError(f"SectionAlignment 0x{alignment:x} is not a power of two")
        for section in self.sections:
            if section.rva % alignment or (
                section.is_executable and section.rva % self.arch.instruction_alignment
            ):
                raise ImageFormatError(
                    f"section {section.name!r} at rva 0x{section.rva:x} is misaligned "
                    f"(SectionAlignment 0x{alignment:x}, instructions "
                    f"{self.arch.instruction_alignment})"
                )
        needed = max([sizeof_headers] + [s.end_rva for s in self.sections])
        needed += -needed % alignment
        if self.size_of_image > needed:
            raise ImageFormatError(
                f"SizeOfImage 0x{self.size_of_image:x} is larger than the sections need "
                f"(0x{needed:x})"
            )
        # the tail a large SectionAlignment rounds SizeOfImage up to is zero fill too
        backed = sum(min(s.raw_size, s.virtual_size) for s in self.sections)
        self._check_unbacked(self.size_of_image - min(sizeof_headers, self.size_of_image) - backed)

    def _map(self, data: bytes, sizeof_headers: int) -> bytes:
        """The image as the loader maps it at its preferred base (before relocation)."""
        # Joined from views of the file, not from copies of each section nor written
        # into a bytearray and copied: the one image-sized allocation is the result.
        file = memoryview(data)
        header_size = min(sizeof_headers, len(data), self.size_of_image)
        pieces: list[bytes | memoryview] = [file[:header_size]]
        end = header_size
        for section in self.sections:
            backed = min(section.raw_size, section.virtual_size) if section.raw_size else 0
            body = file[section.raw_offset : section.raw_offset + backed]
            pieces += [bytes(section.rva - end), body, bytes(section.virtual_size - backed)]
            end = section.end_rva
        pieces.append(bytes(self.size_of_image - end))
        return b"".join(pieces)

    def read(self, rva: int, size: int) -> bytes:
        """``size`` bytes of the mapped image at ``rva``; ImageFormatError if out of range."""
        if rva < 0 or size < 0 or rva + size > self.size_of_image:
            raise ImageFormatError(
                f"read of 0x{size:x} bytes at rva 0x{rva:x} is outside the image "
                f"(SizeOfImage 0x{self.size_of_image:x})"
            )
        return self.mapped[rva : rva + size]

    @cached_property
    def _section_starts(self) -> list[int]:
        return [s.rva for s in self.sections]

    def section_at(self, rva: int) -> Section | None:
        """The section containing ``rva``, if any."""
        index = bisect.bisect_right(self._section_starts, rva) - 1
        if index >= 0 and self.sections[index].contains(rva):
            return self.sections[index]
        return None

    @cached_property
    def pointers(self) -> dict[int, int]:
        """RVA of each base-relocated 64-bit field -> the RVA its initial value points at."""
        mapped, base = self.mapped, self.image_base
        return {
            r.rva: int.from_bytes(mapped[r.rva : r.rva + 8], "little") - base
            for r in self.relocations
            if r.type == BaseRelocationType.DIR64
        }

    @property
    def executable_sections(self) -> tuple[Section, ...]:
        return tuple(s for s in self.sections if s.is_executable)

    # directories --------------------------------------------------------

    @cached_property
    def structure_bounds(self) -> tuple[int, ...]:
        """Sorted RVAs where loader structures start and end: every data directory, the
        raw data of each debug entry, and each unwind record .pdata names. Data objects
        never straddle them."""
        bounds: set[int] = {e.unwind_rva for e in self.unwind_entries if e.unwind_rva}
        for rva, size in self._directories:
            if rva and size:
                bounds.update((rva, rva + size))
        if len(self._directories) > _DEBUG_DIRECTORY:
            for rva, size in read_debug_entries(self.mapped, *self._directory(_DEBUG_DIRECTORY)):
                if rva and size:
                    bounds.update((rva, rva + size))
        return tuple(sorted(b for b in bounds if 0 <= b <= self.size_of_image))

    @cached_property
    def headers_end(self) -> int:
        """RVA where the PE headers end: the first section's start."""
        return min((s.rva for s in self.sections), default=self.size_of_image)

    @cached_property
    def exception_directory(self) -> tuple[int, int]:
        """(RVA, size) of the exception directory (.pdata); (0, 0) if there is none."""
        if len(self._directories) <= _EXCEPTION_DIRECTORY:
            return 0, 0
        return self._directory(_EXCEPTION_DIRECTORY)

    @cached_property
    def import_ranges(self) -> tuple[tuple[int, int], ...]:
        """[start, end) RVAs the import directory's own tables take: the descriptors,
        each DLL's lookup table and IAT (with their terminators), the hint/name entries,
        the DLL names and the IAT directory, joined across what lies between them when
        that is zero bytes, or words holding a descriptor's RVA (GNU import libraries
        leave one per import, linking it to its DLL's descriptor; the loader never reads
        them), and the zero padding after them up to 16-byte alignment. Loader data,
        not globals: a linker lays them out anew when an import is added."""
        mapped, size = self.mapped, self.size_of_image
        ranges: list[tuple[int, int]] = []

        def string_end(rva: int, extra: int = 1) -> int:
            end = mapped.find(b"\0", rva, min(size, rva + 4096))
            return end + extra if end >= 0 else rva

        def thunks(rva: int, names: bool) -> None:
            at = rva
            while at > 0 and at + 8 <= size:
                thunk = int.from_bytes(mapped[at : at + 8], "little")
                at += 8
                if not thunk:
                    break
                if names and not thunk >> 63 and (name := thunk & 0x7FFFFFFF) + 2 < size:
                    end = string_end(name + 2)
                    ranges.append((name, end + (end - name) % 2))
            ranges.append((rva, at))

        directory, _ = self._directory(1) if len(self._directories) > 1 else (0, 0)
        at = directory
        descriptors = set()
        while at > 0 and at + 20 <= size:
            descriptors.add(at)
            lookup, _stamp, _chain, name, iat = struct.unpack_from("<5I", mapped, at)
            at += 20
            if not (lookup or name or iat):
                break
            if 0 < name < size:
                ranges.append((name, string_end(name)))
            thunks(lookup, names=True)
            thunks(iat, names=not lookup)
        if directory:
            ranges.append((directory, at))
        if len(self._directories) > 12:
            rva, length = self._directory(12)
            if rva and length:
                ranges.append((rva, min(rva + length, size)))

        def filler(start: int, end: int) -> bool:
            first, last = min((start + 3) & ~3, end), max(end & ~3, start)
            words = struct.unpack_from(f"<{max(last - first, 0) // 4}I", mapped, first)
            return all(w == 0 or w in descriptors for w in words) and not (
                mapped[start:first].strip(b"\0") or mapped[max(last, first) : end].strip(b"\0")
            )

        joined: list[list[int]] = []
        for start, end in sorted(r for r in ranges if r[0] < r[1]):
            if joined and (start <= joined[-1][1] or filler(joined[-1][1], start)):
                joined[-1][1] = max(joined[-1][1], end)
            else:
                joined.append([start, end])
        for span in joined:  # and the zero padding that aligns what follows in the section
            section = self.section_at(span[0])
            limit = section.rva + section.virtual_size if section is not None else size
            while span[1] % 16 and span[1] < limit and not mapped[span[1]]:
                span[1] += 1
        return tuple((start, end) for start, end in joined)

    def _directory(self, index: int) -> tuple[int, int]:
        return self._directories[index]

    def _check_directories(self) -> None:
        count = len(self._directories)
        for index, label in DIRECTORY_NAMES.items():
            if index >= count:
                continue
            rva, size = self._directory(index)
            if (rva or size) and (rva == 0 or rva + size > self.size_of_image):
                raise ImageFormatError(
                    f"corrupt {label} directory: 0x{size:x} bytes at rva 0x{rva:x} do not fit in "
                    f"the image (SizeOfImage 0x{self.size_of_image:x})"
                )

    def _read_load_config(self) -> LoadConfig | None:
        if len(self._directories) <= _LOAD_CONFIG_DIRECTORY:
            return None
        rva, size = self._directory(_LOAD_CONFIG_DIRECTORY)
        # Read from the section holding it: a load config outside every section (in
        # the headers) is no load config.
        section = self.section_at(rva) if rva and size else None
        config = read_load_config(section.data, rva - section.rva) if section else None
        if config is None:
            return None
        field = config.__getitem__
        guard_flags = field("guard_flags")
        table_va, count = field("guard_cf_function_table"), field("guard_cf_function_count")
        guard_rvas: tuple[int, ...] = ()
        if table_va and count:
            stride = 4 + ((guard_flags >> _GUARD_CF_STRIDE_SHIFT) & 0xF)
            table = self.read(table_va - self.image_base, count * stride)
            guard_rvas = tuple(_u32(table, i * stride) for i in range(count))
        return LoadConfig(
            size=field("size"),
            security_cookie_va=field("security_cookie"),
            guard_flags=guard_flags,
            guard_cf_function_rvas=guard_rvas,
            chpe_metadata_va=field("chpe_metadata_pointer"),
            dynamic_value_reloc_table_offset=field("dynamic_value_reloc_table_offset"),
            hotpatch_table_offset=field("hotpatch_table_offset"),
        )

    def _refuse_hybrid(self) -> None:
        reasons = []
        if self.load_config is not None and self.load_config.chpe_metadata_va:
            reasons.append("its load config carries CHPE hybrid metadata")
            # CHPE metadata in an x64 image makes it ARM64EC, in an ARM64 one ARM64X
            reasons.append(f"it is an {self.arch.hybrid_name} image")
        if reasons:
            raise UnsupportedError(
                f"{self.name}: hybrid CHPE/ARM64EC/ARM64X images are not supported ("
                + "; ".join(reasons)
                + "): such images mix native and emulated code ranges, and Windows hotpatching "
                "itself requires CHPE to be disabled on Arm64 devices"
            )

    def _refuse_managed(self) -> None:
        """An IL-only .NET image holds IL the CLR compiles at run time, not the native
        code hpatch replaces: refused (a mixed image, with native code, is not)."""
        mapped = self.mapped
        lfanew = int.from_bytes(mapped[0x3C:0x40], "little")
        entry = lfanew + 24 + 112 + 8 * _CLR_RUNTIME_HEADER
        if entry + 8 > len(mapped):
            return
        rva = int.from_bytes(mapped[entry : entry + 4], "little")
        size = int.from_bytes(mapped[entry + 4 : entry + 8], "little")
        if size < _COR20_HEADER_SIZE or rva + _COR20_HEADER_SIZE > len(mapped):
            return
        flags = int.from_bytes(mapped[rva + 16 : rva + 20], "little")
        if flags & _COMIMAGE_FLAGS_ILONLY:
            raise UnsupportedError(
                f"{self.name}: a .NET image of IL only (its CLR header says ILONLY): the "
                "runtime compiles its code, hpatch replaces native code"
            )

    def _read_imports(self) -> tuple[Import, ...]:
        if len(self._directories) <= 1:
            return ()
        imports: list[Import] = []
        for raw in read_imports(self.mapped, *self._directory(1)):
            dll = pe_text(raw.dll)
            name = None if raw.name is None else pe_text(raw.name)
            if not 0 < raw.iat_rva < self.size_of_image:
                raise ImageFormatError(
                    f"import {dll}!{name or raw.ordinal} has its IAT slot "
                    f"outside the image (rva 0x{raw.iat_rva:x})"
                )
            imports.append(Import(dll=dll, name=name, ordinal=raw.ordinal, iat_rva=raw.iat_rva))
        return tuple(imports)

    def _read_exports(self) -> tuple[Export, ...]:
        if not self._directories or not self._directories[0][0]:
            return ()
        exports: list[Export] = []
        for ordinal, raw_name, rva, raw_forwarder in read_exports(self.mapped, *self._directory(0)):
            forwarder = None
            name = pe_text(raw_name) or None
            if raw_forwarder is not None:
                forwarder = f"{pe_text(raw_forwarder[0])}.{pe_text(raw_forwarder[1])}"
            elif not 0 <= rva < self.size_of_image:
                raise ImageFormatError(
                    f"export {name or ordinal} points outside the image (rva 0x{rva:x})"
                )
            exports.append(Export(ordinal, name, rva, forwarder))
        return tuple(sorted(exports, key=lambda e: e.ordinal))

    def _read_relocations(self) -> tuple[BaseRelocation, ...]:
        if len(self._directories) <= 5:
            return ()
        rva, size = self._directory(5)
        if not rva or not size:
            return ()
        relocations: list[BaseRelocation] = []
        types = {t.value: t for t in BaseRelocationType}
        limit = self.size_of_image - 8
        for page_rva, entries in read_relocation_blocks(self.mapped, rva, size):
            for (entry,) in struct.iter_unpack("<H", entries):
                kind, site = entry >> 12, page_rva + (entry & 0xFFF)
                if kind == BaseRelocationType.ABSOLUTE:
                    continue
                if kind not in types:
                    raise ImageFormatError(
                        f"base relocation at rva 0x{site:x} has unknown type {kind}"
                    )
                if site > limit:
                    raise ImageFormatError(
                        f"base relocation at rva 0x{site:x} is outside the image"
                    )
                relocations.append(BaseRelocation(site, types[kind]))
        return tuple(relocations)

    def _read_symbols(self, data: bytes) -> tuple[Symbol, ...]:
        symbols: list[Symbol] = []
        headers = self._headers
        for raw in read_symbols(data, headers.symbol_table_offset, headers.number_of_symbols):
            index = raw.section_number
            if not 1 <= index <= len(self.sections) or not raw.name:
                continue
            name = pe_text(raw.name)
            if name.startswith("."):
                continue
            section = self.sections[index - 1]
            if raw.value >= max(section.virtual_size, 1):
                continue  # linker-defined end markers sit one past the section
            symbols.append(
                Symbol(
                    name=name,
                    rva=section.rva + raw.value,
                    section_index=index,
                    storage_class=raw.storage_class,
                    is_function=(raw.type >> _COFF_COMPLEX_SHIFT) & 0x3 == _COFF_FUNCTION_TYPE,
                )
            )
        return tuple(sorted(symbols, key=lambda s: (s.rva, s.name)))

    def _read_tls(self) -> TlsInfo | None:
        if len(self._directories) <= _TLS_DIRECTORY:
            return None
        rva, size = self._directory(_TLS_DIRECTORY)
        if not rva or not size:
            return None
        start, end, _, callbacks_va, zero_fill, _ = struct.unpack("<QQQQII", self.read(rva, 40))
        if end < start:
            raise ImageFormatError("corrupt TLS directory: its template ends before it starts")
        template = self.read(start - self.image_base, end - start) if end > start else b""
        callbacks = 0
        if callbacks_va:
            cursor = callbacks_va - self.image_base
            while struct.unpack("<Q", self.read(cursor + 8 * callbacks, 8))[0]:
                callbacks += 1
                if callbacks > _MAX_TLS_CALLBACKS:
                    raise ImageFormatError("corrupt TLS directory: its callback list does not end")
        return TlsInfo(template, zero_fill, callbacks)

    def _read_unwind_entries(self) -> tuple[UnwindEntry, ...]:
        if len(self._directories) <= _EXCEPTION_DIRECTORY:
            return ()
        rva, size = self._directory(_EXCEPTION_DIRECTORY)
        if not rva or not size:
            return ()
        entries = self.arch.decode_unwind_entries(self.read(rva, size), self.read)
        previous_end = 0
        for entry in sorted(entries, key=lambda e: e.begin_rva):
            section = self.section_at(entry.begin_rva)
            if section is None or not section.is_executable or entry.end_rva > section.end_rva:
                raise ImageFormatError(
                    f".pdata entry 0x{entry.begin_rva:x}..0x{entry.end_rva:x} is out of range: "
                    "not inside one executable section"
                )
            if entry.begin_rva < previous_end:
                raise ImageFormatError(
                    f".pdata entry 0x{entry.begin_rva:x}..0x{entry.end_rva:x} overlaps the entry "
                    f"before it (which ends at 0x{previous_end:x})"
                )
            previous_end = entry.end_rva
        return tuple(sorted(entries, key=lambda e: e.begin_rva))

    # functions ----------------------------------------------------------

    @cached_property
    def functions(self) -> tuple[Function, ...]:
        """Every function found, sorted by RVA (see hpatch.image.functions)."""
        from hpatch.image.functions import discover_functions

        return discover_functions(self)

    @cached_property
    def _function_starts(self) -> list[int]:
        return [f.rva for f in self.functions]

    def function_at(self, rva: int) -> Function | None:
        """The function whose entry part, inline data or fragments contain ``rva``."""
        functions = self.functions
        index = bisect.bisect_right(self._function_starts, rva) - 1
        if index >= 0 and functions[index].contains(rva):
            return functions[index]
        starts, pieces = self._piece_index
        index = bisect.bisect_right(starts, rva) - 1
        # Pieces do not overlap across functions; a few steps back cover a piece that
        # encloses data of its own function.
        for candidate in range(index, max(index - _PIECE_LOOKBACK, -1), -1):
            start, end, function = pieces[candidate]
            if start <= rva < end:
                return function
        return None

    @cached_property
    def _piece_index(self) -> tuple[list[int], list[tuple[int, int, Function]]]:
        """Fragments and inline data of every function, sorted by start, for lookups."""
        pieces = sorted(
            [
                (f.rva, f.rva + f.size, function)
                for function in self.functions
                for f in function.fragments
            ]
            + [
                (d.rva, d.rva + d.size, function)
                for function in self.functions
                for d in function.inline_data
            ],
            key=lambda piece: (piece[0], piece[1]),
        )
        return [p[0] for p in pieces], pieces


def load_image(source: str | os.PathLike[str] | bytes, name: str | None = None) -> PEImage:
    """Parse a PE file (a path or its bytes) into a PEImage."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return PEImage(bytes(source), name or "<memory>")
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HPatchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return PEImage(data, name or path.name)
