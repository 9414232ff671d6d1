"""Process: calls into the real sample DLLs on every build, at the preferred base and
rebased; the bugs of samples/bugs.json fault on v1 and are fixed later; host functions;
scratch buffers; describe."""

from __future__ import annotations

import json
import zlib
from functools import cache
from pathlib import Path

import capstone
import pytest
from keystone import KS_ARCH_ARM64, KS_ARCH_X86, KS_MODE_64, KS_MODE_LITTLE_ENDIAN, Ks

from hpatch.arch import Machine
from hpatch.emu import Process, Protection, ThreadState
from hpatch.emu.cpu import Cpu, HostCall
from hpatch.emu.memory import PAGE_SIZE
from hpatch.errors import EmulationFault, HPatchError
from hpatch.image import load_image

from ..conftest import REPO, SAMPLES, read_truth

BUILDS = ("x64-gcc", "x64-clang", "x64-clang-hotpatch", "arm64-clang")
REBASED = 0x7FF6_0000_0000
BUGS = json.loads((REPO / "samples" / "bugs.json").read_text())["bugs"]
M32 = 0xFFFF_FFFF


# helpers shared by the emu tests ----------------------------------------------------------


def machine(build: str) -> Machine:
    return Machine.ARM64 if build.startswith("arm64") else Machine.AMD64


def sample(build: str, version: str = "v3", name: str = "sample.dll") -> Path:
    return SAMPLES / build / version / name


def new_process(
    build: str,
    version: str = "v3",
    *,
    name: str = "sample.dll",
    base: int | None = None,
    hosts: dict[str | int, HostCall] | None = None,
) -> Process:
    """A process with ``name`` of ``build``/``version`` loaded (samplehost.dll beside it),
    after registering ``hosts`` as samplehost.dll functions."""
    process = Process(machine(build))
    for symbol, call in (hosts or {}).items():
        process.host("samplehost.dll", symbol, call)
    process.load_image(sample(build, version, name), base=base)
    return process


def i32(value: int) -> int:
    value &= M32
    return value - (1 << 32) if value & 0x8000_0000 else value


def cstring(process: Process, va: int, limit: int = 256) -> bytes:
    data = b""
    while len(data) < limit:
        byte = process.space.read(va + len(data), 1)
        if byte == b"\0":
            return data
        data += byte
    raise AssertionError(f"no NUL within {limit} bytes at 0x{va:x}")


def assemble(arch: Machine, source: str, va: int) -> bytes:
    if arch == Machine.AMD64:
        engine = Ks(KS_ARCH_X86, KS_MODE_64)
    else:
        engine = Ks(KS_ARCH_ARM64, KS_MODE_LITTLE_ENDIAN)
    code, _ = engine.asm(source, va)
    return bytes(code)


def code_page(process: Process, source: str, name: str = "test code") -> int:
    """Assemble ``source`` into a fresh page written through the space, then made RX."""
    region = process.space.allocate(PAGE_SIZE, Protection.RW, name)
    process.space.write(region.va, assemble(process.machine, source, region.va))
    process.space.protect(region.va, PAGE_SIZE, Protection.RX)
    return region.va


def argument_values(process: Process, spec: list) -> tuple[list[int], dict[int, tuple[int, int]]]:
    """bugs.json arguments made real: ``bytes:HEX`` and ``buffer:N`` become fresh
    buffers ending at a guard page. Returns the values and {argument index: (va, size)}."""
    values, buffers = [], {}
    for index, argument in enumerate(spec):
        if isinstance(argument, str) and argument.startswith("bytes:"):
            data = bytes.fromhex(argument[6:])
            buffers[index] = (process.buffer(data), len(data))
            values.append(buffers[index][0])
        elif isinstance(argument, str) and argument.startswith("buffer:"):
            size = int(argument[7:])
            buffers[index] = (process.buffer(size), size)
            values.append(buffers[index][0])
        else:
            values.append(argument)
    return values, buffers


# Python oracles ---------------------------------------------------------------------------


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "little") + value


def tlv_summary(data: bytes) -> tuple[int, int, int, int, int]:
    """(records, containers, leaf_bytes, crc, max_depth) as hp_tlv_parse counts them."""
    counts = {"records": 0, "containers": 0, "leaf_bytes": 0, "crc": 0, "max_depth": 0}

    def walk(body: bytes, depth: int) -> None:
        offset = 0
        while offset < len(body):
            kind, size = body[offset], int.from_bytes(body[offset + 1 : offset + 3], "little")
            value = body[offset + 3 : offset + 3 + size]
            offset += 3 + size
            if kind & 0x80:
                counts["containers"] += 1
                counts["max_depth"] = max(counts["max_depth"], depth + 1)
                walk(value, depth + 1)
            else:
                counts["records"] += 1
                counts["leaf_bytes"] += size
                counts["crc"] = zlib.crc32(value, counts["crc"])

    walk(data, 0)
    return tuple(counts.values())  # type: ignore[return-value]


def json_escape(data: bytes) -> bytes:
    short = {8: b"b", 9: b"t", 10: b"n", 12: b"f", 13: b"r"}
    out = b""
    for byte in data:
        if byte in b'"\\':
            out += b"\\" + bytes([byte])
        elif byte < 0x20:
            out += b"\\" + short[byte] if byte in short else b"\\u00%02x" % byte
        else:
            out += bytes([byte])
    return out


