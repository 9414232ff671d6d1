"""A package bound at a real placement: its code does what the new build's code does,
with every address turned into the corresponding place of the old image or the region."""

from __future__ import annotations

import capstone
import pytest
from capstone import arm64_const, x86_const

from hpatch.arch import Machine
from hpatch.errors import FixupError, PackageFormatError
from hpatch.package import decode_package
from hpatch.package.bind import bind_region
from hpatch.package.model import Package

from ..diff.samples import sample_diff
from .packages import sample_package
from .test_format import CASES, case_id

_BRANCH_GROUPS = (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL)


def _decoder(machine: Machine) -> capstone.Cs:
    if machine == Machine.AMD64:
        decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    else:
        decoder = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    decoder.detail = True
    return decoder


def _addresses(insn: capstone.CsInsn, machine: Machine) -> list[int]:
    """Addresses an instruction names: branch targets, RIP-relative operands, ADR."""
    found = []
    if machine == Machine.AMD64:
        for operand in insn.operands:
            if operand.type == x86_const.X86_OP_MEM and operand.mem.base == x86_const.X86_REG_RIP:
                found.append(insn.address + insn.size + operand.mem.disp)
            elif operand.type == x86_const.X86_OP_IMM and any(
                insn.group(g) for g in _BRANCH_GROUPS
            ):
                found.append(operand.imm)
        return found
    if insn.id == arm64_const.ARM64_INS_ADR or any(insn.group(g) for g in _BRANCH_GROUPS):
        immediates = [o.imm for o in insn.operands if o.type == arm64_const.ARM64_OP_IMM]
        found += immediates[-1:]  # the target; TBZ's bit number comes before it
    return found


def _region_to_new(package: Package, offset: int) -> int | None:
    for function in package.functions:
        for part in function.parts:
            if part.offset <= offset < part.offset + part.size:
                return part.new_rva + offset - part.offset
    return None


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bound_code_matches_the_new_build_under_the_correspondence(
    case: tuple[str, str, str],
) -> None:
    diff = sample_diff(*case)
    package = decode_package(sample_package(*case), diff.old.mapped)
    image_va = diff.old.image_base
    region_va = image_va + ((diff.old.size_of_image + 0xFFFF) & ~0xFFFF)
    # where the process would bind the imports the package adds (their slots hold it)
    import_vas = [0x7FF0_0000_0000 + 0x10 * n for n in range(len(package.new_imports))]
    region = bind_region(package, image_va, region_va, import_vas)
    slots = {region_va + i.slot_offset: i for i in package.new_imports}
    for item, va in zip(package.new_imports, import_vas, strict=True):
        assert region[item.slot_offset : item.slot_offset + 8] == va.to_bytes(8, "little")
    new_imports = {i.iat_rva: i for i in diff.new.imports}
    decoder = _decoder(package.machine)
    fixed = {f.offset for f in package.fixups}
    checked = 0
    for function in package.functions:
        new_function = diff.new.function_at(function.new_rva)
        assert new_function is not None
        code_end = new_function.end_rva
        entry = function.parts[0]
        new_code = diff.new.read(entry.new_rva, code_end - entry.new_rva)
        ours = bytes(region[entry.offset : entry.offset + len(new_code)])
        pairs = zip(
            decoder.disasm(new_code, entry.new_rva),
            decoder.disasm(ours, region_va + entry.offset),
            strict=False,
        )
        for theirs, mine in pairs:
            assert (theirs.mnemonic, theirs.size) == (mine.mnemonic, mine.size)
            expected, actual = (
                _addresses(theirs, package.machine),
                _addresses(mine, package.machine),
            )
            assert len(expected) == len(actual)
            if not expected:
                # other operands are unchanged, unless a fixup rebinds them (ADRP pages
                # and the page offsets completing them)
                offset = mine.address - region_va
                assert theirs.bytes == mine.bytes or offset in fixed, (
                    f"{theirs.mnemonic} at 0x{theirs.address:x}"
                )
                continue
            for new_target, bound in zip(expected, actual, strict=True):
                checked += 1
                if bound in slots:  # the new build's IAT slot of the same import
                    imported = new_imports[new_target]
                    assert slots[bound].label == f"{imported.dll}!{imported.name}"
                elif region_va <= bound < region_va + package.region_size:
                    back = _region_to_new(package, bound - region_va)
                    if back is not None:
                        assert back == new_target
                    else:  # a copy of new read-only data
                        size = 8
                        assert region[
                            bound - region_va : bound - region_va + size
                        ] == diff.new.read(new_target, size)
                else:
                    assert diff.correspondence.same(bound - image_va, new_target), (
                        f"0x{theirs.address:x}: 0x{new_target:x} -> old 0x{bound - image_va:x}"
                    )
    assert checked > 0


def test_a_placement_out_of_reach_is_refused_naming_the_fixup() -> None:
    case = ("x64-clang", "v1", "v3")
    old = sample_diff(*case).old
    package = decode_package(sample_package(*case), old.mapped)
    image_va = old.image_base
    with pytest.raises(FixupError) as refused:
        bind_region(package, image_va, image_va + (1 << 33))
    assert refused.value.index >= 0
    assert f"fixup {refused.value.index}:" in str(refused.value)


def test_every_new_import_needs_its_address() -> None:
    case = ("x64-clang", "v3", "import-v3")
    old = sample_diff(*case).old
    package = decode_package(sample_package(*case), old.mapped)
    assert [i.label for i in package.new_imports] == ["samplehost.dll!host_log_count"]
    with pytest.raises(PackageFormatError, match="1 new imports to bind, 0 addresses"):
        bind_region(package, old.image_base, old.image_base + 0x10000)


def test_an_unresolved_package_is_not_bound() -> None:
    case = ("arm64-clang", "v1", "v2")
    package = decode_package(sample_package(*case))
    assert not package.resolved_region
    with pytest.raises(PackageFormatError, match="resolve it first"):
        bind_region(package, 0x180000000, 0x180010000)
