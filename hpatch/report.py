"""Plain-data views of model objects, for ``--json`` output (stable keys, fixed order)."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import TYPE_CHECKING, Any

from hpatch import __version__
from hpatch.text import Streamed

if TYPE_CHECKING:
    # Types only: ``funcs`` and ``info`` need none of the diff or the package at run time.
    from hpatch.apply import ApplyReport
    from hpatch.blockers import Blocker
    from hpatch.diff import DiffResult, FunctionChange
    from hpatch.image import Function, PEImage
    from hpatch.package.model import Baseline, Package
    from hpatch.package.signing import SignatureCheck
    from hpatch.verify import VerifyReport

#: The ``hpatch diff --json`` document's schema. 2: blockers gained class, cause and
#: their place as data (function, rva, end_rva, section, symbol, target_rva, build).
DIFF_SCHEMA = "hpatch.diff/2"
#: The schemas of ``hpatch funcs --json`` and ``hpatch info --json`` (docs/schema/).
FUNCS_SCHEMA = "hpatch.funcs/1"
INFO_SCHEMA = "hpatch.info/1"
#: The ``hpatch verify --json`` document's schema (docs/schema/verify-1.schema.json).
VERIFY_SCHEMA = "hpatch.verify/1"
_STATUS_ORDER = {"modified": 0, "added": 1, "removed": 2, "unchanged": 3}


def identity_dict(image: PEImage) -> dict[str, Any]:
    """The image's identity as JSON-ready data."""
    identity = image.identity
    return {
        "name": image.name,
        "machine": identity.machine.name,
        "image_base": identity.image_base,
        "size_of_image": identity.size_of_image,
        "time_date_stamp": identity.time_date_stamp,
        "checksum": identity.checksum,
        "entry_rva": image.entry_rva,
        "file_size": identity.file_size,
        "file_sha256": identity.file_sha256,
        "mapped_sha256": identity.mapped_sha256,
    }


def function_dict(function: Function) -> dict[str, Any]:
    """One function as JSON-ready data."""
    return {
        "rva": function.rva,
        "size": function.size,
        "name": function.name,
        "sources": [source.value for source in function.sources],
        "fragments": [{"rva": f.rva, "size": f.size} for f in function.fragments],
        "padding_after": function.padding_after,
        "inline_data": [
            {"rva": d.rva, "size": d.size, "kind": d.kind.value, "part": d.part}
            for d in function.inline_data
        ],
    }


def funcs_document(image: PEImage, *, streamed: bool = False) -> dict[str, Any]:
    """The document ``hpatch funcs --json`` prints (``streamed``: its functions made one
    at a time as they are written, see ``write_json``)."""
    functions = (function_dict(f) for f in image.functions)
    return {
        "schema": FUNCS_SCHEMA,
        "hpatch_version": __version__,
        "image": identity_dict(image),
        "functions": Streamed(functions) if streamed else list(functions),
    }


def info_document(image: PEImage, *, streamed: bool = False) -> dict[str, Any]:
    """The document ``hpatch info --json`` prints (``streamed``: its imports and exports
    made one at a time as they are written, see ``write_json``)."""
    config = image.load_config
    imports = (
        {"dll": i.dll, "name": i.name, "ordinal": i.ordinal, "iat_rva": i.iat_rva}
        for i in image.imports
    )
    exports = (
        {"ordinal": e.ordinal, "name": e.name, "rva": e.rva, "forwarder": e.forwarder}
        for e in image.exports
    )
    return {
        "schema": INFO_SCHEMA,
        "hpatch_version": __version__,
        "image": identity_dict(image),
        "sections": [
            {
                "name": s.name,
                "rva": s.rva,
                "virtual_size": s.virtual_size,
                "raw_size": s.raw_size,
                "characteristics": s.characteristics,
            }
            for s in image.sections
        ],
        "imports": Streamed(imports) if streamed else list(imports),
        "exports": Streamed(exports) if streamed else list(exports),
        "base_relocations": len(image.relocations),
        "symbols": len(image.symbols),
        "unwind_entries": len(image.unwind_entries),
        "load_config": None
        if config is None
        else {
            "size": config.size,
            "guard_flags": config.guard_flags,
            "guard_cf_functions": len(config.guard_cf_function_rvas),
            "hotpatch_table_offset": config.hotpatch_table_offset,
        },
    }


