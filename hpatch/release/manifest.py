"""The release manifest (``release.json``), its detached signature, and checking both.

The manifest names every binary of the release and the SHA-256 of every package, so
one signature over it vouches for the whole set (as TUF's targets metadata does).
The signature file ``release.json.sig`` is 72 bytes: the signing key's 8-byte id (as
packages name it) and the Ed25519 signature of ``SIGNATURE_DOMAIN`` followed by the
manifest's exact bytes. The domain keeps a manifest signature from ever being taken
for a package signature, or the other way round.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch import __version__
from hpatch.errors import HPatchError
from hpatch.files import read_input
from hpatch.package.format import KEY_ID_SIZE, MAX_PACKAGE_SIZE, SIGNATURE_SIZE
from hpatch.package.signing import SignatureStatus, TrustStore, key_id
from hpatch.text import json_text, path_text

RELEASE_SCHEMA = "hpatch.release/1"
TIMINGS_SCHEMA = "hpatch.release-timings/1"
CHECK_SCHEMA = "hpatch.release-check/1"
MANIFEST_NAME = "release.json"
SIGNATURE_NAME = "release.json.sig"
TIMINGS_NAME = "timings.json"
PACKAGES_DIR = "packages"
SIGNATURE_DOMAIN = b"hpatch.release/1 manifest\0"
#: A manifest entry takes well under 1 KiB without blockers; this allows millions.
MAX_MANIFEST = 256 << 20


def manifest_bytes(document: dict[str, Any]) -> bytes:
    """The manifest as written and signed: the same document gives the same bytes."""
    return (json_text(document) + "\n").encode("ascii")


def sign_manifest(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The detached signature file's bytes for the manifest ``data``."""
    return key_id(key.public_key()) + key.sign(SIGNATURE_DOMAIN + data)


def package_file(path: str) -> str:
    """Where the package of the binary at ``path`` goes, relative to OUT_DIR."""
    return f"{PACKAGES_DIR}/{path}.hpk"


def manifest_document(
    binaries: list[dict[str, Any]], servicing: dict[str, Any], verification: dict[str, Any]
) -> dict[str, Any]:
    """The manifest document (the ``hpatch release --json`` document)."""
    counts = {status: 0 for status in ("unchanged", "packaged", "blocked", "error")}
    counts |= {"added": 0, "removed": 0}
    for binary in binaries:
        counts[binary["status"]] += 1
    return {
        "schema": RELEASE_SCHEMA,
        "hpatch_version": __version__,
        "servicing": servicing,
        "verification": verification,
        "summary": counts,
        "binaries": binaries,
    }


@dataclass(frozen=True, slots=True)
class PackageCheck:
    """One packaged binary of a manifest, held to the digest the manifest gives."""

    path: str
    file: str
    result: str  # "ok", "mismatch" (digest or size), "missing", "refused" (a bad path)
    detail: str


@dataclass(frozen=True, slots=True)
class ReleaseCheck:
    """What ``inspect --release`` found: the manifest's signature, every package."""

    manifest_sha256: str
    signature: SignatureStatus | None  # None: no trust store given, not checked
    key_id: str | None
    document: dict[str, Any] | None
    packages: tuple[PackageCheck, ...]

    @property
    def ok(self) -> bool:
        """True when the signature (if asked for) holds and every package matches."""
        trusted = self.signature in (None, SignatureStatus.TRUSTED)
        return trusted and all(p.result == "ok" for p in self.packages)

    def as_dict(self) -> dict[str, Any]:
        """The ``inspect --release --json`` document."""
        summary = self.document["summary"] if self.document is not None else None
        return {
            "schema": CHECK_SCHEMA,
            "hpatch_version": __version__,
            "manifest_sha256": self.manifest_sha256,
            "signature": {
                "status": self.signature.value if self.signature is not None else "unchecked",
                "key_id": self.key_id,
            },
            "summary": summary,
            "packages": [
                {"path": p.path, "file": p.file, "result": p.result, "detail": p.detail}
                for p in self.packages
            ],
            "ok": self.ok,
        }