def url_encode(data: bytes) -> bytes:
    unreserved = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~"
    out = b""
    for byte in data:
        if byte in unreserved:
            out += bytes([byte])
        elif byte == 0x20:
            out += b"+"
        else:
            # hp_esc.c clears bit 5 of each hex digit: letters become upper case, and
            # digits 0x30-0x39 become 0x10-0x19. The oracle says what the C says.
            out += b"%" + bytes(ord(d) & ~0x20 for d in f"{byte:02x}")
    return out


DATA = bytes((i * 37 + 11) & 0xFF for i in range(1000))
LONG = bytes((i * 7 + i // 251) & 0xFF for i in range(12_000))  # > one Adler-32 block
BLOB = (
    tlv(1, b"abc")
    + tlv(0x81, tlv(2, b"de") + tlv(0x82, tlv(3, (7).to_bytes(4, "little"))))
    + tlv(4, (0x1234).to_bytes(2, "little"))
)
TYPE4_AT = len(tlv(1, b"abc")) + len(tlv(0x81, tlv(2, b"de") + tlv(0x82, tlv(3, bytes(4)))))
TYPE3_AT = 3 + 3 + 3 + 2 + 3 + 3  # inside both containers
FSM_INPUT = b'add 1 2 0x10 -4\neval "6*7"\nping\n'
PONG = 0x474E4F50
JSON_SOURCE = b'a"b\\c\n\x01\x7f\tz'
URL_SOURCE = b"a b&c~/\xff-Z9"

#: What each call of ``exercise`` must give on v3 of every build (the rest of its results
#: are compared between builds).
EXPECTED = {
    "crc32 check": 0xCBF43926,
    "crc32": zlib.crc32(DATA),
    "crc32 update": zlib.crc32(DATA),
    "crc32 update null": 0x1234,
    "adler32": zlib.adler32(b"Wikipedia"),
    "adler32 long": zlib.adler32(LONG),
    "tlv encode": (8, tlv(5, b"hello")),
    "tlv encode range": -2,
    "tlv encode no space": -3,
    "tlv parse": (4, tlv_summary(BLOB)),
    "tlv parse truncated": -4,
    "tlv find": (TYPE4_AT, 4, 2, TYPE4_AT + 3),
    "tlv find missing": -2,
    "tlv find path": (0, 3, 4, TYPE3_AT + 3),
    "tlv find path through a leaf": -8,
    "tlv find path too deep": -6,
    "tlv copy string": (3, b"abc\0"),
    "tlv copy string missing": -2,
    "tlv get u32": (0, 0x1234),
    "tlv get u32 odd size": -2,
    "array unpack": (3, b"abcdef"),
    "array unpack zero size": -1,
    "array unpack short": -4,
    "pkt build": (
        12 + len(BLOB),
        b"HP\x01\x01"
        + len(BLOB).to_bytes(2, "little")
        + bytes(2)
        + zlib.crc32(BLOB).to_bytes(4, "little")
        + BLOB,
    ),
    "pkt check": len(BLOB),
    "pkt check crc": -10,
    "pkt check magic": -11,
    "pkt check truncated": -4,
    "pkt process copy": (4, tlv_summary(BLOB)),
    "pkt process": (4, tlv_summary(BLOB)),
    "json escape": (len(json_escape(JSON_SOURCE)), json_escape(JSON_SOURCE) + b"\0"),
    "json escape no space": -3,
    "json quote": b'"' + json_escape(JSON_SOURCE) + b'"',
    "url encode": (len(url_encode(URL_SOURCE)), url_encode(URL_SOURCE) + b"\0"),
    "url decode": (6, b"a b&c~\0"),
    "url decode bad escape": -7,
    "url decode truncated": -7,
    "hex encode": (6, b"00ff41\0"),
    "hex encode no space": -3,
    "ring init": 0,
    "ring init not a power of two": -1,
    "ring push": [1, 2, 3, 4, 5, 6, 7, 8, -3, -3],
    "ring pop": 1,
    "ring write": 1,
    "ring read": (8, b"\x02\x03\x04\x05\x06\x07\x08a"),
    "ring pop empty": -8,
    "ring default": (True, True, 256),
    "fsm init": 0,
    "fsm feed": (3, 3, 0, PONG),
    "cmd register": [7, 8, 9, -3],
    "fsm feed registered": (4, 0x0100_0003),
    "fsm feed unknown": (4, 1, -7),
    "vm run": (5, 28),
    "expr eval": (16, -1),
    "expr eval syntax": -7,
    "zero": 0,
    "identity": (-5, 0x1234_5678),
    "version": 0x0100_0003,
    "error strings": (b"ok", b"no space in output buffer", b"unknown error", b"unknown error"),
    "set limit depth": 32,
    "get limit depth": 32,
    "set limit zero depth": -1,
    "set limit records": 5,
    "get limit records": 5,
    "set limit flags": 0xFF,
    "set limit unknown": -2,
    "get limit unknown": 0,
    "tlv parse too many records": -2,
}


def exercise(process: Process) -> dict[str, object]:
    """Call every export of sample.dll (all take integers and pointers) with fixed
    inputs; the results, with pointers turned into what they point at."""
    call = process.call
    space = process.space
    buf = process.buffer
    module = process.main_module
    assert module is not None
    results: dict[str, object] = {}

    # checksums
    check, data, long = buf(b"123456789"), buf(DATA), buf(LONG)
    results["crc32 check"] = call("hp_crc32", check, 9) & M32
    results["crc32"] = call("hp_crc32", data, len(DATA)) & M32
    first = call("hp_crc32", data, 300) & M32
    results["crc32 update"] = call("hp_crc32_update", first, data + 300, 700) & M32
    results["crc32 update null"] = call("hp_crc32_update", 0x1234, 0, 5) & M32
    results["adler32"] = call("hp_adler32", buf(b"Wikipedia"), 9) & M32
    results["adler32 long"] = call("hp_adler32", long, len(LONG)) & M32

    # TLV records
    out, hello = buf(16), buf(b"hello")
    results["tlv encode"] = (i32(call("hp_tlv_encode", out, 16, 5, hello, 5)), space.read(out, 8))
    results["tlv encode range"] = i32(call("hp_tlv_encode", out, 16, 0x100, hello, 5))
    results["tlv encode no space"] = i32(call("hp_tlv_encode", out, 7, 5, hello, 5))
    blob, summary = buf(BLOB), buf(20)
    parsed = i32(call("hp_tlv_parse", blob, len(BLOB), summary))
    fields = space.read(summary, 20)
    results["tlv parse"] = (
        parsed,
        tuple(int.from_bytes(fields[i : i + 4], "little") for i in range(0, 20, 4)),
    )
    results["tlv parse truncated"] = i32(call("hp_tlv_parse", blob, len(BLOB) - 1, summary))
    record = buf(16)
    found = i32(call("hp_tlv_find", blob, len(BLOB), 4, record))
    raw = space.read(record, 16)
    value_at = int.from_bytes(raw[8:16], "little") - blob
    results["tlv find"] = (found, raw[0], int.from_bytes(raw[2:4], "little"), value_at)
    results["tlv find missing"] = i32(call("hp_tlv_find", blob, len(BLOB), 9, record))
    path = buf(bytes([0x81, 0x82, 3]))
    found = i32(call("hp_tlv_find_path", blob, len(BLOB), path, 3, record))
    raw = space.read(record, 16)
    value_at = int.from_bytes(raw[8:16], "little") - blob
    results["tlv find path"] = (found, raw[0], int.from_bytes(raw[2:4], "little"), value_at)
    leaf_path = buf(bytes([1, 2]))
    results["tlv find path through a leaf"] = i32(
        call("hp_tlv_find_path", blob, len(BLOB), leaf_path, 2, record)
    )
    deep = buf(bytes([0x81] * 9))
    results["tlv find path too deep"] = i32(
        call("hp_tlv_find_path", blob, len(BLOB), deep, 9, record)
    )
    text = buf(8)
    copied = i32(call("hp_tlv_copy_string", blob, len(BLOB), 1, text, 8))
    results["tlv copy string"] = (copied, space.read(text, 4))
    results["tlv copy string missing"] = i32(
        call("hp_tlv_copy_string", blob, len(BLOB), 9, text, 8)
    )
    word = buf(4)
    got = i32(call("hp_tlv_get_u32", blob, len(BLOB), 4, word))
    results["tlv get u32"] = (got, int.from_bytes(space.read(word, 4), "little"))
    results["tlv get u32 odd size"] = i32(call("hp_tlv_get_u32", blob, len(BLOB), 1, word))

    # packets and arrays
    array, unpacked = buf((3).to_bytes(4, "little") + (2).to_bytes(4, "little") + b"abcdef"), buf(6)
    results["array unpack"] = (
        i32(call("hp_array_unpack", array, 14, unpacked, 6)),
        space.read(unpacked, 6),
    )
    zero_size = buf(bytes(8))
    results["array unpack zero size"] = i32(call("hp_array_unpack", zero_size, 8, unpacked, 6))
    results["array unpack short"] = i32(call("hp_array_unpack", array, 7, unpacked, 6))
    packet = buf(64)
    built = i32(call("hp_pkt_build", packet, 64, 1, blob, len(BLOB)))
    results["pkt build"] = (built, space.read(packet, 12 + len(BLOB)))
    results["pkt check"] = i32(call("hp_pkt_check", packet, 12 + len(BLOB)))
    results["pkt check truncated"] = i32(call("hp_pkt_check", packet, 11 + len(BLOB)))
    summary2 = buf(20)
    processed = i32(call("hp_pkt_process", packet, 12 + len(BLOB), summary2))
    fields = space.read(summary2, 20)
    results["pkt process copy"] = (
        processed,
        tuple(int.from_bytes(fields[i : i + 4], "little") for i in range(0, 20, 4)),
    )
    plain = bytearray(space.read(packet, 12 + len(BLOB)))
    plain[3] = 0  # parse in place, no host_alloc copy
    in_place = buf(bytes(plain))
    processed = i32(call("hp_pkt_process", in_place, len(plain), summary2))
    fields = space.read(summary2, 20)
    results["pkt process"] = (
        processed,
        tuple(int.from_bytes(fields[i : i + 4], "little") for i in range(0, 20, 4)),
    )
    plain[12] ^= 1
    results["pkt check crc"] = i32(call("hp_pkt_check", buf(bytes(plain)), len(plain)))
    plain[0] = ord("X")
    results["pkt check magic"] = i32(call("hp_pkt_check", buf(bytes(plain)), len(plain)))

    # escaping
    source = buf(JSON_SOURCE)
    size = len(json_escape(JSON_SOURCE)) + 1
    escaped = buf(size)
    written = i32(call("hp_json_escape", source, len(JSON_SOURCE), escaped, size))
    results["json escape"] = (written, space.read(escaped, size))
    results["json escape no space"] = i32(
        call("hp_json_escape", source, len(JSON_SOURCE), escaped, size - 1)
    )
    quoted = call("hp_json_quote", buf(JSON_SOURCE + b"\0"))
    results["json quote"] = cstring(process, quoted)
    call("hp_release", quoted)
    call("hp_release", 0)
    url = buf(URL_SOURCE)
    size = len(url_encode(URL_SOURCE)) + 1
    encoded = buf(size)
    written = i32(call("hp_url_encode", url, len(URL_SOURCE), encoded, size))
    results["url encode"] = (written, space.read(encoded, size))
    decoded = buf(16)
    written = i32(call("hp_url_decode", buf(b"a+b%26c%7e"), 10, decoded, 16))
    results["url decode"] = (written, space.read(decoded, 7))
    results["url decode bad escape"] = i32(call("hp_url_decode", buf(b"a%zz"), 4, decoded, 16))
    results["url decode truncated"] = i32(call("hp_url_decode", buf(b"ab%2"), 4, decoded, 16))
    hexed = buf(7)
    written = i32(call("hp_hex_encode", buf(b"\x00\xffA"), 3, hexed, 7))
    results["hex encode"] = (written, space.read(hexed, 7))
    results["hex encode no space"] = i32(call("hp_hex_encode", buf(b"\x00\xffA"), 3, hexed, 6))

    # ring buffer
    ring, storage = buf(24), buf(8)
    results["ring init"] = i32(call("hp_ring_init", ring, storage, 8))
    results["ring init not a power of two"] = i32(call("hp_ring_init", ring, storage, 6))
    results["ring push"] = [i32(call("hp_ring_push", ring, value)) for value in range(1, 11)]
    results["ring pop"] = i32(call("hp_ring_pop", ring))
    results["ring write"] = i32(call("hp_ring_write", ring, buf(b"abcdef"), 6))
    drained = buf(8)
    results["ring read"] = (i32(call("hp_ring_read", ring, drained, 8)), space.read(drained, 8))
    results["ring pop empty"] = i32(call("hp_ring_pop", ring))
    default = call("hp_ring_default")
    results["ring default"] = (
        module.contains(default) and bool(space.protection_at(default) & Protection.W),
        module.contains(space.read_u64(default)),  # its storage, also in the image's .bss
        int.from_bytes(space.read(default + 8, 4), "little"),
    )

    # command protocol
    fsm = buf(116)
    results["fsm init"] = i32(call("hp_fsm_init", fsm))
    fed = i32(call("hp_fsm_feed", fsm, buf(FSM_INPUT), len(FSM_INPUT)))
    state = space.read(fsm, 116)
    results["fsm feed"] = (
        fed,
        int.from_bytes(state[4:8], "little"),
        int.from_bytes(state[8:12], "little"),
        int.from_bytes(state[112:116], "little"),
    )
    version = process.function_va("hp_version")
    results["cmd register"] = [
        i32(call("hp_cmd_register", buf(name + b"\0"), version))
        for name in (b"ver", b"aa", b"bb", b"cc")
    ]
    fed = i32(call("hp_fsm_feed", fsm, buf(b"ver\n"), 4))
    results["fsm feed registered"] = (fed, int.from_bytes(space.read(fsm + 112, 4), "little"))
    fed = i32(call("hp_fsm_feed", fsm, buf(b"nope 1\n"), 7))
    state = space.read(fsm, 116)
    results["fsm feed unknown"] = (
        fed,
        int.from_bytes(state[8:12], "little"),
        i32(int.from_bytes(state[112:116], "little")),
    )

    # VM and expressions
    vm_result = buf(4)
    ran = i32(call("hp_vm_run", buf(bytes([0, 5, 4, 3, 0, 3, 1])), 7, vm_result))
    results["vm run"] = (ran, i32(int.from_bytes(space.read(vm_result, 4), "little")))
    value = buf(8)
    evaluated = i32(call("hp_expr_eval", buf(b"1+2*(3-4) | 0x10"), 16, value))
    results["expr eval"] = (evaluated, int.from_bytes(space.read(value, 8), "little", signed=True))
    results["expr eval syntax"] = i32(call("hp_expr_eval", buf(b"(1+"), 3, value))

    # misc
    call("hp_nop")
    results["zero"] = i32(call("hp_zero"))
    results["identity"] = (i32(call("hp_identity", -5)), i32(call("hp_identity", 0x1234_5678)))
    results["version"] = call("hp_version") & M32
    results["error strings"] = tuple(
        cstring(process, call("hp_error_string", code)) for code in (0, -3, 1, -12)
    )
    results["set limit depth"] = i32(call("hp_set_limit", 0, 100))
    results["get limit depth"] = i32(call("hp_get_limit", 0))
    results["set limit zero depth"] = i32(call("hp_set_limit", 0, 0))
    results["set limit records"] = i32(call("hp_set_limit", 1, 5))
    results["get limit records"] = i32(call("hp_get_limit", 1))
    results["set limit flags"] = i32(call("hp_set_limit", 2, 0x1FF))
    results["set limit unknown"] = i32(call("hp_set_limit", 9, 1))
    results["get limit unknown"] = i32(call("hp_get_limit", 9))
    many = buf(tlv(1, b"") * 6)
    results["tlv parse too many records"] = i32(call("hp_tlv_parse", many, 18, summary))
    stats = buf(24)
    results["get stats"] = (i32(call("hp_get_stats", stats)), space.read(stats, 24))
    now = i32(call("hp_reset"))
    call("hp_get_stats", stats)
    results["reset"] = (now, space.read(stats, 24))
    host = process.module("samplehost.dll")
    results["host log count"] = call("host_log_count", module=host) & M32
    return results


@cache
def exercised(build: str, base: int | None) -> dict[str, object]:
    return exercise(new_process(build, base=base))


# calls ------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [None, REBASED], ids=["preferred", "rebased"])
@pytest.mark.parametrize("build", BUILDS)
def test_every_export_gives_the_expected_results(build: str, base: int | None) -> None:
    results = exercised(build, base)
    assert {key: results[key] for key in EXPECTED} == EXPECTED
    now, stats = results["reset"]
    assert stats == (1).to_bytes(4, "little") + bytes(16) + (now & M32).to_bytes(4, "little")


@pytest.mark.parametrize("base", [None, REBASED], ids=["preferred", "rebased"])
@pytest.mark.parametrize("build", BUILDS)
def test_every_build_gives_the_same_results(build: str, base: int | None) -> None:
    assert exercised(build, base) == exercised("x64-clang", None)


@pytest.mark.parametrize("build", BUILDS)
def test_rebased_image_runs_where_it_was_put(build: str) -> None:
    process = new_process(build, base=REBASED)
    module = process.main_module
    assert module is not None and module.base == REBASED and module.rebased
    assert process.function_va("hp_crc32") - REBASED == module.export_rva("hp_crc32")
    # hp_vm_run dispatches through a table of absolute code pointers in .rdata.
    result = process.buffer(4)
    assert process.call("hp_vm_run", process.buffer(bytes([0, 5, 4, 3, 0, 3, 1])), 7, result) == 5


def test_versions_report_themselves() -> None:
    for version in ("v1", "v2", "v3", "v4"):
        process = new_process("x64-clang", version, name="sample.stripped.dll")
        assert process.call("hp_version") == 0x0100_0000 | int(version[1])


@pytest.mark.parametrize("build", BUILDS)
def test_more_arguments_than_registers_reach_emulated_code(build: str) -> None:
    process = new_process(build)
    arch = process.machine
    if arch == Machine.AMD64:
        # Windows x64: four in registers, the rest above the return address and the
        # 32-byte home space.
        source = (
            "mov rax, rcx; lea rax, [rax + rdx*2]; lea rax, [rax + r8*4]; lea rax, [rax + r9*8];"
            "mov r10, [rsp + 40]; shl r10, 4; add rax, r10;"
            "mov r10, [rsp + 48]; shl r10, 5; add rax, r10; ret"
        )
        count = 6
    else:
        # ARM64: eight in x0-x7, the rest at [sp].
        source = (
            "add x0, x0, x1, lsl #1; add x0, x0, x2, lsl #2; add x0, x0, x3, lsl #3;"
            "add x0, x0, x4, lsl #4; add x0, x0, x5, lsl #5; add x0, x0, x6, lsl #6;"
            "add x0, x0, x7, lsl #7; ldr x9, [sp]; add x0, x0, x9, lsl #8;"
            "ldr x9, [sp, #8]; add x0, x0, x9, lsl #9; ret"
        )
        count = 10
    function = code_page(process, source)
    arguments = [1] * count
    assert process.call(function, *arguments) == (1 << count) - 1
    assert process.call(function, *range(1, count + 1)) == sum((i + 1) << i for i in range(count))
    # A real export with five arguments (the fifth on the x64 stack).
    blob, text = process.buffer(BLOB), process.buffer(4)
    assert process.call("hp_tlv_copy_string", blob, len(BLOB), 1, text, 4) == 3
    assert process.space.read(text, 4) == b"abc\0"


@pytest.mark.parametrize("build", BUILDS)
def test_static_functions_are_called_through_the_symbol_table(build: str) -> None:
    process = new_process(build)
    check = process.buffer(b"123456789")
    assert process.call("crc_block", M32, check, 9) ^ M32 == 0xCBF43926
    stripped = new_process(build, name="sample.stripped.dll")
    with pytest.raises(HPatchError, match="no function named crc_block"):
        stripped.call("crc_block", M32, check, 9)


def test_a_function_only_gcc_keeps() -> None:
    process = new_process("x64-gcc")  # lld's /opt:ref drops the unused hp_fnv1a
    value = 2166136261
    for byte in DATA[:100]:
        value = ((value ^ byte) * 16777619) & M32
    assert process.call("hp_fnv1a", process.buffer(DATA[:100]), 100) & M32 == value


def test_calls_by_rva_va_and_bad_names() -> None:
    process = new_process("x64-clang")
    module = process.main_module
    assert module is not None
    rva = module.export_rva("hp_version")
    assert process.call(rva) == process.call(module.base + rva) == 0x0100_0003
    with pytest.raises(HPatchError, match="no function named hp_missing"):
        process.call("hp_missing")
    with pytest.raises(HPatchError, match="outside"):
        process.function_va(module.image.size_of_image)
    empty = Process(Machine.AMD64)
    with pytest.raises(HPatchError, match="no image is loaded"):
        empty.call("hp_version")


# the bugs ---------------------------------------------------------------------------------

#: Where each bug's first out-of-bounds access happens: the named function itself, or
#: (B, D) the helper it calls for the copy loop and the CRC over the overlong leaf.
FAULTING_FUNCTION = {
    "A": "hp_json_escape",
    "B": "memcpy",
    "C": "hp_tlv_copy_string",
    "D": "crc_block",
}
#: Which argument's buffer the first out-of-bounds access runs off, and how.
OVERRUN = {"A": (2, "write"), "B": (0, "read"), "C": (3, "write"), "D": (0, "read")}


def _effective_address(arch: Machine, code: bytes, pc: int, registers: dict[str, int]) -> int:
    """Where the memory operand of the instruction at ``pc`` points (capstone decodes)."""
    if arch == Machine.AMD64:
        engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        memory_type = capstone.x86.X86_OP_MEM
    else:
        engine = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        memory_type = capstone.arm64.ARM64_OP_MEM
    engine.detail = True
    instruction = next(engine.disasm(code, pc))
    operand = next(op for op in instruction.operands if op.type == memory_type)

    def value(register: int) -> int:
        return registers[instruction.reg_name(register)] if register else 0

    index = value(operand.mem.index)
    if arch == Machine.AMD64:
        index *= operand.mem.scale
    elif operand.shift.type:
        index <<= operand.shift.value
    return (value(operand.mem.base) + index + operand.mem.disp) & ((1 << 64) - 1)


@pytest.mark.parametrize("name", ["sample.dll", "sample.stripped.dll"])
@pytest.mark.parametrize("bug", BUGS, ids=[bug["id"] for bug in BUGS])
@pytest.mark.parametrize("build", BUILDS)
def test_bug_faults_at_a_guard_page_in_its_function(build: str, bug: dict, name: str) -> None:
    process = new_process(build, "v1", name=name)
    arguments, buffers = argument_values(process, bug["call"])
    with pytest.raises(EmulationFault) as caught:
        process.call(bug["function"], *arguments)
    fault = caught.value
    overrun, access = OVERRUN[bug["id"]]
    start, size = buffers[overrun]
    assert fault.access == access
    assert fault.address == start + size  # the first byte past the buffer
    region = process.space.region_at(start)
    assert region is not None and fault.address in region.guards
    assert process.space.protection_at(fault.address) == Protection.NONE

    module = process.main_module
    assert module is not None
    truth = read_truth(sample(build, "v1", "sample.funcs.tsv"))
    function = FAULTING_FUNCTION[bug["id"]]
    extents = [(row.rva, row.rva + row.size) for row in truth if function in (row.name, row.parent)]
    assert any(begin <= fault.pc - module.base < end for begin, end in extents)
    if name == "sample.dll":
        assert process.describe(fault.pc).startswith(f"sample.dll!{function}+0x")
    assert f"0x{fault.pc:x}" in str(fault)

    # The pc is exact: the instruction there addresses the faulting byte.
    thread = process.new_thread()
    arguments, buffers = argument_values(process, bug["call"])
    process.cpu.start(thread, process.function_va(bug["function"]), arguments)
    assert process.cpu.run(thread) == ThreadState.FAULTED
    again = thread.fault
    assert again is not None and again.access == access
    registers = process.cpu.registers(thread)
    assert registers["pc"] == again.pc
    address = _effective_address(
        process.machine, process.space.read(again.pc, 16), again.pc, registers
    )
    assert address <= again.address < address + 16


@pytest.mark.parametrize("bug", BUGS, ids=[bug["id"] for bug in BUGS])
@pytest.mark.parametrize("build", BUILDS)
def test_bug_is_fixed_in_its_version(build: str, bug: dict) -> None:
    for version in range(bug["fixed_in"], 5):
        process = new_process(build, f"v{version}", name="sample.stripped.dll")
        arguments, buffers = argument_values(process, bug["call"])
        before = {index: process.space.read(va, size) for index, (va, size) in buffers.items()}
        assert i32(process.call(bug["function"], *arguments)) == bug["after"]["returns"]
        # "dst/out/summary untouched": no buffer of the call was written.
        assert {index: process.space.read(va, size) for index, (va, size) in buffers.items()} == (
            before
        )
    if bug["fixed_in"] > 2:  # still there one version earlier
        process = new_process(build, f"v{bug['fixed_in'] - 1}", name="sample.stripped.dll")
        with pytest.raises(EmulationFault):
            process.call(bug["function"], *argument_values(process, bug["call"])[0])


# host functions ---------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_host_function_overrides_the_real_dll(build: str) -> None:
    heard: list[tuple[Cpu, tuple[int, ...]]] = []

    def now(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        heard.append((cpu, arguments))
        return 0x8000_0000 + 77 * len(heard)

    process = new_process(build, hosts={"host_now": now})
    assert process.call("hp_reset") == 77  # masked to 31 bits by hp_reset
    assert len(heard) == 1 and heard[0][0] is process.cpu and len(heard[0][1]) == 8
    host = process.module("samplehost.dll")
    assert host is not None
    # The real clock never ran: its first tick is 1000 + 10.
    assert process.call("host_now", module=host) == 1010
    stats = process.buffer(24)
    process.call("hp_get_stats", stats)
    assert process.space.read(stats, 24)[20:24] == (0x8000_0000 + 77).to_bytes(4, "little")
    # The other imports still go to samplehost.dll.
    module = process.main_module
    assert module is not None
    slots = {
        entry.name: process.space.read_u64(module.va(entry.iat_rva))
        for entry in module.image.imports
    }
    assert slots["host_alloc"] == host.va(host.export_rva("host_alloc"))
    assert not host.contains(slots["host_now"])
    assert process.space.is_executable(slots["host_now"])


@pytest.mark.parametrize("build", BUILDS)
def test_host_functions_get_their_arguments(build: str) -> None:
    logged: list[tuple[bytes, int]] = []
    keys: list[int] = []

    def log(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        logged.append((cstring(process, arguments[0]), i32(arguments[1])))
        return 0

    def policy(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        keys.append(i32(arguments[0]))
        return {1: 1, 2: 20}[keys[-1]]

    process = new_process(build, hosts={"host_log": log, 10: policy})
    assert i32(process.call("hp_set_limit", 9, 1)) == -2
    assert logged == [(b"limit: unknown limit", -2)]
    assert process.call("hp_set_limit", 0, 100) == 20  # allowed (1), capped (2)
    assert keys == [1, 2]
    keys.clear()
    assert process.call("hp_set_limit", 0, 10) == 10
    assert keys == [2]  # 10 <= the current 20: no need to ask whether raising is allowed


@pytest.mark.parametrize("build", BUILDS)
def test_host_function_gets_eight_arguments_from_emulated_code(build: str) -> None:
    heard: list[tuple[int, ...]] = []

    def log(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        heard.append(arguments)
        return sum(arguments) + 1000

    process = new_process(build, hosts={"host_log": log})
    module = process.main_module
    assert module is not None
    slot = next(e for e in module.image.imports if e.name == "host_log").iat_rva
    if process.machine == Machine.AMD64:
        source = (
            "sub rsp, 72; mov qword ptr [rsp + 32], 5; mov qword ptr [rsp + 40], 6;"
            "mov qword ptr [rsp + 48], 7; mov qword ptr [rsp + 56], 8;"
            "mov ecx, 1; mov edx, 2; mov r8d, 3; mov r9d, 4;"
            f"mov rax, {module.va(slot):#x}; call qword ptr [rax]; add rsp, 72; ret"
        )
    else:
        source = (
            "stp x29, x30, [sp, #-16]!;"
            + "".join(f"mov x{i}, #{i + 1};" for i in range(8))
            + "".join(
                f"{'movz' if shift == 0 else 'movk'} x16, #{(module.va(slot) >> shift) & 0xFFFF}, "
                f"lsl #{shift};"
                for shift in (0, 16, 32, 48)
            )
            + "ldr x16, [x16]; blr x16; ldp x29, x30, [sp], #16; ret"
        )
    assert process.call(code_page(process, source)) == 1036
    assert heard == [(1, 2, 3, 4, 5, 6, 7, 8)]


@pytest.mark.parametrize("build", BUILDS)
def test_exception_in_a_host_function_is_raised_after_the_run(build: str) -> None:
    error = ValueError("the host gave up")

    def now(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        raise error

    process = new_process(build, hosts={"host_now": now})
    with pytest.raises(ValueError) as caught:
        process.call("hp_reset")
    assert caught.value is error
    assert process.main_thread.state == ThreadState.IDLE
    assert process.call("hp_crc32", process.buffer(b"123456789"), 9) == 0xCBF43926
    # On a thread of its own: the thread ends FAULTED, saying why, not stuck inside.
    thread = process.new_thread()
    process.cpu.start(thread, process.function_va("hp_reset"), ())
    with pytest.raises(ValueError):
        process.cpu.run(thread)
    assert thread.state == ThreadState.FAULTED
    assert thread.fault is not None and "the host gave up" in str(thread.fault)
    process.cpu.start(thread, process.function_va("hp_zero"), ())
    assert process.cpu.run(thread) == ThreadState.RETURNED


@pytest.mark.parametrize("build", BUILDS)
def test_hpatch_error_in_a_host_function_is_a_fault(build: str) -> None:
    def now(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        raise HPatchError("clock unavailable")

    process = new_process(build, hosts={"host_now": now})
    with pytest.raises(EmulationFault, match="clock unavailable") as caught:
        process.call("hp_reset")
    assert process.describe(caught.value.pc).startswith("host stubs+0x")
    assert process.call("hp_zero") == 0


@pytest.mark.parametrize("build", BUILDS)
def test_host_function_registered_later_serves_stubbed_imports(build: str) -> None:
    process = Process(machine(build))
    process.load_image(load_image(sample(build, "v1")))  # no directory: nothing to bind
    with pytest.raises(EmulationFault, match="nothing in this process models"):
        process.call("hp_reset")
    process.host("samplehost.dll", "host_now", lambda cpu, arguments: 42)
    assert process.call("hp_reset") == 42
    later = process.load_image(load_image(sample(build, "v3")), name="v3.dll")
    assert process.call("hp_reset", module=later) == 42
    process.host("samplehost.dll", "host_now", lambda cpu, arguments: 43)  # replaced
    assert process.call("hp_reset") == process.call("hp_reset", module=later) == 43


@pytest.mark.parametrize("build", BUILDS)
def test_calls_through_bad_function_pointers_fault(build: str) -> None:
    process = new_process(build)
    data = process.buffer(assemble(process.machine, "ret", 0))  # code bytes, but RW
    for target in (0x1234, data):
        fsm = process.buffer(116)
        process.call("hp_fsm_init", fsm)
        name = b"go" if target == 0x1234 else b"gogo"
        assert process.call("hp_cmd_register", process.buffer(name + b"\0"), target) >= 7
        line = name + b"\n"
        with pytest.raises(EmulationFault) as caught:
            process.call("hp_fsm_feed", fsm, process.buffer(line), len(line))
        assert (caught.value.access, caught.value.address, caught.value.pc) == (
            "execute",
            target,
            target,
        )


TRAPS = {
    # (code, offset of the instruction that must be the fault's pc)
    Machine.AMD64: [
        ("nop; int3", 1),
        ("nop; int 3", 1),
        ("nop; int 0x29", 1),  # __fastfail
        ("nop; xor ecx, ecx; div ecx", 3),
        ("nop; ud2", 1),
    ],
    Machine.ARM64: [("nop; brk #0", 4), ("nop; .long 0", 4)],  # .long 0: udf #0
}


@pytest.mark.parametrize("build", ["x64-clang", "arm64-clang"])
def test_processor_exceptions_fault_at_their_instruction(build: str) -> None:
    process = new_process(build)
    for source, offset in TRAPS[process.machine]:
        code = code_page(process, source)
        with pytest.raises(EmulationFault) as caught:
            process.call(code)
        assert (caught.value.access, caught.value.pc) == ("execute", code + offset), source
        assert process.describe(caught.value.pc) in str(caught.value)


def test_landing_in_hotpatch_padding_names_the_padding() -> None:
    process = new_process("x64-clang-hotpatch")
    function = process.function_va("hp_version")
    assert process.space.read(function - 6, 6) == b"\xcc" * 6  # /functionpadmin:6
    with pytest.raises(EmulationFault, match="processor exception 3") as caught:
        process.call(function - 1)
    assert caught.value.pc == function - 1
    assert not process.describe(caught.value.pc).startswith("sample.dll!hp_version")


@pytest.mark.parametrize("build", BUILDS)
def test_host_functions_may_allocate_free_and_write_emulated_memory(build: str) -> None:
    freed: list[int] = []

    def alloc(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        return process.buffer(arguments[0], "heap")

    def free(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        freed.append(arguments[0])
        process.free(arguments[0])
        return 0

    def log(cpu: Cpu, arguments: tuple[int, ...]) -> int:
        cpu.space.write(journal, cstring(process, arguments[0])[:16])
        return 0

    process = new_process(build, hosts={"host_alloc": alloc, "host_free": free, "host_log": log})
    journal = process.buffer(16)
    quoted = process.call("hp_json_quote", process.buffer(b"hi\n\0"))
    assert process.space.region_at(quoted).name == "heap"
    assert cstring(process, quoted) == b'"hi\\n"'
    assert quoted + len(b"hi\n") * 6 + 3 == process.space.region_at(quoted).end  # guarded
    process.call("hp_release", quoted)
    assert freed == [quoted] and process.space.region_at(quoted) is None
    assert i32(process.call("hp_set_limit", 9, 1)) == -2
    assert process.space.read(journal, 16) == b"limit: unknown l"


# buffers and describe -----------------------------------------------------------------------


def test_buffers_end_at_a_guard_page_and_are_freed_with_it() -> None:
    process = Process(Machine.AMD64)
    regions = len(process.space.regions)
    va = process.buffer(b"abc", "input")
    assert process.space.read(va, 3) == b"abc"
    region = process.space.region_at(va)
    assert region is not None and region.name == "input"
    assert va + 3 == region.end == region.guards[1]
    assert process.space.protection_at(va + 3) == Protection.NONE
    assert process.space.protection_at(va) == Protection.RW
    big = process.buffer(PAGE_SIZE + 1)
    assert process.space.read(big, PAGE_SIZE + 1) == bytes(PAGE_SIZE + 1)
    empty = process.buffer(b"")
    assert process.space.protection_at(empty) == Protection.NONE
    for buffer in (va, big, empty):
        process.free(buffer)
    assert len(process.space.regions) == regions
    with pytest.raises(HPatchError, match="not a scratch buffer"):
        process.free(process.main_thread.teb.va)


def test_describe_names_what_it_can() -> None:
    process = new_process("x64-gcc", "v1")
    module = process.main_module
    assert module is not None
    crc = process.function_va("crc_block")
    assert process.describe(crc) == "sample.dll!crc_block+0x0"
    assert process.describe(crc + 5) == "sample.dll!crc_block+0x5"
    assert process.describe(module.base) == "sample.dll+0x0"
    host = process.module("samplehost.dll")
    assert host is not None
    assert process.describe(host.va(host.export_rva("host_now"))) == "samplehost.dll!host_now+0x0"
    buffer = process.buffer(16, "scratch")
    assert (
        process.describe(buffer + 1)
        == f"scratch+0x{buffer + 1 - process.space.region_at(buffer).va:x}"
    )
    assert process.describe(0x20) == "0x20"
    stripped = new_process("x64-gcc", "v1", name="sample.stripped.dll")
    text = stripped.describe(stripped.main_module.va(crc - module.base))
    assert "crc_block" not in text and text.startswith("sample.stripped.dll")
