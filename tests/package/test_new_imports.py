"""The new-imports record: imports the baseline lacks, named by the package, their slots
in the region; round trips, and a reader that refuses what is malformed, cheaply."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from hpatch.errors import PackageFormatError
from hpatch.package import decode_package, encode_package, new_imports
from hpatch.package.format.wire import Reader, Writer
from hpatch.package.model import Blob, BlobKind, FixupEntry, NewImport, Package, TargetKind

from ..conftest import BUILDS
from ..diff.samples import sample_diff
from .packages import sample_package
from .test_format import _with_metadata

CASE = ("x64-clang", "v3", "import-v3")


def resolved(case: tuple[str, str, str] = CASE) -> Package:
    return decode_package(sample_package(*case), sample_diff(*case).old.mapped)


def record(imports: tuple[NewImport, ...]) -> bytes:
    out = Writer()
    new_imports.write(out, imports)
    return bytes(out.out)


@pytest.mark.parametrize("build", BUILDS)
def test_the_sample_carries_a_slot_its_code_is_bound_to(build: str) -> None:
    case = (build, "v3", "import-v3")
    package = resolved(case)
    (item,) = package.new_imports
    assert (item.dll, item.name, item.ordinal) == ("samplehost.dll", "host_log_count", 0)
    (slots,) = [b for b in package.blobs if b.kind == BlobKind.IMPORT_SLOTS]
    assert (slots.offset, slots.data) == (item.slot_offset, bytes(8))
    assert any(
        f.target_kind == TargetKind.REGION and f.target == item.slot_offset for f in package.fixups
    )
    # the record is metadata: without the baseline it is all there
    assert decode_package(sample_package(*case)).new_imports == package.new_imports


def with_more_imports(package: Package) -> Package:
    """``package`` with two more DLLs' imports, one by ordinal, in a page of their own."""
    base = package.region_size
    added = (
        NewImport("KERNEL32.dll", "GetTickCount64", 0, base),
        NewImport("KERNEL32.dll", "Sleep", 0, base + 8),
        NewImport("WS2_32.dll", "", 115, base + 24),
    )
    return replace(
        package,
        region_size=base + 4096,
        blobs=(
            *package.blobs,
            Blob(BlobKind.IMPORT_SLOTS, base, bytes(16)),
            Blob(BlobKind.IMPORT_SLOTS, base + 24, bytes(8)),
        ),
        new_imports=package.new_imports + added,
    )


def test_a_package_with_new_imports_round_trips() -> None:
    baseline = sample_diff(*CASE).old.mapped
    package = with_more_imports(resolved())
    data = encode_package(package)
    assert decode_package(data, baseline) == package
    assert encode_package(decode_package(data)) == data
    assert encode_package(decode_package(data, baseline)) == data
    assert decode_package(data).new_imports == package.new_imports


def test_the_record_round_trips_and_states_no_import_in_one_byte() -> None:
    imports = with_more_imports(resolved()).new_imports
    data = record(imports)
    assert new_imports.read(Reader(data, "test"), 1 << 26) == imports
    assert record(()) == b"\0"


def test_huge_counts_are_refused_quickly() -> None:
    (item,) = resolved().new_imports
    original = record((item,))
    huge = Writer()
    huge.uv(1 << 62)
    # the DLL table's count, then the imports' count (after the one DLL name)
    for at in (0, 2 + len(item.dll)):
        assert original[at] == 1

        def grown(metadata: bytes, at: int = at) -> bytes:
            start = metadata.index(original)
            return metadata[: start + at] + bytes(huge.out) + metadata[start + at + 1 :]

        hostile = _with_metadata(sample_package(*CASE), grown)
        started = time.perf_counter()
        with pytest.raises(PackageFormatError, match="cannot fit"):
            decode_package(hostile)
        assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ([1, "a.dll", 1, 1, 0, 7], "value 1 out of range"),  # DLL index past the table
        ([1, "a.dll", 1, 0, 0, 1 << 16], "out of range"),  # an ordinal past 16 bits
        ([1, "a.dll", 1, 0, 1 << 30, 5], "out of range"),  # a slot past any region
        ([1, "a.dll", 1, 0, 0, 0], "truncated"),  # by name, and no name follows
        ([1, "a.dll", 2, 0, 0, 5], "cannot fit"),  # more imports than bytes
    ],
)
def test_a_malformed_record_is_refused(fields: list, error: str) -> None:
    out = Writer()
    for value in fields:
        if isinstance(value, str):
            out.string(value)
        else:
            out.uv(value)
    with pytest.raises(PackageFormatError, match=error):
        new_imports.read(Reader(bytes(out.out), "test"), 1 << 26)


def repeated(package: Package) -> Package:
    """The last new import made the same as the first but for the DLL name's case."""
    first, *middle, last = package.new_imports
    again = replace(first, dll=first.dll.upper(), slot_offset=last.slot_offset)
    return replace(package, new_imports=(first, *middle, again))


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda p: repeated(with_more_imports(p)), "repeats an import"),
        (
            lambda p: replace(p, new_imports=(replace(p.new_imports[0], name="", ordinal=0),)),
            "a name or an ordinal",
        ),
        (
            lambda p: replace(p, new_imports=(replace(p.new_imports[0], dll=""),)),
            "a name or an ordinal",
        ),
        (
            lambda p: replace(
                p, new_imports=(replace(p.new_imports[0], slot_offset=p.region_size),)
            ),
            "past the region|not the new imports' slots",
        ),
        (lambda p: replace(p, new_imports=()), "not the new imports' slots"),
        (
            lambda p: replace(
                p,
                blobs=tuple(
                    replace(b, data=b"\1" * 8) if b.kind == BlobKind.IMPORT_SLOTS else b
                    for b in p.blobs
                ),
            ),
            "holds bytes",
        ),
    ],
)
def test_an_inconsistent_package_is_not_encoded(edit, error: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PackageFormatError, match=error):
        encode_package(edit(resolved()))


def test_a_fixup_in_a_slot_is_refused() -> None:
    package = resolved()
    slot = package.new_imports[0].slot_offset
    kind = package.fixups[0].kind
    fixups = tuple(
        sorted(
            (*package.fixups, FixupEntry(slot, kind, TargetKind.OLD_RVA, 0x1000)),
            key=lambda f: f.offset,
        )
    )
    with pytest.raises(PackageFormatError, match="lies in a new import's slot"):
        new_imports.validate(replace(package, fixups=fixups))


def test_a_new_import_the_baseline_has_is_refused_with_the_baseline() -> None:
    package = resolved()
    (item,) = package.new_imports
    data = encode_package(replace(package, new_imports=(replace(item, name="host_log"),)))
    decode_package(data)  # nothing says otherwise without the baseline
    with pytest.raises(PackageFormatError, match=r"samplehost\.dll!host_log is one the baseline"):
        decode_package(data, sample_diff(*CASE).old.mapped)