def change_dict(change: FunctionChange) -> dict[str, Any]:
    """One function of a diff as JSON-ready data."""
    from hpatch.blockers import function_label

    function = change.new or change.old
    assert function is not None
    return {
        "status": change.status.value,
        "old_rva": change.old.rva if change.old else None,
        "new_rva": change.new.rva if change.new else None,
        "old_size": change.old.size if change.old else None,
        "new_size": change.new.size if change.new else None,
        "name": (change.new and change.new.name) or (change.old and change.old.name) or None,
        "match": change.match.rule.value if change.match else None,
        "confidence": change.match.confidence if change.match else None,
        "reason": change.reason or None,
        "label": function_label(function),
    }


def _function_rva(change: FunctionChange) -> int:
    function = change.new or change.old
    return function.rva if function is not None else 0


def diff_document(result: DiffResult) -> dict[str, Any]:
    """The document ``hpatch diff --json`` prints."""
    changes = sorted(
        result.changes,
        key=lambda c: (_STATUS_ORDER[c.status.value], _function_rva(c)),
    )
    return {
        "schema": DIFF_SCHEMA,
        "hpatch_version": __version__,
        "old": identity_dict(result.old),
        "new": identity_dict(result.new),
        "summary": result.summary(),
        "functions": [change_dict(c) for c in changes],
        "hotpatchable": result.hotpatchable,
        "blockers": [blocker_dict(b) for b in result.blockers],
    }


def blocker_dict(blocker: Blocker) -> dict[str, Any]:
    """One blocker as JSON-ready data: every key always present, null where it does not apply."""
    return {
        "kind": blocker.kind.value,
        "class": blocker.blocker_class.value,
        "cause": blocker.cause.value,
        "where": blocker.where,
        "function": blocker.function,
        "rva": blocker.rva,
        "end_rva": blocker.end_rva,
        "section": blocker.section,
        "symbol": blocker.symbol,
        "target_rva": blocker.target_rva,
        "build": blocker.build.value if blocker.build is not None else None,
        "reason": blocker.reason,
    }


def _baseline_dict(baseline: Baseline) -> dict[str, Any]:
    return {
        "name": baseline.file_name,
        "machine": baseline.machine.name,
        "image_base": baseline.image_base,
        "size_of_image": baseline.size_of_image,
        "time_date_stamp": baseline.time_date_stamp,
        "checksum": baseline.checksum,
        "mapped_sha256": baseline.mapped_sha256.hex(),
    }


