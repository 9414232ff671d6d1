"""The writable-data layout on hand-made sections: a global inserted between two
anchors is found where the bytes around it say, alignment padding is no global, and a
gap that admits no insertion, or two equally good ones, gives no layout."""

from __future__ import annotations

from dataclasses import dataclass

from hpatch.diff.data_layout import SectionAligner
from hpatch.image.model import Section, SectionFlags

WRITABLE = int(SectionFlags.MEM_READ | SectionFlags.MEM_WRITE | SectionFlags.CNT_INITIALIZED_DATA)
BASE = 0x6000


@dataclass
class FakeSide:
    labels: list[int]


def section(data: bytes) -> Section:
    return Section(0, ".data", BASE, len(data), 0, len(data), WRITABLE, data)


def align(old: bytes, new: bytes, old_labels: list[int], new_labels: list[int], anchors):  # type: ignore[no-untyped-def]
    old_section, new_section = section(old), section(new)

    def same_bytes(old_rva: int, new_rva: int, size: int) -> bool:
        return (
            old[old_rva - BASE : old_rva - BASE + size]
            == new[new_rva - BASE : new_rva - BASE + size]
        )

    aligner = SectionAligner(
        FakeSide(sorted(old_labels)),  # type: ignore[arg-type]
        FakeSide(sorted(new_labels)),  # type: ignore[arg-type]
        old_section,
        new_section,
        same_bytes,
    )
    return aligner.align(anchors)


A, B, C = b"AAAAAAAA", b"BBBBBBBB", b"CCCCCCCC"


def test_a_global_inserted_between_two_anchors() -> None:
    new_global = b"\x40\0\0\0\0\0\0\0"
    layout = align(
        A + B + C,
        A + B + new_global + C,
        [BASE, BASE + 8, BASE + 16],
        [BASE, BASE + 8, BASE + 16, BASE + 24],
        [(BASE, BASE), (BASE + 16, BASE + 24)],
    )
    assert layout is not None
    assert layout.inserted == ((BASE + 16, BASE + 24),)
    assert layout.old_of(BASE + 8) == BASE + 8 and layout.old_of(BASE + 24) == BASE + 16
    assert layout.old_of(BASE + 16) is None and layout.new_of(BASE + 16) == BASE + 24


def test_the_insertion_is_where_the_old_bytes_resume() -> None:
    # two new labels in the gap; only inserting at the second keeps B's bytes
    layout = align(
        A + B + C,
        A + B + b"NEWNEWNE" + C,
        [BASE, BASE + 8, BASE + 16],
        [BASE, BASE + 8, BASE + 16, BASE + 24],
        [(BASE, BASE), (BASE + 16, BASE + 24)],
    )
    assert layout is not None and layout.inserted == ((BASE + 16, BASE + 24),)


def test_padding_is_no_global() -> None:
    # the gap grows by zero bytes no label names, right before the next anchor
    layout = align(
        A + B + C,
        A + B + bytes(8) + C,
        [BASE, BASE + 8, BASE + 16],
        [BASE, BASE + 8, BASE + 24],
        [(BASE, BASE), (BASE + 16, BASE + 24)],
    )
    assert layout is not None and layout.inserted == ()
    assert layout.old_of(BASE + 24) == BASE + 16 and layout.old_of(BASE + 16) is None


def test_changed_bytes_around_the_insertion_give_no_layout() -> None:
    assert (
        align(
            A + B + C,
            A + b"XXXXXXXX" + b"NEWNEWNE" + C,
            [BASE, BASE + 8, BASE + 16],
            [BASE, BASE + 8, BASE + 16, BASE + 24],
            [(BASE, BASE), (BASE + 16, BASE + 24)],
        )
        is None
    )


def test_two_equally_good_insertions_give_no_layout() -> None:
    # all zero (.bss): inserting at either new label explains the bytes alike
    zero = bytes(8)
    assert (
        align(
            A + zero + zero + C,
            A + zero + zero + zero + C,
            [BASE, BASE + 24],
            [BASE, BASE + 8, BASE + 16, BASE + 32],
            [(BASE, BASE), (BASE + 24, BASE + 32)],
        )
        is None
    )


def test_anchors_out_of_order_give_no_layout() -> None:
    assert (
        align(
            A + B + C,
            A + C + B,
            [BASE, BASE + 8, BASE + 16],
            [BASE, BASE + 8, BASE + 16],
            [(BASE + 8, BASE + 16), (BASE + 16, BASE + 8)],
        )
        is None
    )
