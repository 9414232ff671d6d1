"""Ed25519 signing of packages, key files, and the trust store the applier checks against.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public). A key's id is the
first 8 bytes of SHA-256 over its raw 32-byte public key. A trust store is a set of
public keys, read from files or from directories of ``*.pub`` files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hpatch.errors import HPatchError, KeyFileError
from hpatch.files import MAX_KEY_FILE, create_exclusive, read_input
from hpatch.package.format import KEY_ID_SIZE, SIGNATURE_SIZE, signed_message
from hpatch.package.model import Package, SignatureInfo
from hpatch.text import path_text


class SignatureStatus(Enum):
    """What the signature of a package says, against a trust store."""

    UNSIGNED = "unsigned"
    TRUSTED = "trusted"  # signed by a key in the trust store, and the signature holds
    UNTRUSTED = "untrusted"  # signed by a key the trust store does not hold
    INVALID = "invalid"  # signed by a trusted key, but the signature does not hold


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    status: SignatureStatus
    key_id: bytes | None

    @property
    def key_hex(self) -> str | None:
        return self.key_id.hex() if self.key_id is not None else None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> bytes:
    """The 8-byte id a package names its signing key by."""
    return hashlib.sha256(_raw_public(key)).digest()[:KEY_ID_SIZE]


def generate_key(private_path: str | os.PathLike[str]) -> Path:
    """Write a new private key to ``private_path`` (mode 0600) and its public key beside it
    as ``<name>.pub`` (mode 0644); refuses to overwrite either, or to follow a symbolic
    link (even a dangling one) at either path. Returns the public key's path."""
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise KeyFileError(f"{path_text(path)} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        create_exclusive(private_path, private_pem, 0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write the key {path_text(private_path)}: {exc}") from exc
    try:
        create_exclusive(public_path, public_pem, 0o644)
    except OSError as exc:
        # No half pair: a private key whose public half was never written is removed.
        private_path.unlink()
        raise KeyFileError(f"cannot write the key {path_text(public_path)}: {exc}") from exc
    return public_path


def _read_key_file(path: Path) -> bytes:
    try:
        return read_input(path, MAX_KEY_FILE, "key")
    except HPatchError as exc:
        raise KeyFileError(str(exc)) from exc


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file."""
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path_text(path)} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path_text(path)} is not an Ed25519 key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file."""
    data = _read_key_file(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path_text(path)} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path_text(path)} is not an Ed25519 key")
    return key


class TrustStore:
    """The public keys whose packages may be applied."""

    def __init__(self, keys: list[Ed25519PublicKey] | None = None) -> None:
        self.keys = {key_id(k): k for k in keys or []}

    @classmethod
    def from_paths(cls, paths: list[str | os.PathLike[str]]) -> TrustStore:
        """Keys from PEM files, and from every ``*.pub`` file of the directories given."""
        keys: list[Ed25519PublicKey] = []
        for path in map(Path, paths):
            if path.is_dir():
                found = sorted(path.glob("*.pub"))
                if not found:
                    raise KeyFileError(
                        f"the trust directory {path_text(path)} holds no *.pub public key"
                    )
                keys.extend(load_public_key(p) for p in found)
            else:
                keys.append(load_public_key(path))
        return cls(keys)

    def check(self, package: Package) -> SignatureCheck:
        """Is ``package`` signed by a key of this store, and does the signature hold?"""
        return self.verify(package.signature, lambda: signed_message(package))

    def verify(
        self, signature: SignatureInfo | None, message: Callable[[], bytes]
    ) -> SignatureCheck:
        """What ``signature`` over ``message()`` says against this store (the message is
        made only when a key of the store is to check it)."""
        if signature is None:
            return SignatureCheck(SignatureStatus.UNSIGNED, None)
        key = self.keys.get(signature.key_id)
        if key is None:
            return SignatureCheck(SignatureStatus.UNTRUSTED, signature.key_id)
        try:
            key.verify(signature.signature, message())
        except InvalidSignature:
            return SignatureCheck(SignatureStatus.INVALID, signature.key_id)
        return SignatureCheck(SignatureStatus.TRUSTED, signature.key_id)


def sign_package(package: Package, key: Ed25519PrivateKey) -> Package:
    """``package`` with an Ed25519 signature by ``key`` over its header and body."""
    placeholder = SignatureInfo(key_id(key.public_key()), bytes(SIGNATURE_SIZE))
    unsigned = replace(package, signature=placeholder)
    signature = key.sign(signed_message(unsigned))
    return replace(package, signature=SignatureInfo(placeholder.key_id, signature))
