"""A function's references, packed: the same sequence of ``Reference`` as the tuple the
normaliser gives, in less memory."""

from __future__ import annotations

import pytest

from hpatch.arch import Reference, RefKind
from hpatch.diff.references import ReferenceColumns, as_reference, reference_rows

from .samples import sample_diff

REFERENCES = (
    Reference(0x1000, RefKind.CALL, 0x2000),
    Reference(0x1008, RefKind.DATA, 0x7FF0),
    Reference(0x1010, RefKind.ABSOLUTE, -0x40),  # a relocated value below the image base
    Reference(0x1018, RefKind.ADDRESS, 0x1_2345_6789),
)


def test_packed_references_read_back_as_they_were() -> None:
    packed = ReferenceColumns.pack(REFERENCES)
    assert isinstance(packed, ReferenceColumns)
    assert len(packed) == 4
    assert tuple(packed) == REFERENCES
    assert packed == REFERENCES
    assert packed == ReferenceColumns.pack(list(REFERENCES))
    assert hash(packed) == hash(ReferenceColumns.pack(REFERENCES))
    assert [packed[i] for i in range(-4, 4)] == list(REFERENCES * 2)
    assert packed[1:3] == REFERENCES[1:3]
    assert REFERENCES[2] in packed
    assert all(type(r.kind) is RefKind for r in packed)
    with pytest.raises(IndexError):
        packed[4]


def test_rows_are_plain_tuples_of_the_same_values() -> None:
    packed = ReferenceColumns.pack(REFERENCES)
    rows = list(reference_rows(packed))
    assert rows == [tuple(r) for r in REFERENCES]
    assert [as_reference(row) for row in rows] == list(REFERENCES)
    # a plain tuple of references (a test's stand-in) is read as it is
    assert list(reference_rows(REFERENCES)) == list(REFERENCES)


def test_a_target_no_row_holds_keeps_the_tuple() -> None:
    far = (*REFERENCES, Reference(0x1020, RefKind.ABSOLUTE, 1 << 64))
    kept = ReferenceColumns.pack(far)
    assert kept == far
    assert not isinstance(kept, ReferenceColumns)
    assert all(type(r) is Reference and type(r.kind) is RefKind for r in kept)


def test_no_references_pack_to_nothing() -> None:
    packed = ReferenceColumns.pack(())
    assert len(packed) == 0 and list(packed) == [] and packed == ()


def test_a_diff_keeps_its_references_packed() -> None:
    diff = sample_diff("x64-clang", "v1", "v2")
    fingerprints = diff.correspondence.new.fingerprints.values()
    assert all(isinstance(f.references, ReferenceColumns) for f in fingerprints)
    assert any(len(f.references) for f in fingerprints)
