"""The ``.hpk`` byte format, version 4: ``encode_package``, the defensive
``decode_package``, and ``resolve_blobs``; the envelope (header, digest, signature
trailer) and the limits a reader enforces are here, the rest in its modules by job.

The layout is specified in docs/FORMAT.md. The body is two LZMA2 streams: the
*metadata* (identity, servicing, prerequisites, layout, functions and their fixup
counts, import slots, redirect strategies, unwind records) and the *region stream*
(the bytes of every blob, a mark for each fixup site the code predicts, the fixups no
rule predicts, then one number per fixup from which its target follows), which is
coded against a *dictionary* of baseline bytes: the old code of the functions the
package replaces, and baseline ranges the metadata lists. The metadata pins the
baseline's mapped image by its SHA-256, so an applier always holds the dictionary.

Without the baseline a package decodes *unresolved* (see model.py): everything
``hpatch inspect`` shows is there, but blobs know only their size, the fixups only
their counts, imports only their slots, and redirect digests are empty.
``decode_package(data, baseline)`` or ``resolve_blobs(package, baseline)``
(``baseline``: the baseline's mapped image, ``PEImage.mapped``) completes it, after
checking the baseline is the package's.

Encoding is canonical: the decoder checks that the metadata is the one encoding of
what it says, and a package keeps its compressed streams (``Package.coding``), so
``encode(decode(data)) == data`` for every package the decoder accepts. The decoder
checks every length and offset before use, bounds every decompression by the sizes the
metadata declares, and reports any defect as PackageFormatError.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from hpatch.errors import PackageFormatError
from hpatch.package import lzma2
from hpatch.package.format.dictionary import compress_metadata, dictionary_spec, replaced_extents
from hpatch.package.format.metadata import read_metadata, write_metadata
from hpatch.package.format.placement import virtual_base
from hpatch.package.format.region import code_region, region_coding, resolve_blobs, resolve_region
from hpatch.package.format.validate import validate_package
from hpatch.package.format.wire import (
    DIGEST_SIZE,
    EXPANSION_FLOOR,
    HEADER,
    KEY_ID_SIZE,
    MAGIC,
    MAX_ALIGNMENT,
    MAX_DICTIONARY,
    MAX_EXPANSION,
    MAX_METADATA,
    MAX_PACKAGE_SIZE,
    MAX_REGION_SIZE,
    MAX_STRING,
    MAX_VARINT,
    SIGNATURE_SIZE,
)
from hpatch.package.model import (
    FORMAT_VERSION,
    BodyCoding,
    EncodedPackage,
    Flag,
    Package,
    SignatureInfo,
)

__all__ = [
    "DIGEST_SIZE",
    "EXPANSION_FLOOR",
    "HEADER",
    "KEY_ID_SIZE",
    "MAGIC",
    "MAX_ALIGNMENT",
    "MAX_DICTIONARY",
    "MAX_EXPANSION",
    "MAX_METADATA",
    "MAX_PACKAGE_SIZE",
    "MAX_REGION_SIZE",
    "MAX_STRING",
    "SIGNATURE_SIZE",
    "Envelope",
    "code_region",
    "decode_package",
    "encode",
    "encode_package",
    "open_envelope",
    "resolve_blobs",
    "signed_message",
    "validate_package",
    "virtual_base",
]


def _body(package: Package) -> bytes:
    validate_package(package)
    coding = region_coding(package)
    metadata = write_metadata(package, coding.dictionary, coding.extents)
    if package.coding is not None and package.coding.metadata == metadata:
        stream = package.coding.metadata_stream
        assert stream is not None
    else:
        stream = compress_metadata(metadata)
    if len(metadata) > min(MAX_METADATA, _expansion_limit(stream)):  # what a reader refuses
        raise PackageFormatError(
            f"metadata of {len(metadata)} bytes (coded in {len(stream)}) exceeds what a reader "
            f"accepts: {MAX_METADATA} bytes, and {MAX_EXPANSION}x its coded size + "
            f"{EXPANSION_FLOOR}"
        )
    region_limit = _region_limit(package, coding.dictionary, coding.extents, coding.region_stream)
    if coding.region_size > region_limit:
        raise PackageFormatError(
            f"a region of {coding.region_size} bytes coded in {len(coding.region_stream)} "
            f"exceeds what a reader accepts ({region_limit})"
        )
    return stream + coding.region_stream


def signed_message(package: Package) -> bytes:
    """Header and body: the bytes the digest and the signature cover."""
    body = _body(package)  # validates the package, its version and flags included
    return HEADER.pack(MAGIC, package.version, package.flags) + body


def encode_package(package: Package) -> bytes:
    """The canonical bytes of ``package`` (its signature, if any, must already be made)."""
    message = signed_message(package)
    trailer = hashlib.sha256(message).digest()
    if package.signature is not None:
        trailer += package.signature.key_id + package.signature.signature
    data = message + trailer
    if len(data) > MAX_PACKAGE_SIZE:
        raise PackageFormatError(f"package of {len(data)} bytes exceeds {MAX_PACKAGE_SIZE}")
    return data


def encode(package: Package) -> EncodedPackage:
    """``package`` with its canonical bytes, encoded once."""
    return EncodedPackage(package, encode_package(package))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A package's fixed frame, read without decoding its body."""

    version: int
    flags: int
    message: bytes  # header and body: what the SHA-256 and the signature cover
    signature: SignatureInfo | None

    @property
    def body(self) -> bytes:
        return self.message[HEADER.size :]


