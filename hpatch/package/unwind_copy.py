"""What a copied unwind record holds beyond its unwind codes: the exception handler.

An x64 ``UNWIND_INFO`` with ``UNW_FLAG_EHANDLER`` or ``UNW_FLAG_UHANDLER``, and an
ARM64 ``.xdata`` record with its X bit set, end with the RVA of a language-specific
handler and then that handler's own data. The dispatcher calls the handler with the
image base the function table was registered with (the baseline's, for a patch
region) and a pointer to the data, so a copy is right only if every RVA in it names
the matching place of the running image. The data's layout is the handler's: hpatch
copies it only for handlers whose data it knows field by field, and refuses the rest
with the handler's name and why.

Handlers are told apart by the import their thunk jumps through, by a symbol or
export name, or, for the runtime's statically linked GS handler (no name in a
stripped image), by its exact code.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from hpatch.arch import Arch, Machine
from hpatch.arch.base import ReadRva
from hpatch.arch.rewrite import Fixup
from hpatch.errors import ImageFormatError
from hpatch.image import PEImage
from hpatch.package.format.wire import arch_of
from hpatch.package.model import FixupEntry, TargetKind

#: Binds the RVA field at a new-image RVA naming a new-image RVA: (target kind,
#: target), or None when it cannot (the binder says why).
BindField = Callable[[int, int], tuple[TargetKind, int] | None]
#: Region offset of a new-image RVA in the function's own copied code (``end_ok``: or
#: the end of a part), else None.
LocateOwn = Callable[[int, bool], int | None]

#: More scope records than any compiler emits for one function: a bound on reading.
MAX_SCOPE_RECORDS = 4096
#: ``SCOPE_TABLE`` HandlerAddress value meaning "execute the handler" (no filter).
EXCEPTION_EXECUTE_HANDLER = 1
_WORD = struct.Struct("<I")
_SCOPE_RECORD = struct.Struct("<IIII")


class ExceptionHandler(Enum):
    """Language-specific handlers of the Microsoft runtimes, by their names."""

    C_SPECIFIC_HANDLER = "__C_specific_handler"
    GS_HANDLER_CHECK = "__GSHandlerCheck"
    GS_HANDLER_CHECK_SEH = "__GSHandlerCheck_SEH"
    GS_HANDLER_CHECK_EH = "__GSHandlerCheck_EH"
    GS_HANDLER_CHECK_EH4 = "__GSHandlerCheck_EH4"
    CXX_FRAME_HANDLER = "__CxxFrameHandler"
    CXX_FRAME_HANDLER2 = "__CxxFrameHandler2"
    CXX_FRAME_HANDLER3 = "__CxxFrameHandler3"
    CXX_FRAME_HANDLER4 = "__CxxFrameHandler4"


_BY_NAME = {handler.value: handler for handler in ExceptionHandler}
#: C++ handlers: their data is (the RVA of) a FuncInfo, whose unwind map, try blocks,
#: catch handlers (funclets, type descriptors in writable data) and IP-to-state map
#: are RVAs into the function and elsewhere; hpatch does not translate them.
_CXX = frozenset(
    {
        ExceptionHandler.GS_HANDLER_CHECK_EH,
        ExceptionHandler.GS_HANDLER_CHECK_EH4,
        ExceptionHandler.CXX_FRAME_HANDLER,
        ExceptionHandler.CXX_FRAME_HANDLER2,
        ExceptionHandler.CXX_FRAME_HANDLER3,
        ExceptionHandler.CXX_FRAME_HANDLER4,
    }
)


class HandlerDataError(Exception):
    """A record's handler data cannot be copied with certainty; the message says why."""


class ScopeField(Enum):
    """The RVA fields of a ``SCOPE_TABLE`` record (``C_SCOPE_TABLE_ENTRY``)."""

    BEGIN_ADDRESS = "BeginAddress"  # first instruction of the guarded range
    END_ADDRESS = "EndAddress"  # end of the guarded range
    HANDLER_ADDRESS = "HandlerAddress"  # the filter or termination handler's code
    JUMP_TARGET = "JumpTarget"  # the __except block


@dataclass(frozen=True, slots=True)
class HandlerIdentity:
    """Which handler an RVA is (None: not one hpatch knows) and how to name it."""

    handler: ExceptionHandler | None
    description: str


@dataclass(frozen=True, slots=True)
class HandlerDataField:
    """An RVA in a handler's data: ``offset`` bytes into the record, naming ``target_rva``."""

    offset: int
    field: ScopeField
    target_rva: int


