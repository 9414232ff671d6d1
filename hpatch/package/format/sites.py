"""Fixup sites and predicted targets.

The region stream lists a fixup only where the code does not predict it: each part of
each function is read by its Arch's ``predict_sites`` (hpatch.arch.site_prediction),
each function table entry's RVA fields are predicted (begin; on AMD64 end and unwind
data; on ARM64 the second word unless it is packed unwind data), and each predicted
site's target kind follows from the address its field names.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import replace

from hpatch.arch import Machine
from hpatch.arch.kinds import MACHINE_TAGS
from hpatch.arch.rewrite import Fixup
from hpatch.package.format.fields import INSTRUCTION_FIELDS, write_field
from hpatch.package.format.placement import (
    Placement,
    field_addresses,
    field_reader,
    table_targets,
    unwind_data_fields,
    unwind_data_size,
)
from hpatch.package.format.wire import arch_of, enum_value
from hpatch.package.model import (
    BlobKind,
    FixupSite,
    Package,
    Sited,
    TargetKind,
)


def walk_predictions(
    package: Package, fixups: Sequence[Sited], actual: Callable[[int, int], int]
) -> list[int]:
    """Every fixup's predicted target, in order (``fixups``: the package's, or their sites
    while the targets are being read): what the unwind records give for a
    function table's begin and end, the end of the unwind data the previous table entry
    names for its unwind data field, else what the field's bytes name under the virtual
    placement (needs resolved blobs). ``actual(index, predicted)`` is the fixup's target,
    on which the next unwind data field's prediction builds."""
    placement = Placement(package)
    field = field_reader(package)
    given = table_targets(package)
    chained = unwind_data_fields(package)
    arch = arch_of(package.machine)
    unwind_blobs = [b.offset for b in package.blobs if b.kind == BlobKind.UNWIND]
    following = unwind_blobs[0] if unwind_blobs else 0
    predictions = []
    addresses = field_addresses(package, placement, fixups)
    for index, (fixup, address) in enumerate(zip(fixups, addresses, strict=True)):
        region = fixup.target_kind == TargetKind.REGION
        if region and fixup.offset in given:
            predicted = given[fixup.offset]
        elif region and fixup.offset in chained:
            predicted = following
        else:
            predicted = placement.target_of(fixup.target_kind, address)
        predictions.append(predicted)
        target = actual(index, predicted)
        if region and fixup.offset in chained:
            following = (target + unwind_data_size(arch, field(target, 8)) + 3) & ~3
    return predictions


def predicted_targets(package: Package) -> list[int]:
    """For every fixup of a resolved package, its predicted target."""
    fixups = package.fixups
    return walk_predictions(package, fixups, lambda index, _predicted: fixups[index].target)


AS_PREDICTED, NOT_A_FIXUP = 0, 1  # site marks; any other mark is a fixup's code byte


def predicted_sites(package: Package) -> list[FixupSite]:
    """The fixup sites the region's bytes predict, by offset; needs resolved blobs."""
    field = field_reader(package)
    arch = arch_of(package.machine)
    sites: dict[int, Fixup] = {}
    for function in package.functions:
        for part in function.parts:
            for at, kind in arch.predict_sites(field(part.offset, part.size)):
                sites.setdefault(part.offset + at, kind)
    table: set[int] = set()
    for record in package.unwind:
        fields = [0] if arch.pdata_end_field is None else [0, arch.pdata_end_field]
        if arch.pdata_unwind_is_rva(field(record.table_offset + arch.pdata_unwind_field, 4)):
            fields.append(arch.pdata_unwind_field)
        table.update(record.table_offset + at for at in fields)
    for offset in table:
        sites.setdefault(offset, arch.rva_fixup)
    placement = Placement(package)
    found = tuple(FixupSite(offset, sites[offset], TargetKind.OLD_RVA) for offset in sorted(sites))
    predicted = []
    for fixup, address in zip(found, field_addresses(package, placement, found), strict=True):
        if fixup.offset in table:
            target_kind = TargetKind.REGION
        elif address in placement.slots:
            target_kind = TargetKind.IMPORT
        elif address >= placement.base or placement.moved(address):
            target_kind = TargetKind.REGION
        else:
            target_kind = TargetKind.OLD_RVA
        predicted.append(replace(fixup, target_kind=target_kind))
    return predicted


def fixup_code(fixup: Sited) -> int:
    return fixup.kind.coff_type | fixup.target_kind << 5


def fixup_from_code(machine: Machine, offset: int, code: int) -> FixupSite:
    return FixupSite(
        offset,
        enum_value(Fixup, MACHINE_TAGS[machine] | (code & 0x1F), "fixup kind"),
        enum_value(TargetKind, code >> 5, "fixup target kind"),
    )


def normalize_fields(package: Package) -> Package:
    """``package`` with every fixup field naming its target under the virtual placement
    where it can (so the region stream holds no target differences), and the function
    table fields predicted otherwise (begin, end, unwind data) zeroed."""
    placement = Placement(package)
    given = set(table_targets(package)) | unwind_data_fields(package)
    blobs = {b.offset: bytearray(b.data) for b in package.blobs}
    starts = sorted(blobs)
    for fixup in package.fixups:
        start = starts[bisect.bisect_right(starts, fixup.offset) - 1]
        data = blobs[start]
        at = fixup.offset - start
        field = bytes(data[at : at + fixup.kind.field_size])
        if fixup.target_kind == TargetKind.REGION and fixup.offset in given:
            written: bytes | None = bytes(len(field))
            if fixup.kind in INSTRUCTION_FIELDS:
                written = None
        else:
            written = write_field(
                fixup.kind,
                field,
                placement.address(fixup.offset),
                placement.target_address(fixup.target_kind, fixup.target),
            )
        if written is not None:
            data[at : at + len(written)] = written
    return replace(
        package, blobs=tuple(replace(b, data=bytes(blobs[b.offset])) for b in package.blobs)
    )
