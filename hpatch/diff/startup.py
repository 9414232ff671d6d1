"""The code a process runs while the image loads: the entry point, the initialisers
the CRT tables and the linker's constructor lists name, and every function they call.

A global that only the new build has starts with its initial bytes in a patched
process; if the new build's start-up code sets it, a process started on the new build
holds another value, and the patch would run the new code on a state the new build
never has.
"""

from __future__ import annotations

from hpatch.arch import RefKind
from hpatch.diff.match import Side
from hpatch.diff.references import reference_rows

#: Sections whose relocated pointers name initialisers (MSVC's CRT tables, gcc's lists).
_INITIALISER_SECTIONS = (".CRT", ".ctors", ".init_array", ".tls")
_FOLLOWED = (RefKind.CALL, RefKind.BRANCH)


def startup_roots(side: Side) -> dict[int, str]:
    """Function RVA -> what runs it at start-up (the entry point, or the table naming it)."""
    image = side.image
    roots: dict[int, str] = {}
    if image.entry_rva:
        entry = image.function_at(image.entry_rva)
        if entry is not None:
            roots[entry.rva] = "the entry point"
    for field in side.relocated:
        section = image.section_at(field)
        if section is None:
            continue
        listed = section.name.startswith(_INITIALISER_SECTIONS)
        # mingw keeps its constructor lists in .text, outside every function
        in_code_list = section.is_executable and image.function_at(field) is None
        if not (listed or in_code_list):
            continue
        function = image.function_at(side.pointer_at(field))
        if function is not None:
            roots.setdefault(function.rva, f"the initialiser list in {section.name}")
    return roots


def startup_functions(side: Side) -> dict[int, str]:
    """Every function start-up code runs (RVA -> what runs it), calls and tail jumps
    followed from the roots."""
    reached = startup_roots(side)
    pending = list(reached)
    starts = side.fingerprints
    while pending:
        rva = pending.pop()
        references = side.fingerprints[rva].references if rva in starts else ()
        for _, kind, target in reference_rows(references):
            if kind in _FOLLOWED and target in starts and target not in reached:
                reached[target] = reached[rva]
                pending.append(target)
    return reached
