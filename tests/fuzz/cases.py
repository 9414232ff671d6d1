"""Fuzz cases: one call of a native entry point, stored as JSON and run on both cores.

A case is ``{"function": name, "args": [...], "check": "parity" | "safety", "note": ...}``.
Arguments are JSON values: a plain int (or bool) is itself; anything else is a tagged
list, so that the regression corpus can hold every argument shape the fuzzer makes:

- ``["bytes", hex]``, ``["bytearray", hex]``: the object itself;
- ``["array", typecode, hex]``: an ``array.array`` over those bytes;
- ``["view", hex, start, stop, step, readonly]``: a ``memoryview`` slice of a fresh
  bytearray (a step other than 1 makes it non-contiguous; readonly over bytes);
- ``["slice_of", index, start, stop]``: a ``memoryview`` slice of argument ``index``
  (records that alias the buffer they rewrite);
- ``["ranges", [[start, end], ...]]``: a list of (start, end) tuples;
- ``["ints", [...]]``, ``["tuples", [[...], ...]]``, ``["tuple", [...]]``: a list of
  ints, a list of tuples, a tuple;
- ``["mapping", [[key, value], ...]]``: a dict, compared afterwards like a buffer (the
  call adds to it);
- ``["x64_decoder"]``: hpatch.arch.x64's live capstone entry points (never made up:
  the C core calls through them);
- ``["oracle", kind, seed]``: a stand-in for one of discovery's callbacks (see
  :class:`Oracle`), whose calls are compared afterwards like a buffer's contents;
- ``["none"]``, ``["str", text]``, ``["float", value]``.

Each core gets freshly built arguments. ``parity`` demands the same result, or the same
exception type (and, for ValueError, the same message: those texts are API), and the
same final contents of every mutable argument. ``safety`` is for x64 code that is not
compiler output (the twin decodes with capstone, the C core with its own tables, and
the two read garbage differently): argument errors must still agree; a result from the
C core must be well-formed (see :func:`x64_well_formed`). Both modes run the C core
under the sanitizers when ``make sanitize`` runs them.
"""

from __future__ import annotations

import json
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"

# A single call of the C core on inputs of fuzz size (at most 64 KiB of code, 4,096
# fixups) takes well under a millisecond; under ASan a few. A call this slow is a
# finding of its own (an accidental quadratic loop, a runaway decode).
SLOW_SECONDS = 0.25


