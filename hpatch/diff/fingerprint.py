"""Position-independent fingerprints of functions.

A function's fingerprint is a digest of its code with every position-dependent field
masked (branch and call displacements that leave the function, RIP-relative and
ADRP/ADR/literal operands, relocated absolute addresses, __ImageBase offsets), plus
the list of what those fields referenced. Two functions are the same only if their
digests are equal and their references correspond under the match (kpatch's rule:
equal bytes, and relocations that point at the same things).
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hpatch.arch import Arch, Reference, RefKind
from hpatch.diff.references import ReferenceColumns
from hpatch.image import DataKind, Function, PEImage


@dataclass(frozen=True, slots=True)
class FunctionFingerprint:
    """What the diff compares of one function."""

    function: Function
    digest: bytes
    #: What the masked fields named, in order (packed: see hpatch.diff.references).
    references: Sequence[Reference]
    instruction_count: int

    @property
    def rva(self) -> int:
        return self.function.rva


def _relocated_fields(image: PEImage) -> bytes:
    """The sorted RVAs of base-relocated fields, as a buffer of uint32."""
    return array("I", sorted(r.rva for r in image.relocations)).tobytes()


def fingerprint_function(
    image: PEImage, function: Function, relocated: bytes | None = None
) -> FunctionFingerprint:
    """The fingerprint of one function of ``image``."""
    if relocated is None:
        relocated = _relocated_fields(image)
    return _fingerprint(image.arch, image.read, image.image_base, function, relocated)


_PART_HEADER = struct.Struct("<qI")


def _fingerprint(
    arch: Arch,
    read: Callable[[int, int], bytes],
    image_base: int,
    function: Function,
    relocated: bytes,
) -> FunctionFingerprint:
    start, end = function.rva, function.rva + function.size
    normalise, canonical = arch.normalise, arch.canonical_code
    if function.size and not function.fragments and not function.inline_data:
        # Most functions are one part and no data: their references are the part's.
        normalised = normalise(read(start, end - start), start, (start, end), relocated, image_base)
        code = canonical(normalised, start)
        digest = hashlib.blake2b(_PART_HEADER.pack(0, len(code)), digest_size=16)
        digest.update(code)
        return FunctionFingerprint(
            function,
            digest.digest(),
            ReferenceColumns.pack(normalised.references),
            normalised.instruction_count,
        )
    entry_end = function.extent_end
    digest = hashlib.blake2b(digest_size=16)
    references: list[Reference] = []
    instructions = 0
    parts = [(start, end, entry_end)]
    parts += [(f.rva, f.rva + f.size, f.rva + f.size) for f in function.fragments]
    for start, end, own_end in parts:
        # A displacement is position-independent only within one part: parts laid out
        # apart (gcc .cold, chained fragments) can move relative to each other.
        normalised = normalise(
            read(start, end - start), start, (start, own_end), relocated, image_base
        )
        # The part's offset from the entry matters (a branch into it keeps its bytes);
        # fragments elsewhere are compared by content only.
        relative = start - function.rva if start < entry_end else -1
        code = canonical(normalised, start)
        digest.update(_PART_HEADER.pack(relative, len(code)))
        digest.update(code)
        references.extend(normalised.references)
        instructions += normalised.instruction_count
    for data in function.inline_data:
        content = read(data.rva, data.size)
        if data.kind == DataKind.JUMP_TABLE_RVA:
            # entries are RVAs: keep where they point relative to the function
            offsets = [value - function.rva for (value,) in struct.iter_unpack("<I", content)]
            content = struct.pack(f"<{len(offsets)}q", *offsets)
            references.extend(
                Reference(data.rva, RefKind.IMAGE_RVA, function.rva + offset) for offset in offsets
            )
        digest.update(_PART_HEADER.pack(data.rva - function.rva, len(content)))
        digest.update(data.kind.value.encode())
        digest.update(content)
    return FunctionFingerprint(
        function, digest.digest(), ReferenceColumns.pack(references), instructions
    )


def fingerprint_image(
    image: PEImage, progress: Callable[[int, int], None] | None = None
) -> tuple[FunctionFingerprint, ...]:
    """Fingerprints of every function of ``image``, in RVA order.

    ``progress(done, total)`` is called as functions are done.
    """
    relocated = _relocated_fields(image)
    functions = image.functions
    arch, read, image_base = image.arch, image.read, image.image_base
    fingerprints = []
    for index, function in enumerate(functions):
        fingerprints.append(_fingerprint(arch, read, image_base, function, relocated))
        if progress is not None and (index % 256 == 0 or index + 1 == len(functions)):
            progress(index + 1, len(functions))
    return tuple(fingerprints)
