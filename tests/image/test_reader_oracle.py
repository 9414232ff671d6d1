"""hpatch's own PE parser against lief, an independent parser: on every sample, and on
the real-world and CVE corpora when they are present, the model holds what lief reads
from the same file (headers, sections, imports, exports, base relocations, COFF
symbols, load config, TLS, debug entries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpatch.image import BaseRelocationType, load_image
from hpatch.image.reader import PEImage, pe_text

from ..conftest import CVE_ABSENT, SAMPLES, corpus_binaries, cve_pairs

lief: Any = pytest.importorskip("lief")
lief.logging.disable()

SAMPLE_FILES = sorted(SAMPLES.glob("*/*/*.dll"))
CORPUS = sorted({path for _pair, _arch, path in corpus_binaries()})
CVE_FILES = sorted({path for pair in cve_pairs() for path in (pair.old, pair.new)})
_ABSOLUTE = int(BaseRelocationType.ABSOLUTE)


def _parse(path: Path) -> Any:
    config = lief.PE.ParserConfig()
    config.parse_signature = False
    config.parse_rsrc = False
    config.parse_exceptions = False
    binary = lief.PE.parse(path.read_bytes(), config)
    assert binary is not None, f"lief rejected {path}"
    return binary


def _field(config: Any, name: str) -> int:
    value = getattr(config, name, None)
    return int(value) if value is not None else 0


def check_against_lief(path: Path) -> None:
    image = load_image(path)
    binary = _parse(path)
    header, optional = binary.header, binary.optional_header
    assert image.identity.machine == int(header.machine.value)
    assert image.image_base == optional.imagebase
    assert image.size_of_image == optional.sizeof_image
    assert image.entry_rva == optional.addressof_entrypoint
    assert image.identity.time_date_stamp == header.time_date_stamps
    assert image.identity.checksum == optional.checksum

    assert [
        (s.name, s.rva, s.virtual_size, s.raw_offset, s.raw_size, s.characteristics)
        for s in image.sections
    ] == [
        (
            pe_text(s.name),
            s.virtual_address,
            s.virtual_size or s.sizeof_raw_data,
            s.pointerto_raw_data,
            s.sizeof_raw_data,
            s.characteristics,
        )
        for s in binary.sections
    ]

    assert [(i.dll, i.name, i.ordinal, i.iat_rva) for i in image.imports] == [
        (
            pe_text(library.name),
            None if entry.is_ordinal else pe_text(entry.name),
            entry.ordinal if entry.is_ordinal else None,
            entry.iat_address,
        )
        for library in binary.imports
        for entry in library.entries
    ]

    theirs_exports = []
    if binary.has_exports:
        for entry in binary.get_export().entries:
            forwarder = None
            if entry.is_forwarded:
                info = entry.forward_information
                forwarder = f"{pe_text(info.library)}.{pe_text(info.function)}"
            name = pe_text(entry.name) or None
            theirs_exports.append((entry.ordinal, name, entry.address, forwarder))
    assert [(e.ordinal, e.name, e.rva, e.forwarder) for e in image.exports] == sorted(
        theirs_exports, key=lambda e: e[0]
    )

    assert [(r.rva, int(r.type)) for r in image.relocations] == [
        (block.virtual_address + (entry.data & 0xFFF), entry.data >> 12)
        for block in binary.relocations
        for entry in block.entries
        if entry.data >> 12 != _ABSOLUTE
    ]

    _check_symbols(image, binary)
    _check_load_config(image, binary)
    _check_tls(image, binary)
    for entry in binary.debug:
        if entry.addressof_rawdata and entry.sizeof_data:
            start, end = entry.addressof_rawdata, entry.addressof_rawdata + entry.sizeof_data
            assert {start, end} <= set(image.structure_bounds), (start, end)
    directories = [(d.rva, d.size) for d in binary.data_directories]
    assert image.exception_directory == directories[3]


def _check_symbols(image: PEImage, binary: Any) -> None:
    function = int(lief.COFF.Symbol.COMPLEX_TYPE.FUNCTION.value)
    theirs = []
    for symbol in binary.symbols:
        index, name = symbol.section_idx, pe_text(symbol.name)
        if not 1 <= index <= len(image.sections) or not name or name.startswith("."):
            continue
        section = image.sections[index - 1]
        if symbol.value >= max(section.virtual_size, 1):
            continue
        theirs.append(
            (
                name,
                section.rva + symbol.value,
                index,
                int(symbol.storage_class.value),
                int(symbol.complex_type.value) == function,
            )
        )
    ours = [(s.name, s.rva, s.section_index, s.storage_class, s.is_function) for s in image.symbols]
    assert ours == sorted(theirs, key=lambda s: (s[1], s[0]))


def _check_load_config(image: PEImage, binary: Any) -> None:
    assert not binary.is_arm64ec and not binary.is_arm64x
    if not binary.has_configuration:
        assert image.load_config is None
        return
    theirs = binary.load_configuration
    ours = image.load_config
    assert ours is not None
    assert ours.size == _field(theirs, "size")
    assert ours.security_cookie_va == _field(theirs, "security_cookie")
    assert ours.guard_flags == _field(theirs, "guard_flags")
    assert ours.chpe_metadata_va == _field(theirs, "chpe_metadata_pointer")
    assert ours.dynamic_value_reloc_table_offset == _field(
        theirs, "dynamic_value_reloctable_offset"
    )
    assert ours.hotpatch_table_offset == _field(theirs, "hotpatch_table_offset")
    assert len(ours.guard_cf_function_rvas) == _field(theirs, "guard_cf_function_count")
    assert list(ours.guard_cf_function_rvas) == [f.rva for f in theirs.guard_cf_functions]


def _check_tls(image: PEImage, binary: Any) -> None:
    if not binary.has_tls:
        assert image.tls is None
        return
    assert image.tls is not None
    assert image.tls.template == bytes(binary.tls.data_template)
    assert image.tls.zero_fill == binary.tls.sizeof_zero_fill
    assert image.tls.callbacks == len(binary.tls.callbacks)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: str(p.relative_to(SAMPLES)))
def test_samples_read_as_lief_reads_them(path: Path) -> None:
    check_against_lief(path)


@pytest.mark.skipif(not CORPUS, reason="real-world corpus absent (run ../shared/corpus/fetch.sh)")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_reads_as_lief_reads_it(path: Path) -> None:
    check_against_lief(path)


@pytest.mark.skipif(not CVE_FILES, reason=CVE_ABSENT)
@pytest.mark.parametrize("path", CVE_FILES, ids=lambda p: "/".join(p.parts[-3:]))
def test_cve_corpus_reads_as_lief_reads_it(path: Path) -> None:
    check_against_lief(path)
