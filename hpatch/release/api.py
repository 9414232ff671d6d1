"""``run_release``: pair two release trees, service every pair, write the outputs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hpatch import __version__
from hpatch.errors import HPatchError
from hpatch.files import FileRefused, check_output, write_output
from hpatch.package import encode_package
from hpatch.package.signing import sign_package
from hpatch.release.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    TIMINGS_NAME,
    TIMINGS_SCHEMA,
    manifest_bytes,
    manifest_document,
    package_file,
    sign_manifest,
)
from hpatch.release.outcome import Outcome, Settings, Status
from hpatch.release.pairing import Pair, pair_trees
from hpatch.release.report_html import REPORT_NAME, index_html
from hpatch.release.run import run_pairs
from hpatch.text import json_text, path_text


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """A finished run: the manifest document as written, and whether any binary failed."""

    document: dict[str, Any]
    manifest_path: str

    @property
    def failed(self) -> bool:
        """True if any binary is an ``error``."""
        return self.document["summary"][Status.ERROR] > 0


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _locations(pair: Pair) -> list[str]:
    return [f.location for f in (pair.old, pair.new) if f is not None]


def _output_path(out_dir: str, relative: str) -> str:
    return os.path.join(out_dir, *relative.split("/"))


def _check_outputs(out_dir: str, pairs: list[Pair], inputs: list[str], force: bool) -> None:
    """Refuse, before any work, every output that exists (without ``force``) or is not
    a regular file: a run writes all its outputs or stops before the first."""
    names = [MANIFEST_NAME, SIGNATURE_NAME, TIMINGS_NAME, REPORT_NAME]
    names += [package_file(p.path) for p in pairs if p.old is not None and p.new is not None]
    for name in names:
        target = _output_path(out_dir, name)
        if os.path.lexists(target):
            check_output(target, inputs, force=force)


def _write(path: str, data: bytes, inputs: list[str], force: bool) -> None:
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise HPatchError(f"cannot create {path_text(parent)}: {exc.strerror or exc}") from exc
    write_output(path, data, inputs, force=force)


def run_release(
    old_dir: str,
    new_dir: str,
    out_dir: str,
    settings: Settings,
    *,
    jobs: int,
    key: Ed25519PrivateKey | None = None,
    force: bool = False,
    finished: Callable[[Pair, Outcome], None] | None = None,
    paired: Callable[[int], None] | None = None,
    protected: Sequence[str] = (),
    scheduler: str | None = None,
) -> ReleaseResult:
    """Service every PE file of ``old_dir`` and ``new_dir`` (see the package docstring)
    on ``jobs`` local processes, or on the Dask cluster whose scheduler is at
    ``scheduler`` (``tcp://HOST:PORT``), and write ``out_dir``: packages,
    ``release.json`` (signed with ``key`` when given) and ``timings.json``. No output
    replaces an input, nor a file of ``protected`` (the signing key). Raises HPatchError
    only for the run as a whole (a tree that is not a directory, an output that may not
    be written, a cluster that cannot be used); a bad binary is an entry. ``paired``
    hears how many pairs the trees hold before the first is serviced, ``finished``
    each one as it is done."""
    for name, tree in (("OLD_DIR", old_dir), ("NEW_DIR", new_dir)):
        if _inside(out_dir, tree):
            raise FileRefused(
                f"refusing to write into {path_text(out_dir)}: it is inside {name} "
                f"{path_text(tree)}, which the release reads"
            )
    pairs = pair_trees(old_dir, new_dir)
    inputs = [*protected, *(location for pair in pairs for location in _locations(pair))]
    if os.path.lexists(out_dir) and not stat.S_ISDIR(os.lstat(out_dir).st_mode):
        raise FileRefused(f"{path_text(out_dir)} is not a directory")
    _check_outputs(out_dir, pairs, inputs, force)
    if paired is not None:
        paired(len(pairs))
    outcomes = run_pairs(
        pairs,
        settings,
        jobs,
        None if finished is None else lambda index, outcome: finished(pairs[index], outcome),
        scheduler=scheduler,
    )
    binaries, timings = [], []
    for pair, outcome in zip(pairs, outcomes, strict=True):
        entry = outcome.entry
        if outcome.package is not None:
            package = outcome.package if key is None else sign_package(outcome.package, key)
            data = encode_package(package)
            file = package_file(pair.path)
            _write(_output_path(out_dir, file), data, [*protected, *_locations(pair)], force)
            entry["package"] = {
                "file": file,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        binaries.append(entry)
        timings.append({"path": pair.path, "seconds": outcome.timings})
    options = settings.options
    document = manifest_document(
        binaries,
        {
            "sequence": options.sequence,
            "supersedes": list(options.supersedes) if options.supersedes else None,
            "description": options.description,
            "advisory": options.advisory,
        },
        {"inputs": settings.inputs if settings.emulate else 0, "emulate": settings.emulate},
    )
    # The report a release manager opens: what the manifest says, and per packaged
    # binary the functions its package carries.
    packages = {o.entry["path"]: o.package for o in outcomes if o.package is not None}
    _write(_output_path(out_dir, REPORT_NAME), index_html(document, packages), inputs, force)
    data = manifest_bytes(document)
    manifest_path = _output_path(out_dir, MANIFEST_NAME)
    signature_path = _output_path(out_dir, SIGNATURE_NAME)
    # The manifest is written last: once it is there, everything it names is too.
    if key is not None:
        _write(signature_path, sign_manifest(data, key), inputs, force)
    elif force and os.path.lexists(signature_path):
        check_output(signature_path, inputs, force=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(signature_path)  # an earlier run's signature is not this manifest's
    timing_document = {"schema": TIMINGS_SCHEMA, "hpatch_version": __version__, "binaries": timings}
    _write(
        _output_path(out_dir, TIMINGS_NAME),
        (json_text(timing_document) + "\n").encode("ascii"),
        inputs,
        force,
    )
    _write(manifest_path, data, inputs, force)
    return ReleaseResult(document, manifest_path)