@dataclass(frozen=True, slots=True)
class UnwindRecordLayout:
    """One unwind record as it is copied: ``size`` bytes, handler data included.

    ``handler_offset`` is where the handler's RVA lies in the record (None without a
    handler); ``fields`` are the RVAs in the handler's data; ``chained`` is the RVA of
    an x64 chained ``RUNTIME_FUNCTION`` inside the record.
    """

    unwind_rva: int
    size: int
    handler_offset: int | None = None
    handler_rva: int | None = None
    handler: HandlerIdentity | None = None
    fields: tuple[HandlerDataField, ...] = ()
    chained: int | None = None


def recognise_handler(machine: Machine, read: ReadRva, rva: int) -> ExceptionHandler | None:
    """The runtime handler whose exact code lies at ``rva``, if hpatch knows it."""
    if arch_of(machine).gs_handler_check_at(read, rva):
        return ExceptionHandler.GS_HANDLER_CHECK
    return None


def identify_handler(image: PEImage, rva: int) -> HandlerIdentity:
    """Which handler the code at ``rva`` of ``image`` is: the import its thunk jumps
    through, a symbol or export name, or the runtime's GS handler recognised by code."""
    arch = image.arch
    try:
        thunk = arch.import_thunk(image.read, rva)
    except ImageFormatError:
        thunk = None
    if thunk is not None:
        for item in image.imports:
            if item.iat_rva == thunk[1]:
                name = item.name or f"#{item.ordinal}"
                return HandlerIdentity(_BY_NAME.get(item.name or ""), f"{item.dll}!{name}")
    function = image.function_at(rva)
    if function is not None and function.rva == rva and function.name:
        return HandlerIdentity(_BY_NAME.get(function.name), function.name)
    recognised = recognise_handler(arch.machine, image.read, rva)
    if recognised is not None:
        return HandlerIdentity(recognised, f"{recognised.value} (recognised by its code)")
    return HandlerIdentity(None, f"sub_{rva:x}")


# handler data -------------------------------------------------------------------


def _scope_table(read: ReadRva, data_rva: int, base: int) -> tuple[int, list[HandlerDataField]]:
    """The size of a ``SCOPE_TABLE`` at ``data_rva`` and its RVA fields (offsets from
    ``data_rva`` plus ``base``)."""
    (count,) = _WORD.unpack(read(data_rva, 4))
    if count > MAX_SCOPE_RECORDS:
        raise HandlerDataError(f"a scope table of {count} records is not plausible")
    fields: list[HandlerDataField] = []
    for index in range(count):
        at = 4 + index * _SCOPE_RECORD.size
        begin, end, handler, jump = _SCOPE_RECORD.unpack(read(data_rva + at, _SCOPE_RECORD.size))
        if not begin < end:
            raise HandlerDataError(
                f"scope record {index} has an empty range 0x{begin:x}..0x{end:x}"
            )
        fields.append(HandlerDataField(base + at, ScopeField.BEGIN_ADDRESS, begin))
        fields.append(HandlerDataField(base + at + 4, ScopeField.END_ADDRESS, end))
        if jump == 0:
            # __try/__finally: HandlerAddress is the termination handler, always code.
            if handler in (0, EXCEPTION_EXECUTE_HANDLER):
                raise HandlerDataError(
                    f"scope record {index} has no jump target and no termination handler"
                )
            fields.append(HandlerDataField(base + at + 8, ScopeField.HANDLER_ADDRESS, handler))
            continue
        # __try/__except: HandlerAddress is EXCEPTION_EXECUTE_HANDLER or a filter's RVA.
        if handler != EXCEPTION_EXECUTE_HANDLER:
            if handler == 0:
                raise HandlerDataError(f"scope record {index} has a null exception filter")
            fields.append(HandlerDataField(base + at + 8, ScopeField.HANDLER_ADDRESS, handler))
        fields.append(HandlerDataField(base + at + 12, ScopeField.JUMP_TARGET, jump))
    return 4 + count * _SCOPE_RECORD.size, fields


def _gs_data_size(machine: Machine, read: ReadRva, data_rva: int) -> int:
    """Bytes of GS handler data: frame offsets only, no RVAs, so copied as they are."""
    return arch_of(machine).gs_handler_data_size(read, data_rva)


