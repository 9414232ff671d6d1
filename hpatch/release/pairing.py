"""Finding the PE files of two release trees and pairing them by relative path.

Windows compares file names without regard to case, so ``System32/Foo.dll`` in one
tree pairs with ``system32/foo.dll`` in the other. A file is a PE file when it starts
with ``MZ`` and holds the ``PE\\0\\0`` signature where ``e_lfanew`` points; anything
else (text, a DOS program, a truncated stub) is not part of the release. Symbolic
links are not followed: a tree's files are its own.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

from hpatch.arch.base import machine_name
from hpatch.errors import HPatchError
from hpatch.text import path_text

#: Machines named by the PE/COFF spec that hpatch does not service, named anyway.
_DOS_HEADER = 0x40
_E_LFANEW = 0x3C


@dataclass(frozen=True, slots=True)
class TreeFile:
    """A PE file found in a tree: its path relative to the tree (forward slashes, as
    text) and where it is on this machine."""

    path: str
    location: str
    machine: str


@dataclass(frozen=True, slots=True)
class Pair:
    """One entry of a release: a file of the old tree, the new tree, or both; or an
    ``error`` found while pairing (an unreadable file, names that differ only in case)."""

    path: str
    old: TreeFile | None
    new: TreeFile | None
    error: str | None = None


def sniff_machine(location: str) -> str | None:
    """The machine of the PE file at ``location``, or None if it is not a PE file.
    Reads the DOS header and the signature only; raises OSError if unreadable."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(location, flags | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(descriptor, "rb") as stream:
        header = stream.read(_DOS_HEADER)
        if len(header) < _DOS_HEADER or header[:2] != b"MZ":
            return None
        (offset,) = struct.unpack_from("<I", header, _E_LFANEW)
        if offset >= os.fstat(stream.fileno()).st_size:
            return None
        stream.seek(offset)
        signature = stream.read(6)
    if len(signature) < 6 or signature[:4] != b"PE\0\0":
        return None
    return machine_name(struct.unpack_from("<H", signature, 4)[0])


def scan_tree(root: str) -> tuple[list[TreeFile], list[Pair]]:
    """The PE files under ``root`` in a fixed order, and an error entry for every file
    or directory that could not be read."""
    if not os.path.isdir(root):
        raise HPatchError(f"{path_text(root)} is not a directory")
    found: list[TreeFile] = []
    errors: list[Pair] = []

    def relative(location: str) -> str:
        return path_text(os.path.relpath(location, root)).replace(os.sep, "/")

    def unreadable(exc: OSError) -> None:
        where = relative(exc.filename) if exc.filename else "."
        errors.append(Pair(where, None, None, f"cannot read {where}: {exc.strerror or exc}"))

    for directory, subdirectories, names in os.walk(root, onerror=unreadable):
        subdirectories.sort()  # a fixed walk: the same tree gives the same order
        for name in sorted(names):
            location = os.path.join(directory, name)
            try:
                if not stat.S_ISREG(os.lstat(location).st_mode):
                    continue  # links, devices, FIFOs: not files of the release
                machine = sniff_machine(location)
            except OSError as exc:
                shown = relative(location)
                errors.append(Pair(shown, None, None, f"cannot read {shown}: {exc.strerror}"))
                continue
            if machine is not None:
                found.append(TreeFile(relative(location), location, machine))
    return found, errors


def _key(path: str) -> str:
    return path.casefold()


def pair_trees(old_root: str, new_root: str) -> list[Pair]:
    """Every PE file of both trees, paired case-insensitively by relative path, in the
    order of their paths. Two files of one tree whose names differ only in case are an
    error: Windows cannot hold both."""
    pairs: list[Pair] = []
    sides: list[dict[str, TreeFile]] = []
    for root in (old_root, new_root):
        files, errors = scan_tree(root)
        pairs.extend(errors)
        by_key: dict[str, list[TreeFile]] = {}
        for tree_file in files:
            by_key.setdefault(_key(tree_file.path), []).append(tree_file)
        side = {}
        for key, group in by_key.items():
            if len(group) == 1:
                side[key] = group[0]
                continue
            names = ", ".join(f.path for f in group)
            for tree_file in group:
                message = f"{names} differ only in case in one tree: Windows cannot hold both"
                pairs.append(Pair(tree_file.path, None, None, message))
        sides.append(side)
    old_side, new_side = sides
    clashed = {_key(p.path) for p in pairs}
    for key in sorted(old_side.keys() | new_side.keys()):
        if key in clashed:
            continue
        old, new = old_side.get(key), new_side.get(key)
        shown = new.path if new is not None else old.path  # type: ignore[union-attr]
        pairs.append(Pair(shown, old, new))
    # Duplicate error entries (a path clashing in both trees) are kept once.
    unique = {(p.path, p.error): p for p in pairs}
    return sorted(unique.values(), key=lambda p: (_key(p.path), p.path))
