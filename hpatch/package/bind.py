"""Lay out a package's patch region for a placement: copy its blobs, bind every fixup,
and write the address each new import is bound to into its slot."""

from __future__ import annotations

from collections.abc import Sequence

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


def bind_region(
    package: Package, image_va: int, region_va: int, import_vas: Sequence[int] = ()
) -> bytearray:
    """The region's bytes for this placement, every fixup written, and each new import's
    slot holding the address in ``import_vas`` (one per ``package.new_imports``, as the
    process binds them: see hpatch.apply).

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
    if len(import_vas) != len(package.new_imports):
        raise PackageFormatError(
            f"{len(package.new_imports)} new imports to bind, {len(import_vas)} addresses given"
        )
    region = bytearray(package.region_size)
    for blob in package.blobs:
        region[blob.offset : blob.offset + len(blob.data)] = blob.data
    for item, va in zip(package.new_imports, import_vas, strict=True):
        region[item.slot_offset : item.slot_offset + 8] = va.to_bytes(8, "little")
    records = [
        FixupRecord(
            f.offset, f.kind, target_va(package, f.target_kind, f.target, image_va, region_va)
        )
        for f in package.fixups
    ]
    apply_fixups(region, region_va, image_va, records)
    return region