def handler_data(
    machine: Machine, handler: HandlerIdentity, read: ReadRva, data_rva: int, base: int = 0
) -> tuple[int, tuple[HandlerDataField, ...]]:
    """(size, RVA fields) of the data ``handler`` reads at ``data_rva``; field offsets
    are from ``data_rva`` plus ``base``. HandlerDataError for data hpatch cannot prove."""
    kind = handler.handler
    if kind is None:
        raise HandlerDataError(
            f"names the exception handler {handler.description}, which hpatch does not "
            "recognise, so the layout of its data is unknown"
        )
    if kind in _CXX:
        raise HandlerDataError(
            f"names the C++ exception handler {handler.description}: its data leads to a "
            "FuncInfo (unwind map, try blocks, catch funclets, IP-to-state map) of RVAs "
            "into the function and beyond, which hpatch does not translate"
        )
    try:
        if kind == ExceptionHandler.GS_HANDLER_CHECK:
            return _gs_data_size(machine, read, data_rva), ()
        size, fields = _scope_table(read, data_rva, base)
        if kind == ExceptionHandler.GS_HANDLER_CHECK_SEH:
            size += _gs_data_size(machine, read, data_rva + size)
    except ImageFormatError as exc:
        raise HandlerDataError(f"has handler data that runs out of the image ({exc})") from exc
    except HandlerDataError as exc:
        raise HandlerDataError(f"names {handler.description}, whose {exc}") from exc
    return size, tuple(fields)


def unwind_record_layout(
    arch: Arch,
    read: ReadRva,
    unwind_rva: int,
    identify: Callable[[int], HandlerIdentity],
) -> UnwindRecordLayout:
    """How the unwind record at ``unwind_rva`` is copied; ``identify`` names a handler.

    HandlerDataError (its message completes "the unwind record at ...") when the
    record names a handler whose data hpatch cannot copy with certainty.
    """
    size, has_handler, chained = arch.unwind_record_size(read, unwind_rva)
    if not has_handler:
        return UnwindRecordLayout(unwind_rva, size, chained=chained)
    try:
        (handler_rva,) = _WORD.unpack(read(unwind_rva + size, 4))
    except ImageFormatError as exc:
        raise HandlerDataError(f"has a handler field outside the image ({exc})") from exc
    identity = identify(handler_rva)
    data_size, fields = handler_data(
        arch.machine, identity, read, unwind_rva + size + 4, base=size + 4
    )
    return UnwindRecordLayout(
        unwind_rva,
        size + 4 + data_size,
        handler_offset=size,
        handler_rva=handler_rva,
        handler=identity,
        fields=fields,
        chained=chained,
    )


def record_fixups(
    record: UnwindRecordLayout,
    offset: int,
    kind: Fixup,
    bind: BindField,
    locate_own: LocateOwn,
) -> list[FixupEntry] | None:
    """The fixups of a copy of ``record`` at region ``offset``: the handler and any
    filter or termination handler bound as code references (``bind``), the guarded
    ranges and ``__except`` targets to the function's own copy (``locate_own``).

    None when ``bind`` could not bind a field; HandlerDataError when a field that must
    lie in the function's copy does not.
    """
    if record.handler_offset is None or record.handler_rva is None:
        return []
    fixups: list[FixupEntry] = []
    bound = bind(record.unwind_rva + record.handler_offset, record.handler_rva)
    if bound is None:
        return None
    fixups.append(FixupEntry(offset + record.handler_offset, kind, *bound))
    begins: dict[int, int] = {}  # record offset of a BeginAddress -> its shift
    for item in record.fields:
        at = offset + item.offset
        if item.field == ScopeField.HANDLER_ADDRESS:
            # a filter or a termination handler: a code reference like any other
            bound = bind(record.unwind_rva + item.offset, item.target_rva)
            if bound is None:
                return None
            fixups.append(FixupEntry(at, kind, *bound))
            continue
        is_end = item.field == ScopeField.END_ADDRESS
        located = locate_own(item.target_rva, is_end)
        what = f"its {item.field.value} 0x{item.target_rva:x}"
        if located is None:
            raise HandlerDataError(f"has {what} outside the code carried for its function")
        shift = located - item.target_rva
        if item.field == ScopeField.BEGIN_ADDRESS:
            begins[item.offset] = shift
        elif is_end and begins.get(item.offset - 4) != shift:
            # a guarded range stays one range only if its ends were copied together
            raise HandlerDataError(f"has {what} not copied along with its scope's beginning")
        fixups.append(FixupEntry(at, kind, TargetKind.REGION, located))
    return fixups


__all__ = [
    "ExceptionHandler",
    "HandlerDataError",
    "HandlerDataField",
    "HandlerIdentity",
    "ScopeField",
    "UnwindRecordLayout",
    "handler_data",
    "identify_handler",
    "recognise_handler",
    "record_fixups",
    "unwind_record_layout",
]