def open_envelope(data: bytes) -> Envelope:
    """The header, the signed message and the signature of ``data``, with the size
    limit, magic, version, flags and SHA-256 checked; nothing of the body is decoded, so
    the cost is one hash over ``data``. PackageFormatError if any of it is wrong."""
    data = bytes(data)
    if len(data) > MAX_PACKAGE_SIZE:
        raise PackageFormatError(f"{len(data)} bytes exceeds the {MAX_PACKAGE_SIZE}-byte limit")
    if len(data) < HEADER.size or data[: len(MAGIC)] != MAGIC:
        raise PackageFormatError("not an hpatch package (bad magic)")
    _magic, version, flags = HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise PackageFormatError(
            f"format version {version} is not supported (this hpatch reads {FORMAT_VERSION})"
        )
    if flags & ~Flag.SIGNED:
        raise PackageFormatError(f"unknown header flags 0x{flags:x}")
    trailer = DIGEST_SIZE + (KEY_ID_SIZE + SIGNATURE_SIZE if flags & Flag.SIGNED else 0)
    message_end = len(data) - trailer
    if message_end < HEADER.size:
        raise PackageFormatError(
            f"size mismatch: {len(data)} bytes cannot hold the header and a {trailer}-byte trailer"
        )
    message = data[:message_end]
    if data[message_end : message_end + DIGEST_SIZE] != hashlib.sha256(message).digest():
        raise PackageFormatError("integrity check failed: the SHA-256 does not match the content")
    signature = None
    if flags & Flag.SIGNED:
        start = message_end + DIGEST_SIZE
        signature = SignatureInfo(
            data[start : start + KEY_ID_SIZE], data[start + KEY_ID_SIZE : len(data)]
        )
    return Envelope(version, flags, message, signature)


def _expansion_limit(stream: bytes) -> int:
    """The most bytes ``stream`` may decode to before the package is trusted."""
    return EXPANSION_FLOOR + MAX_EXPANSION * len(stream)


def _region_limit(
    package: Package, dictionary: tuple[tuple[int, int], ...], extents: bool, stream: bytes
) -> int:
    """The most bytes a region stream may decode to: what its dictionary holds (baseline
    bytes, which the reader has) plus the expansion limit of the stream itself."""
    held = sum(size for _, size in dictionary)
    if extents:
        held += sum(size for _, size in replaced_extents(package))
    return held + _expansion_limit(stream)


def decode_package(data: bytes, baseline: bytes | None = None) -> Package:
    """Parse and check a package; PackageFormatError for anything malformed or corrupt.

    ``baseline`` is the baseline's mapped image (``PEImage.mapped``, un-rebased); with it
    the package comes back resolved (see ``resolve_blobs``), without it unresolved. The
    SHA-256 over header and body is checked here; whether the signature is trusted is a
    separate question, answered over the raw bytes before decoding by
    ``hpatch.package.envelope``. Without the baseline the cost is linear in
    ``len(data)``: the metadata may expand at most MAX_EXPANSION times (plus
    EXPANSION_FLOOR), and every count is bounded by the bytes left.
    """
    envelope = open_envelope(data)
    flags = envelope.flags
    try:
        metadata_stream, region_stream = lzma2.split(envelope.body)
        metadata_size = lzma2.unpacked_size(metadata_stream)
        if metadata_size > MAX_METADATA:
            raise ValueError(f"{metadata_size} bytes exceed the {MAX_METADATA}-byte limit")
        if metadata_size > _expansion_limit(metadata_stream):
            raise ValueError(
                f"{len(metadata_stream)} coded bytes claim {metadata_size}, past the "
                f"expansion limit ({MAX_EXPANSION}x + {EXPANSION_FLOOR})"
            )
        metadata = lzma2.decompress(metadata_stream, b"", metadata_size)
    except ValueError as exc:
        raise PackageFormatError(f"metadata: {exc}") from None
    package, dictionary, extents = read_metadata(metadata, flags)
    if write_metadata(package, dictionary, extents) != metadata:
        raise PackageFormatError("metadata: not in canonical form")
    try:
        region_size = lzma2.unpacked_size(region_stream)
    except ValueError as exc:
        raise PackageFormatError(f"region stream: {exc}") from None
    blob_bytes = sum(b.size for b in package.blobs)
    fixups = package.fixup_counts.total
    # blobs, a mark per predicted site (at most one a byte), the unpredicted fixups
    # (count, gap, code) and a target delta per fixup
    if not (blob_bytes + fixups <= region_size <= 2 * blob_bytes + MAX_VARINT * (1 + 3 * fixups)):
        raise PackageFormatError(
            f"a region stream of {region_size} bytes cannot hold {blob_bytes} blob bytes and "
            f"{fixups} fixup targets"
        )
    # A region repeating a few bytes would make a reader decode and predict megabytes
    # the file does not hold: its size is bounded by the dictionary and its own bytes.
    limit = _region_limit(package, dictionary, extents, region_stream)
    if region_size > limit:
        raise PackageFormatError(
            f"region stream: {len(region_stream)} coded bytes claim {region_size}, past the "
            f"expansion limit ({limit}: the dictionary, and {MAX_EXPANSION}x the stream + "
            f"{EXPANSION_FLOOR})"
        )
    signature = envelope.signature
    coding = BodyCoding(
        dictionary=dictionary,
        dictionary_data=None,
        metadata=metadata,
        metadata_stream=metadata_stream,
        region_sha256=None,
        region_size=region_size,
        region_stream=region_stream,
        spec=dictionary_spec(package, dictionary, extents),
        extents=extents,
    )
    package = replace(package, signature=signature, coding=coding)
    validate_package(package)
    if baseline is not None:
        return resolve_blobs(package, baseline)
    if not dictionary and not (extents and replaced_extents(package)):
        return resolve_region(package, b"")
    return package
