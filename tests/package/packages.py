"""Packages of the sample builds, built once per session, and a signing key for them."""

from __future__ import annotations

from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.package import BuildOptions, build_package, encode_package
from hpatch.package.signing import sign_package

from ..diff.samples import sample_diff

#: (old, new) pairs whose diff is hotpatchable in every build.
HOTPATCHABLE_PAIRS = (("v1", "v2"), ("v1", "v3"), ("v2", "v3"))
#: A small pair, hotpatchable in every build, whose fix adds an import.
IMPORT_PAIR = ("v3", "import-v3")
OPTIONS = BuildOptions(
    sequence=2, supersedes=(1, 1), description="sample fixes", advisory="CVE-0000-0001"
)


@cache
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@cache
def sample_package(build: str, old: str, new: str, signed: bool = False) -> bytes:
    """The encoded package turning the stripped ``old`` sample into ``new``."""
    package = build_package(sample_diff(build, old, new), OPTIONS)
    if signed:
        package = sign_package(package, signing_key())
    return encode_package(package)
