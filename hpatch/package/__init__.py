"""Hotpatch packages: build them from a diff, encode and decode ``.hpk``, sign and verify."""

from hpatch.package.build import BuildOptions, PackageBlocked, baseline_of, build_package
from hpatch.package.format import decode_package, encode_package
from hpatch.package.model import Package

__all__ = [
    "BuildOptions",
    "Package",
    "PackageBlocked",
    "baseline_of",
    "build_package",
    "decode_package",
    "encode_package",
]