def package_document(package: Package, data: bytes, check: SignatureCheck | None) -> dict[str, Any]:
    """What ``hpatch inspect --json`` prints: the whole package, readable without the image.

    ``check`` is the signature checked against a trust store, or None when none was given.
    """
    from hpatch.package.model import NO_RVA, BlobKind

    servicing = package.servicing
    redirects = {r.target_offset: r for r in package.redirects}
    counts = package.fixup_counts  # what the metadata states, resolved or not
    functions = []
    for function, count in zip(package.functions, counts.functions, strict=True):
        redirect = redirects.get(function.entry_offset)
        functions.append(
            {
                "status": function.status.name.lower(),
                "old_rva": function.old_rva if function.old_rva != NO_RVA else None,
                "new_rva": function.new_rva,
                "name": function.name or None,
                "old_size": function.old_size if function.old_rva != NO_RVA else None,
                "new_size": function.new_size,
                "region_offset": function.entry_offset,
                "redirect": redirect.strategy.name if redirect is not None else None,
                "redirect_span": list(redirect.strategy.span) if redirect is not None else None,
                "original_sha256": (
                    redirect.original_sha256.hex()
                    if redirect is not None and redirect.original_sha256
                    else None
                ),
                "fixups": count,
            }
        )
    if package.signature is None:
        signature: dict[str, Any] = {"signed": False, "key_id": None, "status": "unsigned"}
    else:
        signature = {
            "signed": True,
            "key_id": package.signature.key_id.hex(),
            "status": check.status.value if check is not None else "not checked",
        }
    return {
        "format_version": package.version,
        "machine": package.machine.name,
        "flags": package.flags,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "baseline": _baseline_dict(package.baseline),
        "target": {"mapped_sha256_prefix": servicing.target_sha256.hex()},
        "servicing": {
            "sequence": servicing.sequence,
            "supersedes": list(servicing.supersedes) if servicing.supersedes else None,
            "description": servicing.description,
            "advisory": servicing.advisory or None,
            "tool_version": servicing.tool_version,
        },
        "prerequisites": [
            {"kind": kind.name.lower(), "value": value} for kind, value in package.prerequisites
        ],
        "region": {
            "size": package.region_size,
            "alignment": package.region_alignment,
            "blobs": [
                {"kind": b.kind.name.lower(), "offset": b.offset, "size": b.size}
                for b in package.blobs
            ],
        },
        "functions": functions,
        "imports": [
            {  # the file lists the slot; the baseline names it (null without it)
                "old_iat_rva": i.old_iat_rva,
                "dll": i.dll or None,
                "name": i.name or None,
                "ordinal": i.ordinal if i.dll and not i.name else None,
            }
            for i in package.imports
        ],
        "new_imports": [
            {  # imports the baseline lacks: the package names them and carries their slots
                "dll": i.dll,
                "name": i.name or None,
                "ordinal": i.ordinal or None,
                "slot_offset": i.slot_offset,
            }
            for i in package.new_imports
        ],
        "data": [
            {"offset": b.offset, "size": b.size} for b in package.blobs if b.kind == BlobKind.RODATA
        ],
        "globals": [  # new writable globals, on pages of their own
            {"offset": b.offset, "size": b.size} for b in package.blobs if b.kind == BlobKind.DATA
        ],
        "fixups": counts.total,
        "unwind_records": len(package.unwind),
        "signature": signature,
    }


def apply_document(report: ApplyReport) -> dict[str, Any]:
    """One package's entry in the ``hpatch apply --json`` document: its outcome, the checks
    and the redirects written."""
    return {
        "module": report.module,
        "outcome": report.outcome,
        "sequence": report.sequence,
        "replaced_sequence": report.replaced_sequence,
        "region_va": report.region_va,
        "region_size": report.region_size,
        "signature": report.signature.status.value if report.signature else None,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in report.checks],
        "redirects": [
            {
                "function": r.function,
                "old_va": r.old_va,
                "new_va": r.new_va,
                "strategy": r.strategy.name,
                "bytes": r.written.hex(),
            }
            for r in report.redirects
        ],
    }


def verify_document(report: VerifyReport) -> dict[str, Any]:
    """The document ``hpatch verify --json`` prints (without the identities)."""
    functions = [
        {
            "name": f.name,
            "status": f.status,
            "old_rva": f.old_rva,
            "new_rva": f.new_rva,
            "translation": f.translation.value,
            "mismatches": [
                {
                    "patched_va": m.patched_va,
                    "new_va": m.new_va,
                    "patched_instruction": m.patched_instruction,
                    "new_instruction": m.new_instruction,
                    "reason": m.reason,
                }
                for m in f.mismatches
            ],
            "emulation": {
                "outcome": f.emulation.outcome.value,
                "agreed": f.emulation.agreed,
                "returned": f.emulation.returned,
                "tried": f.emulation.tried,
                "detail": f.emulation.detail,
            },
            "passed": f.passed,
        }
        for f in report.functions
    ]

    translation = Counter(f.translation.value for f in report.functions)
    emulation = Counter(f.emulation.outcome.value for f in report.functions)
    return {
        "inputs": report.inputs,
        "summary": {
            "functions": len(functions),
            "translation_passed": translation["passed"],
            "translation_failed": translation["failed"],
            "emulation_passed": emulation["passed"],
            "emulation_failed": emulation["failed"],
            "not_emulated": emulation["not_emulated"],
        },
        "functions": functions,
        "passed": report.passed,
    }
