"""The hpatch error tree: every failure a user can cause is one of these."""

from __future__ import annotations


class HPatchError(Exception):
    """Root of every error hpatch raises on purpose.

    ``file`` names the input the error is about, as the command line was given it,
    when one is (the CLI's readers set it; ``--json`` error documents carry it).
    """

    file: str | None = None


class ImageFormatError(HPatchError):
    """The input is not a well-formed PE image (truncated, corrupt, inconsistent)."""


class UnsupportedError(HPatchError):
    """The input is well-formed but outside what hpatch supports (machine, hybrid image)."""


class PackageFormatError(HPatchError):
    """A hotpatch package is malformed, corrupt or tampered with."""


class NotHotpatchable(HPatchError):
    """The update between two builds cannot be delivered as a hotpatch."""


class ApplyError(HPatchError):
    """Applying a package to an image failed a check; nothing was changed."""


class CheckRefused(ApplyError):
    """A check refused the package before anything changed: a prerequisite, the
    baseline's identity, the signature, the servicing sequence (the CLI exits 6)."""


class KeyFileError(HPatchError):
    """A key file is missing, unreadable or not an Ed25519 key."""


class AddressSpaceError(HPatchError):
    """A request on an emulated address space cannot be met (overlap, unmapped, W^X, no room)."""


class EmulationFault(HPatchError):
    """Emulated code touched memory it may not touch."""

    def __init__(self, message: str, *, address: int, access: str, pc: int) -> None:
        super().__init__(message)
        self.address = address
        self.access = access
        self.pc = pc


class HostFault(HPatchError):
    """Emulated code called a host function that refused the call (an import nothing
    in the emulated process models)."""


class FixupError(ApplyError):
    """A fixup cannot be written (out of reach, misaligned, not the instruction it names).

    ``index`` is the fixup's position in the batch and ``reason`` what is wrong with it
    (the C core and its twin raise it alike); nothing of the batch was written.
    """

    def __init__(self, message: str, *, index: int, reason: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.reason = reason or message
