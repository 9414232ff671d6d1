"""The structured blockers: why an update cannot be delivered as a hotpatch, as data.

One vocabulary for every stage that refuses: the diff's verdict, the package builder and
``hpatch verify`` emit the same ``Blocker`` records. A blocker's ``kind`` says what part
of the update blocks it, its ``cause`` is a stable code (the codes and their meaning are
listed in docs/cli.md), and its class follows from the cause: a ``hazard`` (the update
itself needs a new baseline) or a ``limitation`` (hpatch cannot prove or bind it yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpatch.image import Function


class BlockerKind(Enum):
    """What part of the update blocks it."""

    WRITABLE_DATA = "writable_data"
    IMPORTS = "imports"
    EXPORTS = "exports"
    TLS = "tls"
    ENTRY_POINT = "entry_point"
    TOO_SMALL = "too_small"
    UNRESOLVED_REFERENCE = "unresolved_reference"
    #: The package built, but its code failed translation validation or emulation.
    UNVALIDATED = "unvalidated"


class BlockerClass(Enum):
    """Whose the obstacle is: the update's, or hpatch's."""

    #: The update itself needs a new baseline: no hotpatch of the running image can
    #: deliver it.
    HAZARD = "hazard"
    #: hpatch cannot prove or bind it yet; the update could be a hotpatch.
    LIMITATION = "limitation"


_HAZARD, _LIMITATION = BlockerClass.HAZARD, BlockerClass.LIMITATION


class BlockerCause(Enum):
    """Why exactly an update is blocked: a stable code, and the class it belongs to.

    Each member is declared with its class, so a blocker's class follows from its
    cause and the two can never disagree.
    """

    blocker_class: BlockerClass

    def __new__(cls, value: str, blocker_class: BlockerClass) -> BlockerCause:
        member = object.__new__(cls)
        member._value_ = value
        member.blocker_class = blocker_class
        return member

    # hazards: the update changes what a running image cannot change
    WRITABLE_SECTION_ADDED = "writable_section_added", _HAZARD
    WRITABLE_SECTION_REMOVED = "writable_section_removed", _HAZARD
    WRITABLE_DATA_RESIZED = "writable_data_resized", _HAZARD
    WRITABLE_INITIAL_VALUE = "writable_initial_value", _HAZARD
    EXPORT_ADDED = "export_added", _HAZARD
    EXPORT_REMOVED = "export_removed", _HAZARD
    EXPORT_CHANGED = "export_changed", _HAZARD
    TLS_CHANGED = "tls_changed", _HAZARD
    NEW_DATA_AT_START = "new_data_at_start", _HAZARD
    STRUCT_LAYOUT_CHANGED = "struct_layout_changed", _HAZARD
    ENTRY_POINT_MOVED = "entry_point_moved", _HAZARD
    # limitations: the imports
    NEW_IMPORT = "new_import", _LIMITATION
    IMPORT_DLL_CHANGED = "import_dll_changed", _LIMITATION
    # limitations: redirecting a changed function
    NO_REDIRECT_ROOM = "no_redirect_room", _LIMITATION
    BRANCH_INTO_REDIRECT = "branch_into_redirect", _LIMITATION
    # limitations: binding a reference of the carried code to the old image
    CODE_OUTSIDE_FUNCTION = "code_outside_function", _LIMITATION
    UNMATCHED_FUNCTION = "unmatched_function", _LIMITATION
    FRAGMENT_OF_UNCHANGED_FUNCTION = "fragment_of_unchanged_function", _LIMITATION
    CARRIED_CODE_NOT_COPIED = "carried_code_not_copied", _LIMITATION
    UNKNOWN_DATA = "unknown_data", _LIMITATION
    PAST_OLD_SECTION = "past_old_section", _LIMITATION
    NO_OLD_SECTION = "no_old_section", _LIMITATION
    NEW_DATA_NOT_CARRIED = "new_data_not_carried", _LIMITATION
    # limitations: building the package
    FIELD_NOT_LOCATED = "field_not_located", _LIMITATION
    RELOCATION_ERROR = "relocation_error", _LIMITATION
    RODATA_JUMP_TABLE = "rodata_jump_table", _LIMITATION
    SHORT_REFERENCE_OUT_OF_REACH = "short_reference_out_of_reach", _LIMITATION
    ADRP_PAGE_SPLIT = "adrp_page_split", _LIMITATION
    PAGE_PASSED_ON = "page_passed_on", _LIMITATION
    PAGE_ACROSS_PARTS = "page_across_parts", _LIMITATION
    NEW_DATA_TOO_LARGE = "new_data_too_large", _LIMITATION
    NEW_DATA_POINTER_STRADDLES = "new_data_pointer_straddles", _LIMITATION
    NEW_DATA_START_UNKNOWN = "new_data_start_unknown", _LIMITATION
    UNWIND_RECORD_UNBOUND = "unwind_record_unbound", _LIMITATION
    UNWIND_HANDLER_DATA = "unwind_handler_data", _LIMITATION
    UNWIND_HANDLER_DIFFERS = "unwind_handler_differs", _LIMITATION
    # limitations: proving the package
    TRANSLATION_FAILED = "translation_failed", _LIMITATION
    EMULATION_DIVERGED = "emulation_diverged", _LIMITATION


class Build(Enum):
    """Which build a blocker's RVAs are in."""

    OLD = "old"
    NEW = "new"


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocker:
    """One reason the update cannot be delivered as a hotpatch, as data.

    ``where`` and ``reason`` are for people; the rest is for programs. ``rva`` is the
    site (or the start of a data range ending at ``end_rva``) in the ``build`` named.
    """

    kind: BlockerKind
    cause: BlockerCause
    where: str
    reason: str
    #: The function the site is in (name, or sub_<rva>).
    function: str | None = None
    rva: int | None = None
    end_rva: int | None = None
    section: str | None = None
    #: The data symbol, import (DLL!name) or export the blocker is about.
    symbol: str | None = None
    #: What the reference at ``rva`` names, for a reference that cannot be bound.
    target_rva: int | None = None
    build: Build | None = None

    @property
    def blocker_class(self) -> BlockerClass:
        return self.cause.blocker_class


def function_label(function: Function) -> str:
    """How blockers and reports name a function: its name, or sub_<rva>."""
    return function.name or f"sub_{function.rva:x}"