@dataclass
class Case:
    function: str
    args: list[Any]
    check: str = "parity"
    note: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        document = {"function": self.function, "check": self.check, "args": self.args}
        if self.note:
            document["note"] = self.note
        return json.dumps(document, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Case:
        document = json.loads(text)
        return cls(
            document["function"],
            document["args"],
            document.get("check", "parity"),
            document.get("note", ""),
        )

    def key(self) -> str:
        import hashlib

        body = json.dumps([self.function, self.check, self.args], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


class Oracle:
    """A callback of gap_evidence or gap_leaves that answers from a hash of its seed and
    arguments, always the same way, and logs its calls (each core must ask the same
    questions in the same order). Kinds: ``truth`` (check, may_follow, runs_into),
    ``thunk`` (None, or an end past its argument), ``extent`` (None, or an end
    anywhere around the candidate and its bound), ``padding`` (0 to 7 bytes), and
    ``raise``, a truth that now and then raises instead."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self.log: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        import hashlib

        self.log.append(args)
        digest = hashlib.blake2b(repr((self.seed, args)).encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        if self.kind == "thunk":
            return None if value % 8 else args[0] + 1 + value % 12
        if self.kind == "extent":
            target, bound = args
            if value % 4 == 0:
                return None
            return target + (value >> 8) % (max(bound - target, 0) + 9) - 4
        if self.kind == "padding":
            return value % 8 if value % 3 == 0 else 0
        if self.kind == "raise" and value % 23 == 0:
            raise RuntimeError("oracle")
        return value % 3 != 0


def build(args: list[Any]) -> list[Any]:
    """Fresh Python objects for the encoded arguments of a case."""
    built: list[Any] = []
    for value in args:
        if isinstance(value, (bool, int)):
            built.append(value)
            continue
        tag = value[0]
        if tag == "bytes":
            built.append(bytes.fromhex(value[1]))
        elif tag == "bytearray":
            built.append(bytearray.fromhex(value[1]))
        elif tag == "array":
            data = array(value[1])
            data.frombytes(bytes.fromhex(value[2]))
            built.append(data)
        elif tag == "view":
            _, hex_bytes, start, stop, step, readonly = value
            base = bytes.fromhex(hex_bytes) if readonly else bytearray.fromhex(hex_bytes)
            built.append(memoryview(base)[start:stop:step])
        elif tag == "slice_of":
            _, index, start, stop = value
            built.append(memoryview(built[index]).cast("B")[start:stop])
        elif tag == "ranges":
            built.append([tuple(pair) for pair in value[1]])
        elif tag == "ints":
            built.append(list(value[1]))
        elif tag == "tuples":
            built.append([tuple(row) for row in value[1]])
        elif tag == "tuple":
            built.append(tuple(value[1]))
        elif tag == "mapping":
            built.append({key: item for key, item in value[1]})
        elif tag == "x64_decoder":
            built.append(x64_decoder())
        elif tag == "oracle":
            built.append(Oracle(value[1], value[2]))
        elif tag == "none":
            built.append(None)
        elif tag == "str":
            built.append(value[1])
        elif tag == "float":
            built.append(float(value[1]))
        else:
            raise ValueError(f"unknown argument tag {tag!r}")
    return built


@cache
def _x64_arch() -> Any:
    from hpatch.arch.x64 import X64

    return X64()


def x64_decoder() -> tuple[int, ...]:
    """hpatch.arch.x64's capstone entry points for the C core's extent walk: live ones
    only (the C core calls through them), from an X64 object kept for the whole run."""
    decoder: tuple[int, ...] = _x64_arch()._extent_decoder
    return decoder


def _contents(value: object) -> bytes | None:
    """The bytes of a mutable argument, to compare what each core wrote (a mapping:
    its sorted items; an oracle: the calls it answered)."""
    if isinstance(value, dict):
        return repr(sorted(value.items())).encode()
    if isinstance(value, Oracle):
        return repr(value.log).encode()
    if isinstance(value, (bytearray, array)):
        return bytes(value)
    if isinstance(value, memoryview) and not value.readonly:
        return value.tobytes()
    return None


Outcome = tuple[Any, ...]


def call(module: object, case: Case) -> tuple[Outcome, list[bytes | None], float]:
    """(outcome, contents of the mutable arguments afterwards, seconds) of one call."""
    args = build(case.args)
    function: Callable[..., Any] = getattr(module, case.function)
    start = time.perf_counter()
    try:
        outcome: Outcome = ("ok", function(*args))
    except Exception as exc:  # the exception is the outcome being compared
        outcome = (type(exc).__name__, str(exc))
    seconds = time.perf_counter() - start
    return outcome, [_contents(a) for a in args], seconds


def least_seconds(module: object, case: Case, runs: int = 3) -> float:
    """The least time of a few calls: one slow call on a loaded machine (a preemption,
    a collection) is not a slow input."""
    return min(call(module, case)[2] for _ in range(runs))


def _same_error(native: Outcome, twin: Outcome) -> bool:
    if native[0] != twin[0]:
        return False
    # errors that state what is wrong with the input say it alike in both cores
    return native[0] not in ("ValueError", "FixupError") or native[1] == twin[1]


def x64_well_formed(case: Case, result: Any) -> str | None:
    """What is wrong with a normalise_x64 result, whatever the code: the masked copy
    has the code's length and differs from it only in bytes it set to zero, every
    reference names a site inside the code and a known kind, and no more instructions
    were decoded than there are bytes."""
    code = bytes(build(case.args)[0])
    code_rva = case.args[1]
    masked, references, count = result
    if len(masked) != len(code):
        return f"normalised length {len(masked)} != {len(code)}"
    for offset, (a, b) in enumerate(zip(masked, code, strict=True)):
        if a != b and a != 0:
            return f"byte {offset} changed to {a:#x}, not masked"
    if not 0 <= count <= len(code):
        return f"instruction count {count} for {len(code)} bytes"
    for site, kind, _target in references:
        if not code_rva <= site < code_rva + len(code) or kind not in range(1, 6):
            return f"bad reference {(site, kind, _target)}"
    return None


def _odd(value: Any) -> bool:
    """An argument of a type no parameter takes (see generate.odd_argument)."""
    return isinstance(value, bool) or (
        isinstance(value, list) and value[0] in ("none", "str", "float")
    )


def _tag(value: Any) -> str:
    return value[0] if isinstance(value, list) else type(value).__name__


# Where the twins of scan_x64_sites, scan_arm64_sites and normalise_x64 in
# hpatch/_fallback.py part from the C core, and the C core is right. Each is a
# divergence in argument handling only, on inputs hpatch never passes; they are
# counted and reported by the fuzz run, not failed, until the twins are fixed.
# (name, what the twin does, whether a case and its outcomes are an instance)
KNOWN: tuple[tuple[str, str, Callable[[Case, Outcome, Outcome], bool]], ...] = (
    (
        "lax-argument-types",
        "the x64 and scanner twins take floats (and normalise_x64 anything for "
        "image_base) where the C core wants an int, and check their arguments one by "
        "one instead of converting them all first: a wrongly typed argument is a "
        "TypeError in C, and in the twin a result, a ValueError about an earlier "
        "argument, or ctypes' ArgumentError",
        lambda case, got, want: (
            case.function in ("scan_x64_sites", "scan_arm64_sites", "normalise_x64")
            and got[0] == "TypeError"
            and any(_odd(a) for a in case.args)
        ),
    ),
    (
        "x64-array-length",
        "normalise_x64's twin checks code_rva + len(code) with len() of the object: "
        "items, not bytes, for an array of wider items",
        lambda case, got, want: case.function == "normalise_x64" and _tag(case.args[0]) == "array",
    ),
    (
        "x64-strided-code",
        "normalise_x64's twin copies code with bytes(), so it takes a non-contiguous "
        "buffer the C core and every other twin refuse with TypeError",
        lambda case, got, want: (
            case.function == "normalise_x64"
            and _tag(case.args[0]) == "view"
            and case.args[0][4] != 1
            and got[0] == "TypeError"
        ),
    ),
)


def known(case: Case, got: Outcome, want: Outcome) -> str | None:
    """The name of the known divergence this disagreement is, if it is one."""
    for name, _, applies in KNOWN:
        if applies(case, got, want):
            return name
    return None


def compare(case: Case, native: object, twin: object) -> tuple[str | None, float]:
    """(what differs, or None; seconds the C core took) for one case. A known
    divergence comes back as ``known: {name}``."""
    got, got_contents, seconds = call(native, case)
    want, want_contents, _ = call(twin, case)
    if case.check == "safety" and got[0] == want[0] == "ok":
        return x64_well_formed(case, got[1]), seconds
    problem = None
    if got[0] == "ok" or want[0] == "ok":
        if got != want:
            problem = f"C core {_short(got)} != twin {_short(want)}"
    elif not _same_error(got, want):
        problem = f"C core raised {got[0]}({got[1]!r}), twin {want[0]}({want[1]!r})"
    elif got_contents != want_contents:
        problem = "the cores left different bytes in a mutable argument"
    if problem is not None:
        name = known(case, got, want)
        if name is not None:
            return f"known: {name}", seconds
    return problem, seconds


def _short(outcome: Outcome) -> str:
    text = repr(outcome)
    return text if len(text) < 400 else text[:400] + "..."


def save(case: Case, why: str, directory: Path = CORPUS) -> Path:
    """Write a case to the regression corpus; its name is a digest of its content."""
    directory.mkdir(parents=True, exist_ok=True)
    case.note = why
    path = directory / f"{case.function}-{case.key()}.json"
    path.write_text(case.to_json())
    return path


def load_corpus(directory: Path = CORPUS) -> list[tuple[str, Case]]:
    return [(p.name, Case.from_json(p.read_text())) for p in sorted(directory.glob("*.json"))]