def _check_signature(
    data: bytes, signature: bytes | None, trust: TrustStore
) -> tuple[SignatureStatus, str | None]:
    if signature is None:
        return SignatureStatus.UNSIGNED, None
    if len(signature) != KEY_ID_SIZE + SIGNATURE_SIZE:
        return SignatureStatus.INVALID, None
    identifier = signature[:KEY_ID_SIZE]
    key = trust.keys.get(identifier)
    if key is None:
        return SignatureStatus.UNTRUSTED, identifier.hex()
    try:
        key.verify(signature[KEY_ID_SIZE:], SIGNATURE_DOMAIN + data)
    except InvalidSignature:
        return SignatureStatus.INVALID, identifier.hex()
    return SignatureStatus.TRUSTED, identifier.hex()


def _safe_relative(file: object) -> str | None:
    """``file`` if it is a plain relative path below OUT_DIR, else None."""
    if not isinstance(file, str) or not file:
        return None
    if any(part in ("", ".", "..") for part in file.split("/")):
        return None  # absolute, or a step out of OUT_DIR
    if os.name == "nt" and any(c in file for c in "\\:"):
        return None  # Windows reads these as separators and drives; elsewhere, names
    return file


def _check_package(out_dir: str, binary: dict[str, Any]) -> PackageCheck:
    path = str(binary.get("path"))
    package = binary.get("package")
    if not isinstance(package, dict):
        package = {}
    file = _safe_relative(package.get("file"))
    if file is None:
        return PackageCheck(path, str(package.get("file")), "refused", "not a path below OUT_DIR")
    try:
        data = read_input(os.path.join(out_dir, *file.split("/")), MAX_PACKAGE_SIZE, "package")
    except HPatchError as exc:
        return PackageCheck(path, file, "missing", str(exc))
    digest = hashlib.sha256(data).hexdigest()
    if digest != package.get("sha256") or len(data) != package.get("size"):
        return PackageCheck(path, file, "mismatch", f"sha256 {digest}, {len(data)} bytes")
    return PackageCheck(path, file, "ok", "")


def check_release(out_dir: str, trust: TrustStore | None) -> ReleaseCheck:
    """Check the manifest in ``out_dir``: its signature against ``trust`` (when given),
    then every package against the digest and size the manifest gives. With a trust
    store, a manifest whose signature does not hold is not read further."""
    data = read_input(os.path.join(out_dir, MANIFEST_NAME), MAX_MANIFEST, "release manifest")
    manifest_sha256 = hashlib.sha256(data).hexdigest()
    status: SignatureStatus | None = None
    identifier = None
    if trust is not None:
        signature_path = os.path.join(out_dir, SIGNATURE_NAME)
        signature = (
            read_input(signature_path, 4096, "signature")
            if os.path.lexists(signature_path)
            else None
        )
        status, identifier = _check_signature(data, signature, trust)
        if status != SignatureStatus.TRUSTED:
            return ReleaseCheck(manifest_sha256, status, identifier, None, ())
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise HPatchError(f"{path_text(out_dir)}/{MANIFEST_NAME} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema") != RELEASE_SCHEMA:
        raise HPatchError(
            f"{path_text(out_dir)}/{MANIFEST_NAME} is not a {RELEASE_SCHEMA} manifest"
        )
    binaries = document.get("binaries")
    if not isinstance(binaries, list):
        raise HPatchError(f"{path_text(out_dir)}/{MANIFEST_NAME} has no list of binaries")
    checks = tuple(
        _check_package(out_dir, b)
        for b in binaries
        if isinstance(b, dict) and b.get("status") == "packaged"
    )
    return ReleaseCheck(manifest_sha256, status, identifier, document, checks)
