"""Lay out a package's patch region for a placement: copy its blobs, bind every fixup."""

from __future__ import annotations

from hpatch.arch.rewrite import FixupRecord, apply_fixups
from hpatch.errors import PackageFormatError
from hpatch.package.model import Package, TargetKind


def target_va(
    package: Package, kind: TargetKind, target: int, image_va: int, region_va: int
) -> int:
    """The address a fixup target names once the baseline is at ``image_va`` and the
    region at ``region_va``."""
    if kind == TargetKind.OLD_RVA:
        return image_va + target
    if kind == TargetKind.REGION:
        return region_va + target
    return image_va + package.imports[target].old_iat_rva


def bind_region(package: Package, image_va: int, region_va: int) -> bytearray:
    """The region's bytes for this placement, every fixup written.

    All or nothing: FixupError (naming the fixup) if any field cannot reach its target
    from there; the caller's memory is untouched either way. The package must be
    resolved (``decode_package(data, baseline)`` or ``resolve_blobs``): PackageFormatError
    otherwise.
    """
    if not package.resolved_region:
        raise PackageFormatError(
            "the package's region is coded against its baseline: resolve it first "
            "(decode_package(data, baseline) or resolve_blobs)"
        )
    region = bytearray(package.region_size)
    for blob in package.blobs:
        region[blob.offset : blob.offset + len(blob.data)] = blob.data
    records = [
        FixupRecord(
            f.offset, f.kind, target_va(package, f.target_kind, f.target, image_va, region_va)
        )
        for f in package.fixups
    ]
    apply_fixups(region, region_va, image_va, records)
    return region
