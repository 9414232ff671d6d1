"""Every check refuses with its name and leaves the process exactly as it was."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch.apply import ApplyOptions, active_patch, apply_package, rollback
from hpatch.apply.transaction import Transaction
from hpatch.emu.memory import Protection
from hpatch.errors import ApplyError
from hpatch.package.format import encode_package
from hpatch.package.model import EncodedPackage
from hpatch.package.signing import TrustStore, sign_package

from .support import BUILDS, package, process

ALLOW = ApplyOptions(allow_unsigned=True)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def refused(target, pkg, options: ApplyOptions, expect: str) -> None:
    before = target.space.state()
    with pytest.raises(ApplyError, match=expect):
        apply_package(target, pkg, options=options)
    assert target.space.state() == before


def test_signatures() -> None:
    target = process("x64-clang")
    signed = sign_package(package("x64-clang", "v1", "v2", 2), KEY)
    trusted = ApplyOptions(trust=TrustStore([KEY.public_key()]))
    refused(target, package("x64-clang", "v1", "v2", 2), trusted, "check 'signature'.*unsigned")
    refused(target, sign_package(signed, OTHER_KEY), trusted, "check 'signature'.*untrusted key")
    forged = dataclasses.replace(
        signed, servicing=dataclasses.replace(signed.servicing, description="forged")
    )
    refused(target, forged, ApplyOptions(trust=trusted.trust, allow_unsigned=True), "does not hold")
    report = apply_package(target, signed, options=trusted)
    assert report.signature is not None and report.signature.status.value == "trusted"


def test_a_package_with_its_bytes_is_checked_over_those_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A package read from a file is applied with the file's bytes: the signature is
    checked over them and the digest recorded is theirs, and nothing is encoded again."""
    target = process("x64-clang")
    signed = sign_package(package("x64-clang", "v1", "v2", 2), KEY)
    trusted = ApplyOptions(trust=TrustStore([KEY.public_key()]))
    data = encode_package(signed)
    tampered = bytearray(data)
    tampered[-1] ^= 1  # the signature's last byte
    monkeypatch.setattr(
        "hpatch.package.format.encode_package",
        lambda _package: pytest.fail("the package was encoded again"),
    )
    refused(target, EncodedPackage(signed, bytes(tampered)), trusted, "does not hold")
    report = apply_package(target, EncodedPackage(signed, data), options=trusted)
    assert report.signature is not None and report.signature.status.value == "trusted"
    active = active_patch(target.main_module)
    assert active is not None and active.package_sha256 == hashlib.sha256(data).digest()
    again = apply_package(target, EncodedPackage(signed, data), options=trusted)
    assert again.outcome == "already applied"


def test_another_baseline_is_refused_naming_the_field() -> None:
    target = process("x64-clang", "v2")
    refused(target, package("x64-clang", "v1", "v3", 3), ALLOW, "check 'baseline'.*TimeDateStamp")
    other = process("x64-gcc")
    refused(other, package("x64-clang", "v1", "v2", 2), ALLOW, "check 'baseline'")


def test_older_and_same_sequence_are_refused() -> None:
    target = process("arm64-clang")
    apply_package(target, package("arm64-clang", "v1", "v3", 3), options=ALLOW)
    refused(target, package("arm64-clang", "v1", "v2", 2), ALLOW, "anti-rollback")
    renumbered = package("arm64-clang", "v1", "v2", 3)
    refused(target, renumbered, ALLOW, "another package with sequence 3")


@pytest.mark.parametrize("build", BUILDS)
def test_unexpected_original_bytes_are_refused(build: str) -> None:
    target = process(build)
    pkg = package(build, "v1", "v2", 2)
    module = target.main_module
    site = module.va(pkg.redirects[-1].old_rva)
    # Someone else changed the function's entry: a nop/brk over its first word.
    target.space.protect(site, 4, Protection.RW)
    target.space.write(site, b"\x90" * 4 if "x64" in build else bytes.fromhex("000020d4"))
    target.space.protect(site, 4, Protection.RX)
    refused(target, pkg, ALLOW, "check 'original bytes'.*not the ones the package expects")


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("operation", ["apply", "replace", "rollback"])
def test_a_fault_at_every_step_leaves_the_image_as_it_was(build: str, operation: str) -> None:
    first, second = package(build, "v1", "v2", 2), package(build, "v1", "v3", 3)

    def run(target) -> None:
        if operation == "apply":
            apply_package(target, first, options=ALLOW)
        elif operation == "replace":
            apply_package(target, second, options=ALLOW)
        else:
            rollback(target)

    def fresh():
        target = process(build)
        if operation != "apply":
            apply_package(target, first, options=ALLOW)
        return target

    class Injected(Exception):
        pass

    step = 0
    steps_seen: set[str] = set()
    while True:
        target = fresh()
        before = target.space.state()
        calls = 0

        def hook(name: str, at: int = step) -> None:
            nonlocal calls
            calls += 1
            steps_seen.add(name)
            if calls == at + 1:
                raise Injected(name)

        target.space.fault_hook = hook
        try:
            run(target)
        except (Injected, ApplyError):
            target.space.fault_hook = None
            assert target.space.state() == before, f"step {step}"
            step += 1
            continue
        break
    # Every kind of step was made to fail at least once.
    assert step >= 4
    expected = {"write", "protect"}
    if operation != "rollback":
        expected |= {"map", "register unwind table"}
    if operation != "apply":
        expected |= {"unmap"}
    assert expected <= steps_seen


def test_transaction_undo_restores_a_freed_region() -> None:
    target = process("x64-clang")
    region = target.space.allocate(0x2000, Protection.RW, "scratch")
    region.view[:4] = b"abcd"
    target.space.protect(region.va + 0x1000, 1, Protection.R)
    before = target.space.state()
    transaction = Transaction(target.space, target.function_tables)
    transaction.free(region)
    assert target.space.region_at(region.va) is None
    transaction.undo()
    assert target.space.state() == before
