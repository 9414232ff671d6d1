"""Tampering and trust: every single-bit flip of a signed package, and the packages an
operator must never let in (another signer, another baseline, an older sequence, code
that is not the bytes the package expects), each refused with its own message and
the process left exactly as it was."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hpatch.apply import apply_package
from hpatch.emu import Process
from hpatch.emu.memory import Protection
from hpatch.errors import ApplyError, PackageFormatError
from hpatch.package import Package, decode_package
from hpatch.package.signing import sign_package

from .samples import process, signed, signed_bytes, snapshot, stranger_key, trust_only


@dataclass
class FlipTally:
    tried: int = 0
    by_reader: int = 0  # PackageFormatError (the digest, the header)
    by_applier: int = 0  # ApplyError (the signature)
    accepted: list[int] = field(default_factory=list)  # bits that got through
    changed: list[int] = field(default_factory=list)  # refused, but the process moved

    @property
    def rejected(self) -> int:
        return self.by_reader + self.by_applier

    def merge(self, other: FlipTally) -> None:
        self.tried += other.tried
        self.by_reader += other.by_reader
        self.by_applier += other.by_applier
        self.accepted += other.accepted
        self.changed += other.changed


def flip_bits(
    build: str, old: str, new: str, sequence: int, bits: Iterable[int] | None = None
) -> FlipTally:
    """Flip each of ``bits`` (all by default) of the signed package in turn and hand it
    to a process running the baseline, as an operator would: read, then apply with a
    trust store holding the signer's key."""
    data = signed_bytes(build, old, new, sequence)
    target = process(build, old)
    before = snapshot(target)
    tally = FlipTally()
    for bit in range(len(data) * 8) if bits is None else bits:
        mutated = bytearray(data)
        mutated[bit // 8] ^= 1 << (bit % 8)
        tally.tried += 1
        try:
            package = decode_package(bytes(mutated))
        except PackageFormatError:
            tally.by_reader += 1
            continue
        try:
            apply_package(target, package, options=trust_only())
        except ApplyError:
            tally.by_applier += 1
            if snapshot(target) != before:
                tally.changed.append(bit)
            continue
        tally.accepted.append(bit)
        target = process(build, old)
        before = snapshot(target)
    return tally


@dataclass(frozen=True, slots=True)
class Refusal:
    """One package an applier must refuse: how to set the process up, the package,
    and what the refusal must say."""

    name: str
    setup: Callable[[Process], None]
    package: Callable[[], Package]
    message: str


def refusals(build: str) -> list[Refusal]:
    """The trust scenarios of the reliability issue, for one build."""

    def nothing(target: Process) -> None:
        pass

    def running_package_3(target: Process) -> None:
        apply_package(target, signed(build, "v1", "v3", 3), options=trust_only())

    def entry_changed(target: Process) -> None:
        # Someone else patched the entry of a function the package redirects.
        module = target.main_module
        assert module is not None
        site = module.va(signed(build, "v1", "v2", 2).redirects[-1].old_rva)
        brk = b"\xcc" * 4 if "x64" in build else bytes.fromhex("000020d4")
        target.space.protect(site, 4, Protection.RW)
        target.space.write(site, brk)
        target.space.protect(site, 4, Protection.RX)

    def tampered() -> Package:
        genuine = signed(build, "v1", "v2", 2)
        return dataclasses.replace(
            genuine, servicing=dataclasses.replace(genuine.servicing, description="tampered")
        )

    return [
        Refusal(
            "re-signed by an untrusted key",
            nothing,
            lambda: sign_package(signed(build, "v1", "v2", 2), stranger_key()),
            r"check 'signature' failed: the package is signed by untrusted key [0-9a-f]{16}",
        ),
        Refusal(
            "changed after signing",
            nothing,
            tampered,
            r"check 'signature' failed: the signature by key [0-9a-f]{16} does not hold: tampered",
        ),
        Refusal(
            "unsigned",
            nothing,
            lambda: dataclasses.replace(signed(build, "v1", "v2", 2), signature=None),
            r"check 'signature' failed: the package is unsigned",
        ),
        Refusal(
            "for another baseline",
            nothing,
            lambda: signed(build, "v2", "v3", 3),
            r"check 'baseline' failed: .*mapped SHA-256: the package needs [0-9a-f]{64}, the image",
        ),
        Refusal(
            "older than the package applied (rollback attack)",
            running_package_3,
            lambda: signed(build, "v1", "v2", 2),
            r"check 'sequence' failed: package 2 is older than package 3, which the image "
            r"runs \(anti-rollback\)",
        ),
        Refusal(
            "original bytes that do not match the target",
            entry_changed,
            lambda: signed(build, "v1", "v2", 2),
            r"check 'original bytes' failed: .*not the ones the package expects",
        ),
    ]


def refuse(build: str, refusal: Refusal, base: int | None = None) -> tuple[str, bool]:
    """(the refusal's message, whether the process was left exactly as it was); raises
    AssertionError if the package was applied."""
    target = process(build, "v1", base)
    refusal.setup(target)
    before = snapshot(target)
    try:
        apply_package(target, refusal.package(), options=trust_only())
    except ApplyError as error:
        return str(error), snapshot(target) == before
    raise AssertionError(f"{build}: a package {refusal.name} was applied")
