"""Tampering and trust through the applier: single-bit flips of signed packages (every
bit in the full run; here the header, the trailer and a sample of the body) and the
refusals an operator relies on, each with its message, at a rebased image (the
preferred base: tests/apply/test_refusals.py)."""

from __future__ import annotations

import re

import pytest

from hpatch.package.format import DIGEST_SIZE, HEADER, KEY_ID_SIZE, SIGNATURE_SIZE

from ..apply.support import REBASED
from .samples import BUILDS, signed_bytes
from .tamper import flip_bits, refusals, refuse

TRAILER = DIGEST_SIZE + KEY_ID_SIZE + SIGNATURE_SIZE


@pytest.mark.parametrize("build", ["x64-clang-hotpatch", "arm64-clang"])
def test_bit_flips_never_get_through_the_applier(build: str) -> None:
    size = len(signed_bytes(build, "v1", "v3", 3))
    body = range(8 * HEADER.size, 8 * (size - TRAILER), 23)
    bits = [*range(8 * HEADER.size), *body, *range(8 * (size - TRAILER), 8 * size)]
    tally = flip_bits(build, "v1", "v3", 3, bits)
    assert tally.tried == len(bits)
    assert tally.rejected == tally.tried and not tally.accepted and not tally.changed
    # Flips in the key id or the signature leave the digest whole: the applier's
    # signature check refuses those, the reader every other.
    assert tally.by_applier == 8 * (KEY_ID_SIZE + SIGNATURE_SIZE)


@pytest.mark.parametrize("build", BUILDS)
def test_untrusted_foreign_older_and_mismatched_packages_are_refused(build: str) -> None:
    for refusal in refusals(build):
        message, unchanged = refuse(build, refusal, REBASED)
        assert re.search(refusal.message, message), (refusal.name, message)
        assert unchanged, refusal.name
