"""Reading a package as an applier must: the signature is checked over the raw bytes
before anything past the fixed header is decoded.

The signature covers the header and body exactly as the file holds them (the bytes
before the trailer), which is what ``signed_message`` re-encodes a decoded package to:
encoding is canonical, so both give the same bytes for every package a reader accepts.
Checking the raw bytes first means an untrusted package costs one SHA-256 and one
Ed25519 verification, whatever its body claims.
"""

from __future__ import annotations

from hpatch.errors import CheckRefused
from hpatch.package.format import decode_package, open_envelope
from hpatch.package.model import Package
from hpatch.package.signing import SignatureCheck, SignatureStatus, TrustStore


class SignatureRefused(CheckRefused):
    """A package refused for its signature before it was decoded."""

    def __init__(self, message: str, check: SignatureCheck) -> None:
        super().__init__(message)
        self.check = check


def check_signature(data: bytes, store: TrustStore) -> SignatureCheck:
    """What the signature of the package ``data`` says against ``store``, from its raw
    bytes (PackageFormatError if its frame or SHA-256 is wrong); the body is not decoded."""
    envelope = open_envelope(data)
    return store.verify(envelope.signature, lambda: envelope.message)


def refusal(check: SignatureCheck, allow_unsigned: bool) -> str | None:
    """Why a package with this signature check may not be applied, or None if it may: a
    signature that does not hold is always refused, an unsigned or untrusted package
    unless ``allow_unsigned`` (the applier's rule)."""
    status = check.status
    if status == SignatureStatus.TRUSTED:
        return None
    if status == SignatureStatus.INVALID:
        return f"the signature by key {check.key_hex} does not hold: tampered"
    if allow_unsigned:
        return None
    return f"the package is {untrusted(check)}; give --trust KEY.pub or --allow-unsigned"


def untrusted(check: SignatureCheck) -> str:
    """How a package no trusted key signed is signed: ``unsigned``, or by which key."""
    if check.status == SignatureStatus.UNSIGNED:
        return "unsigned"
    return f"signed by untrusted key {check.key_hex}"


def read_trusted(
    data: bytes,
    trust: TrustStore | None,
    *,
    allow_unsigned: bool = False,
    baseline: bytes | None = None,
) -> tuple[Package, SignatureCheck]:
    """The package ``data`` and its signature check, decoded only once the signature
    passes against ``trust`` (no store: nothing is trusted). SignatureRefused, before
    any decoding, for a package the applier would refuse for its signature;
    PackageFormatError for a malformed one. ``baseline`` as for ``decode_package``."""
    check = check_signature(data, trust or TrustStore())
    reason = refusal(check, allow_unsigned)
    if reason is not None:
        raise SignatureRefused(f"check 'signature' failed: {reason}", check)
    return decode_package(data, baseline), check
