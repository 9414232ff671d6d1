"""Position-independent fingerprints: moves and rebasing change nothing, real edits do."""

from __future__ import annotations

import struct
from array import array
from pathlib import Path

import keystone
import pytest

from hpatch.arch import Machine, RefKind, arch_for
from hpatch.diff import fingerprint_image
from hpatch.image import BaseRelocationType, load_image

from ..conftest import BUILDS, SAMPLES
from ..image import corrupt

X64 = arch_for(Machine.AMD64)
ARM64 = arch_for(Machine.ARM64)
KS_X64 = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
KS_ARM64 = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)


def assemble(ks: keystone.Ks, source: str, rva: int) -> bytes:
    return bytes(ks.asm(source, rva)[0])


def normalise(arch, code: bytes, rva: int, relocated: tuple[int, ...] = (), base: int = 0):  # type: ignore[no-untyped-def]
    fields = array("I", sorted(relocated)).tobytes()
    return arch.normalise(code, rva, (rva, rva + len(code)), fields, base)


X64_BODY = (
    "push rbx; call {callee}; test eax, eax; je {inner}; lea rcx, [rip + {data_off}];"
    " mov eax, dword ptr [rcx + 8]; cmp dword ptr [rip + {flag_off}], 0; jne {tail}; pop rbx; ret"
)


def x64_function(at: int) -> bytes:
    # The same function placed at two addresses; callee, data and tail stay put.
    source = X64_BODY.format(
        callee=0x9000, inner=at + 0x1A, data_off=0x7000 - at, flag_off=0x7100 - at, tail=0x9100
    )
    return assemble(KS_X64, source, at)


def test_x64_moves_only_change_what_is_masked() -> None:
    first, second = x64_function(0x1000), x64_function(0x3456)
    assert first != second
    a, b = normalise(X64, first, 0x1000), normalise(X64, second, 0x3456)
    assert a.code == b.code
    assert [(r.kind, r.target_rva) for r in a.references] == [
        (r.kind, r.target_rva) for r in b.references
    ]
    kinds = [r.kind for r in a.references]
    assert kinds.count(RefKind.CALL) == 1 and kinds.count(RefKind.BRANCH) == 1
    assert kinds.count(RefKind.DATA) == 2  # the internal je keeps its bytes


def test_x64_real_edits_change_the_code() -> None:
    base = normalise(X64, assemble(KS_X64, "mov eax, 1; ret", 0x1000), 0x1000)
    edited = normalise(X64, assemble(KS_X64, "mov eax, 2; ret", 0x1000), 0x1000)
    assert base.code != edited.code


def test_x64_relocated_absolutes_and_image_base_offsets() -> None:
    code = assemble(
        KS_X64,
        "movabs rax, 0x180004000; lea rdx, [rip - 0x1011];"
        " mov ecx, dword ptr [rdx + rax*4 + 0x5000]; ret",
        0x1000,
    )
    result = normalise(X64, code, 0x1000, (0x1002,), 0x180000000)
    assert [(r.kind, r.target_rva) for r in result.references] == [
        (RefKind.ABSOLUTE, 0x4000),
        (RefKind.DATA, 0),
        (RefKind.IMAGE_RVA, 0x5000),
    ]
    assert result.code[2:10] == bytes(8)


def arm64_function(at: int) -> bytes:
    page_delta = (0x7000 & ~0xFFF) - (at & ~0xFFF)
    source = (
        f"stp x29, x30, [sp, #-16]!; bl #{0x9000 - at}; cbz w0, #{0x1C};"
        f" adrp x8, #{page_delta}; ldr w0, [x8, #0x10]; add x1, x8, #0x20;"
        f" ldr x2, #{0x9800 - at}; ldp x29, x30, [sp], #16; ret"
    )
    # Assembled at 0: keystone takes label operands as addresses from there.
    return assemble(KS_ARM64, source, 0)


def test_arm64_moves_only_change_what_is_masked() -> None:
    a = normalise(ARM64, arm64_function(0x1000), 0x1000)
    b = normalise(ARM64, arm64_function(0x3000), 0x3000)
    assert arm64_function(0x1000) != arm64_function(0x3000)
    assert a.code == b.code
    assert [(r.kind, r.target_rva) for r in a.references] == [
        (r.kind, r.target_rva) for r in b.references
    ]
    assert [(r.kind, r.target_rva) for r in a.references] == [
        (RefKind.CALL, 0x9000),
        (RefKind.ADDRESS, 0x7010),  # the ADRP means what its first completion reaches
        (RefKind.ADDRESS, 0x7010),
        (RefKind.ADDRESS, 0x7020),
        (RefKind.LITERAL, 0x9800),
    ]


def rebase(data: bytes, new_base: int) -> bytes:
    """A copy of a PE file as if linked at another base: relocated fields rewritten."""
    image = load_image(data)
    delta = new_base - image.image_base
    rebased = corrupt.set_u64(data, corrupt.optional_offset(data) + 24, new_base)
    for relocation in image.relocations:
        assert relocation.type == BaseRelocationType.DIR64
        offset = corrupt.rva_to_offset(data, relocation.rva)
        (value,) = struct.unpack_from("<Q", rebased, offset)
        rebased = corrupt.set_u64(rebased, offset, value + delta)
    return rebased


@pytest.mark.parametrize("build", BUILDS)
def test_a_rebased_copy_has_the_same_fingerprints(build: str) -> None:
    path: Path = SAMPLES / build / "v1" / "sample.stripped.dll"
    original = load_image(path)
    rebased = load_image(rebase(path.read_bytes(), 0x7FF6_1234_0000))
    assert rebased.image_base != original.image_base
    assert rebased.identity.mapped_sha256 != original.identity.mapped_sha256
    before, after = fingerprint_image(original), fingerprint_image(rebased)
    assert [f.rva for f in before] == [f.rva for f in after]
    for one, two in zip(before, after, strict=True):
        assert one.digest == two.digest, hex(one.rva)
        assert one.references == two.references, hex(one.rva)
