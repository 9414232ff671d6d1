"""Hotpatch packages: build them from a diff, encode and decode ``.hpk``, sign and verify.

A package decoded without its baseline image is unresolved (its region's bytes are
coded against the baseline); ``decode_package(data, baseline)`` or
``resolve_blobs(package, baseline)`` completes it, with ``baseline`` the baseline's
mapped image (``PEImage.mapped``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpatch.package.build import (
        BuildOptions,
        PackageBlocked,
        baseline_of,
        build_package,
        check_package,
        target_digest,
    )
    from hpatch.package.format import decode_package, encode, encode_package, resolve_blobs
    from hpatch.package.model import EncodedPackage, Package

#: Where each name lives: importing ``hpatch.package.model`` or ``.signing`` does not
#: load the builder and the codec, nor do commands that never build or read a package.
_HOMES = {
    "BuildOptions": "hpatch.package.build",
    "PackageBlocked": "hpatch.package.build",
    "baseline_of": "hpatch.package.build",
    "build_package": "hpatch.package.build",
    "check_package": "hpatch.package.build",
    "target_digest": "hpatch.package.build",
    "decode_package": "hpatch.package.format",
    "encode": "hpatch.package.format",
    "encode_package": "hpatch.package.format",
    "resolve_blobs": "hpatch.package.format",
    "EncodedPackage": "hpatch.package.model",
    "Package": "hpatch.package.model",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hpatch.package' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "BuildOptions",
    "EncodedPackage",
    "Package",
    "PackageBlocked",
    "baseline_of",
    "build_package",
    "check_package",
    "decode_package",
    "encode",
    "encode_package",
    "resolve_blobs",
    "target_digest",
]
