"""The last stage: a redirect for each replaced function, and the Package record."""

from __future__ import annotations

import hashlib

from hpatch import __version__
from hpatch.arch.rewrite import Fixup
from hpatch.blockers import BlockerCause, BlockerKind, Build, function_label
from hpatch.diff.classify import FunctionChange
from hpatch.diff.verdict import entry_room
from hpatch.image import PEImage
from hpatch.package.build.binding import Binder
from hpatch.package.build.context import Context
from hpatch.package.build.region import PAGE
from hpatch.package.model import (
    FORMAT_VERSION,
    TARGET_DIGEST_SIZE,
    Baseline,
    FixupEntry,
    Package,
    PatchFunction,
    Prerequisite,
    RedirectEntry,
    Servicing,
    TargetKind,
    UnwindRecord,
)

REGION_ALIGNMENT = PAGE
_ADDR32NB = (Fixup.X64_ADDR32NB, Fixup.ARM64_ADDR32NB)


def baseline_of(image: PEImage) -> Baseline:
    identity = image.identity
    return Baseline(
        file_name=image.name,
        machine=identity.machine,
        time_date_stamp=identity.time_date_stamp,
        size_of_image=identity.size_of_image,
        checksum=identity.checksum,
        image_base=identity.image_base,
        mapped_sha256=bytes.fromhex(identity.mapped_sha256),
    )


def target_digest(image: PEImage) -> bytes:
    """How a package that installs ``image`` names it (Servicing.target_sha256)."""
    return bytes.fromhex(image.identity.mapped_sha256)[:TARGET_DIGEST_SIZE]


def redirect(context: Context, change: FunctionChange, target_offset: int) -> RedirectEntry | None:
    """The redirect that sends the old function of ``change`` to region ``target_offset``;
    None (and a blocker) when no redirect form fits its entry."""
    function = change.old
    assert function is not None
    strategy = context.arch.redirect_strategy(*entry_room(context.old, function))
    if strategy is None:
        # the one blocker about the old build: the function the redirect overwrites
        context.blockers.add(
            BlockerKind.TOO_SMALL,
            BlockerCause.NO_REDIRECT_ROOM,
            function_label(function),
            "no redirect form fits the function's entry",
            function=function_label(function),
            rva=function.rva,
            build=Build.OLD,
        )
        return None
    start, length = strategy.span
    original = context.old.read(function.rva + start, length)
    return RedirectEntry(function.rva, strategy, target_offset, hashlib.sha256(original).digest())


def assemble(
    context: Context,
    binder: Binder,
    functions: list[PatchFunction],
    unwind: list[UnwindRecord],
    redirects: list[RedirectEntry],
) -> Package:
    """The package: imports in old-IAT order (fixups renumbered to match), everything
    else in region order."""
    region, arch = context.region, context.arch
    ordered = sorted(binder.imports.values(), key=lambda i: i.old_iat_rva)
    first_use = list(binder.imports.values())
    renumber = {first_use.index(item): n for n, item in enumerate(ordered)}
    fixups = tuple(
        FixupEntry(f.offset, f.kind, f.target_kind, renumber[f.target])
        if f.target_kind == TargetKind.IMPORT
        else f
        for f in sorted(region.fixups.values(), key=lambda f: f.offset)
    )
    size = len(region) + (-len(region)) % REGION_ALIGNMENT
    prerequisites = [
        (Prerequisite.MACHINE, int(arch.machine)),
        (Prerequisite.BASELINE, 0),
        (Prerequisite.MIN_FORMAT_VERSION, FORMAT_VERSION),
        (Prerequisite.NOT_HYBRID, 0),
        (Prerequisite.REGION_REACH, arch.region_reach),
    ]
    if any(f.kind in _ADDR32NB and f.target_kind == TargetKind.REGION for f in fixups):
        prerequisites.append((Prerequisite.REGION_ABOVE_IMAGE, 0))
    options = context.options
    return Package(
        machine=arch.machine,
        baseline=baseline_of(context.old),
        servicing=Servicing(
            sequence=options.sequence,
            supersedes=options.supersedes,
            description=options.description,
            advisory=options.advisory,
            tool_version=__version__,
            target_sha256=target_digest(context.new),
        ),
        prerequisites=tuple(prerequisites),
        region_size=size,
        region_alignment=REGION_ALIGNMENT,
        blobs=tuple(sorted(region.blobs, key=lambda b: b.offset)),
        functions=tuple(functions),
        imports=tuple(ordered),
        fixups=fixups,
        redirects=tuple(sorted(redirects, key=lambda r: r.old_rva)),
        unwind=tuple(unwind),
        new_imports=tuple(sorted(binder.new_imports, key=lambda i: i.slot_offset)),
    )
