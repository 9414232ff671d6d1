"""The valid inputs every campaign starts from: the sample builds, their signed
packages, the trusted key, and processes running a baseline."""

from __future__ import annotations

from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.apply import ApplyOptions, active_patch
from hpatch.emu import Process
from hpatch.emu.memory import RegionState
from hpatch.image import load_image
from hpatch.package import Package, encode_package
from hpatch.package.signing import TrustStore, sign_package

from ..apply.support import BUILDS, IMAGE, package, process
from ..conftest import SAMPLES

#: (old, new, sequence): v2 and v3 are the month-1 and month-2 packages of v1; v2 -> v3
#: is the month-2 update of an image that was updated to v2 by a reload.
PAIRS = (("v1", "v2", 2), ("v1", "v3", 3), ("v2", "v3", 3))
ARCHITECTURES = {"x64": ("x64-gcc", "x64-clang", "x64-clang-hotpatch"), "arm64": ("arm64-clang",)}


@cache
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@cache
def stranger_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def trusting() -> ApplyOptions:
    """Trusts the signing key, and allows unsigned packages so that a mutant without a
    signature still reaches every check behind the signature's."""
    return ApplyOptions(trust=TrustStore([signing_key().public_key()]), allow_unsigned=True)


def trust_only() -> ApplyOptions:
    return ApplyOptions(trust=TrustStore([signing_key().public_key()]))


@cache
def signed(build: str, old: str, new: str, sequence: int) -> Package:
    return sign_package(package(build, old, new, sequence), signing_key())


@cache
def signed_bytes(build: str, old: str, new: str, sequence: int) -> bytes:
    return encode_package(signed(build, old, new, sequence))


@cache
def baseline_mapped(build: str, version: str) -> bytes:
    """The mapped image at its preferred base: what a package resolves against."""
    return load_image(SAMPLES / build / version / IMAGE).mapped


Snapshot = tuple[tuple[RegionState, ...], object, object, object]


def snapshot(target: Process) -> Snapshot:
    """Every byte and protection of the address space, the module's unwind tables and
    the package it runs: what a refused or undone operation must leave as it was."""
    module = target.main_module
    assert module is not None
    tables = target.function_tables
    return (
        target.space.state(),
        tables.entries(module),
        tables.entries(("patch", module.base)),
        active_patch(module),
    )


__all__ = ["BUILDS", "package", "process"]
