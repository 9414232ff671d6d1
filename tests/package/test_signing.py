"""Signatures, trust stores and baseline checks: a package applies to one image, from one signer."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.errors import PackageFormatError
from hpatch.image import load_image
from hpatch.package import decode_package
from hpatch.package.checks import check_prerequisites
from hpatch.package.signing import (
    SignatureStatus,
    TrustStore,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
)

from ..conftest import BUILDS, SAMPLES
from .packages import sample_package, signing_key


def trust() -> TrustStore:
    return TrustStore([signing_key().public_key()])


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_every_single_bit_flip_is_rejected(build: str) -> None:
    data = sample_package(build, "v1", "v3", signed=True)
    store = trust()
    assert store.check(decode_package(data)).status == SignatureStatus.TRUSTED
    by_digest = by_signature = 0
    for bit in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        try:
            package = decode_package(bytes(mutated))
        except PackageFormatError:
            by_digest += 1
            continue
        assert store.check(package).status != SignatureStatus.TRUSTED, f"bit {bit} accepted"
        by_signature += 1
    # flips of the content break the digest; flips of the signature block break the signature
    assert by_signature == (8 + 64) * 8
    assert by_digest == len(data) * 8 - by_signature


def test_untrusted_and_unsigned_packages_are_told_apart() -> None:
    signed = decode_package(sample_package("x64-gcc", "v1", "v2", signed=True))
    stranger = TrustStore([Ed25519PrivateKey.from_private_bytes(b"\1" * 32).public_key()])
    check = stranger.check(signed)
    assert check.status == SignatureStatus.UNTRUSTED
    assert check.key_id == key_id(signing_key().public_key())
    assert trust().check(signed).status == SignatureStatus.TRUSTED
    unsigned = decode_package(sample_package("x64-gcc", "v1", "v2"))
    assert trust().check(unsigned).status == SignatureStatus.UNSIGNED


def test_a_signature_moved_to_another_package_does_not_hold() -> None:
    one = decode_package(sample_package("x64-gcc", "v1", "v2", signed=True))
    other = decode_package(sample_package("x64-gcc", "v1", "v3", signed=True))
    from dataclasses import replace

    forged = replace(other, signature=one.signature)
    assert trust().check(forged).status == SignatureStatus.INVALID


def test_key_files_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    public_path = generate_key(tmp_path / "release")
    private = load_private_key(tmp_path / "release")
    assert key_id(load_public_key(public_path)) == key_id(private.public_key())
    assert (tmp_path / "release").stat().st_mode & 0o077 == 0
    with pytest.raises(Exception, match="refusing to overwrite"):
        generate_key(tmp_path / "release")
    store = TrustStore.from_paths([tmp_path])
    assert list(store.keys) == [key_id(private.public_key())]


@pytest.mark.parametrize("build", BUILDS)
def test_a_package_for_another_baseline_is_refused_naming_the_field(build: str) -> None:
    package = decode_package(sample_package(build, "v1", "v3"))
    results = {
        r.name: r
        for r in check_prerequisites(
            package, load_image(SAMPLES / build / "v1" / "sample.stripped.dll")
        )
    }
    assert all(r.passed for r in results.values())
    wrong = load_image(SAMPLES / build / "v2" / "sample.stripped.dll")
    baseline = {r.name: r for r in check_prerequisites(package, wrong)}["baseline"]
    assert not baseline.passed
    assert "mapped SHA-256" in baseline.detail
    stamps = (package.baseline.time_date_stamp, wrong.identity.time_date_stamp)
    assert ("TimeDateStamp" in baseline.detail) == (stamps[0] != stamps[1])
    other_machine = "arm64-clang" if build != "arm64-clang" else "x64-clang"
    foreign = load_image(SAMPLES / other_machine / "v1" / "sample.stripped.dll")
    results = {r.name: r for r in check_prerequisites(package, foreign)}
    assert not results["machine"].passed and not results["baseline"].passed
