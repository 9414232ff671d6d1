"""Hotpatch packages: build them from a diff, encode and decode ``.hpk``, sign and verify.

A package decoded without its baseline image is unresolved (its region's bytes are
coded against the baseline); ``decode_package(data, baseline)`` or
``resolve_blobs(package, baseline)`` completes it, with ``baseline`` the baseline's
mapped image (``PEImage.mapped``).
"""

from hpatch.package.build import (
    BuildOptions,
    PackageBlocked,
    baseline_of,
    build_package,
    target_digest,
)
from hpatch.package.format import decode_package, encode_package, resolve_blobs
from hpatch.package.model import Package

__all__ = [
    "BuildOptions",
    "Package",
    "PackageBlocked",
    "baseline_of",
    "build_package",
    "decode_package",
    "encode_package",
    "resolve_blobs",
    "target_digest",
]
