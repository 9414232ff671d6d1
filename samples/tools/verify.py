#!/usr/bin/env python3
"""Checks every bin/<build>/<version>/ directory:

  * sample.funcs.tsv against llvm-objdump: each function's instructions tile
    [rva, rva+size) exactly, the last one is not padding, and every byte of
    .text between functions is padding or listed in sample.textdata.tsv;
  * sample.stripped.dll is sample.dll without its COFF symbol table: same
    headers (except the symbol-table fields), same sections, same bytes;
  * imports (samplehost.dll only, host_policy by ordinal) and exports;
  * the diff truth of every version pair (diff-vA-vB.tsv, .data.tsv): it
    lists exactly the functions of both sample.funcs.tsv with their rvas,
    every function whose size (or a part's) changed is modified, and the
    changes the README describes are there.
Prints a summary per build: function count, .pdata coverage, padding bytes,
jump tables in .text, and functions whose last instruction is not an
unconditional control transfer.

Usage: verify.py BIN_DIR [--quiet]
"""

import os
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pecoff import PE, MACHINE_AMD64  # noqa: E402
import disasm  # noqa: E402

errors = []


def err(where, msg):
    errors.append("%s: %s" % (where, msg))


def read_tsv(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    header, body = rows[0], rows[1:]
    return header, body


def check_stripped(where, full, stripped):
    if stripped.symptr or stripped.nsyms:
        err(where, "stripped image still has a symbol table")
    if not full.symptr or not full.nsyms:
        err(where, "unstripped image has no symbol table")
    hdr_end = full.section_headers_off + 40 * len(full.sections)
    a = bytearray(full.data[:hdr_end])
    b = bytearray(stripped.data[:hdr_end])
    for buf in (a, b):
        # PointerToSymbolTable and NumberOfSymbols
        buf[full.file_header_off + 8: full.file_header_off + 16] = b"\0" * 8
        # CheckSum: GNU ld computes one over the whole file (which includes the
        # symbol table); llvm-objcopy writes 0
        buf[full.optional_header_off + 64: full.optional_header_off + 68] = b"\0" * 4
    if a != b:
        err(where, "headers of sample.dll and sample.stripped.dll differ")
    if [(s.name, s.rva, s.vsize) for s in full.sections] != \
            [(s.name, s.rva, s.vsize) for s in stripped.sections]:
        err(where, "section tables differ")
    for s, t in zip(full.sections, stripped.sections):
        if full.section_bytes(s) != stripped.section_bytes(t):
            err(where, "section %s differs in the stripped image" % s.name)


def verify_dir(d, summary):
    where = d
    full = PE(os.path.join(d, "sample.dll"))
    stripped = PE(os.path.join(d, "sample.stripped.dll"))
    check_stripped(where, full, stripped)
    if any(s.name.startswith(".debug") for s in full.sections):
        err(where, "shipped image has DWARF sections")

    imps = full.imports()
    if [dll.lower() for dll, _ in imps] != ["samplehost.dll"]:
        err(where, "unexpected import DLLs %s" % imps)
    elif "#10" not in imps[0][1]:
        err(where, "host_policy is not imported by ordinal: %s" % imps[0][1])

    header, rows = read_tsv(os.path.join(d, "sample.funcs.tsv"))
    if header != ["name", "rva", "size", "parent"]:
        err(where, "bad tsv header %s" % header)
    funcs = [(r[0], int(r[1], 16), int(r[2]), r[3]) for r in rows]
    _, drows = read_tsv(os.path.join(d, "sample.textdata.tsv"))
    tdata = [(r[0], int(r[1], 16), int(r[2]), r[3]) for r in drows]

    m = full.machine
    base = full.image_base
    text = full.text()
    tbytes = full.section_bytes(text)
    insns = disasm.objdump(os.path.join(d, "sample.dll"))

    if sorted(f[1] for f in funcs) != [f[1] for f in funcs]:
        err(where, "tsv not sorted by rva")
    names = {f[0] for f in funcs}
    if full.entry_rva not in {f[1] for f in funcs}:
        err(where, "entry point 0x%x is not a listed function" % full.entry_rva)
    for name, rva in full.exports().items():
        if rva not in {f[1] for f in funcs}:
            err(where, "export %s at 0x%x is not a listed function" % (name, rva))
    starts = {f[1] for f in funcs}
    for sym in full.symbols:
        if sym.rva is not None and sym.type == 0x20 and \
                text.rva <= sym.rva < text.rva + text.vsize and sym.rva not in starts:
            err(where, "function symbol %s at 0x%x is not listed" % (sym.name, sym.rva))
    for f in funcs:
        if f[3] and f[3] not in names:
            err(where, "%s: unknown parent %s" % (f[0], f[3]))

    nonterm = []
    seh_nop = []
    first_len = {}
    for name, rva, size, parent in funcs:
        va, end = base + rva, base + rva + size
        seq = []
        while va < end:
            if va not in insns:
                err(where, "%s: no instruction boundary at 0x%x" % (name, va - base))
                break
            n, txt = insns[va]
            if "<unknown>" in txt:
                err(where, "%s: undecodable bytes at 0x%x" % (name, va - base))
            seq.append((va, n, txt))
            va += n
        else:
            if va != end:
                err(where, "%s: last instruction ends at 0x%x, not 0x%x" % (name, va - base, end - base))
            if not seq:
                err(where, "%s: empty" % name)
                continue
            first_len[name] = seq[0][1]
            last = seq[-1]
            raw = full.read(last[0] - base, last[1])
            if disasm.is_padding(m, raw):
                # gcc (x64 SEH) puts a one-byte nop after a final call or tail
                # jump, inside the function and inside its .pdata range
                if m == MACHINE_AMD64 and raw == b"\x90" and len(seq) > 1 and \
                        seq[-2][2].split()[0] in ("call", "callq", "jmp", "jmpq"):
                    seh_nop.append(name)
                    last = seq[-2]
                else:
                    err(where, "%s: ends with a padding instruction (%s)" % (name, last[2]))
            if not disasm.is_terminator(m, last[2]):
                nonterm.append("%s (%s)" % (name, last[2].split("#")[0].strip()))

    # walk .text: functions, listed data, and padding in between
    regions = [(rva, size, "func", name) for name, rva, size, _ in funcs]
    regions += [(rva, size, kind, owner) for kind, rva, size, owner in tdata]
    regions.sort()
    pos = text.rva
    pads = {}
    for rva, size, kind, label in regions + [(text.rva + text.vsize, 0, "end", "")]:
        if rva < pos:
            err(where, "%s %s at 0x%x overlaps the previous region" % (kind, label, rva))
            continue
        gap = tbytes[pos - text.rva: rva - text.rva]
        if gap:
            desc = disasm.describe_padding(m, gap)
            if desc is None:
                err(where, "non-padding bytes at 0x%x..0x%x: %s" % (pos, rva, gap[:32].hex()))
            else:
                for k in desc.split("+"):
                    pads[k] = pads.get(k, 0) + 1
        pos = rva + size

    # .pdata coverage
    pdata = full.pdata()
    pbegin = {}
    for b, e, _ in pdata:
        pbegin[b] = e
    missing = [f[0] for f in funcs if f[1] not in pbegin]
    end_mismatch = [f[0] for f in funcs if f[1] in pbegin and pbegin[f[1]] != f[1] + f[2]]
    stray = [b for b in pbegin if b not in {f[1] for f in funcs}]
    if stray:
        err(where, ".pdata entries that start no listed function: %s" % [hex(x) for x in stray])

    # room in front of every function (hotpatching needs >= 6 bytes of padding
    # before the entry and a first instruction of >= 2 bytes)
    min_gap = None
    prev_end = text.rva
    for rva, size, kind, label in regions:
        if kind == "func":
            gap = rva - prev_end
            min_gap = gap if min_gap is None else min(min_gap, gap)
        prev_end = max(prev_end, rva + size)

    summary.append({
        "seh_nop": seh_nop, "min_gap": min_gap,
        "short_first": sorted(n for n, l in first_len.items() if l < 2),
        "dir": d, "funcs": len(funcs), "cold": sum(1 for f in funcs if f[3]),
        "missing_pdata": missing, "pdata_end_mismatch": end_mismatch,
        "pads": pads, "textdata": tdata, "nonterm": nonterm,
    })


def data_layout(pe):
    """Symbols (name -> offset) of the writable data sections, their sizes,
    and their initial bytes with base-relocated pointer slots masked."""
    out = {}
    relocs = pe.base_relocs()
    for sec in pe.sections:
        if sec.name not in (".data", ".bss"):
            continue
        syms = sorted((s.rva - sec.rva, s.name) for s in pe.symbols
                      if s.rva is not None and sec.rva <= s.rva < sec.rva + sec.vsize
                      and not s.name.startswith(".") and not s.name.startswith("__"))
        raw = bytearray(pe.section_bytes(sec))
        for r in relocs:
            if sec.rva <= r < sec.rva + sec.vsize:
                raw[r - sec.rva: r - sec.rva + 8] = b"P" * 8
        out[sec.name] = (sec.vsize, syms, bytes(raw))
    return out


def version_dirs(d):
    """The v<N> directories of a build, in version order."""
    vs = [v for v in os.listdir(d) if re.match(r"^v\d+$", v) and os.path.isdir(os.path.join(d, v))]
    return sorted(vs, key=lambda v: int(v[1:]))


def check_servicing(bindir, build, summary_lines):
    """v2 and v3 may change code and constants only; v4 changes data."""
    d = os.path.join(bindir, build)
    imgs = {v: PE(os.path.join(d, v, "sample.dll")) for v in version_dirs(d)}
    funcs = {}
    for v in imgs:
        _, rows = read_tsv(os.path.join(d, v, "sample.funcs.tsv"))
        funcs[v] = {r[0]: int(r[2]) for r in rows}
    base = imgs["v1"]
    for v, pe in imgs.items():
        if v == "v1":
            continue
        same_exports = sorted(pe.exports()) == sorted(base.exports())
        same_imports = pe.imports() == base.imports()
        same_data = data_layout(pe) == data_layout(base)
        where = "%s/%s" % (build, v)
        if v in ("v2", "v3"):
            if not same_exports:
                err(where, "exports differ from v1")
            if not same_imports:
                err(where, "imports differ from v1")
            if not same_data:
                err(where, "global data layout or initial values differ from v1")
        elif v == "v4" and same_data:
            err(where, "v4 was meant to change global data")
        prev = "v%d" % (int(v[1:]) - 1)
        added = sorted(set(funcs[v]) - set(funcs[prev]))
        removed = sorted(set(funcs[prev]) - set(funcs[v]))
        resized = sorted(n for n in set(funcs[v]) & set(funcs[prev]) if funcs[v][n] != funcs[prev][n])
        summary_lines.append("%-22s vs %s: +%s -%s, %d resized; exports %s, data %s" % (
            where, prev, added or "[]", removed or "[]", len(resized),
            "same" if same_exports else "changed", "same" if same_data else "CHANGED"))


# What the README says each pair changes: functions that must be modified
# (at least these: code can also change through inlining), the functions
# added (gcc clone suffixes ignored), and the data objects modified.
EXPECTED_DIFFS = {
    (1, 2): ({"hp_json_escape", "hp_array_unpack", "hp_version"},
             {"mul_overflows_u32"}, set()),
    (1, 3): ({"hp_json_escape", "hp_array_unpack", "hp_tlv_copy_string", "tlv_walk_nested",
              "hp_version"},
             {"mul_overflows_u32", "tlv_nested_overrun"}, set()),
    (2, 3): ({"hp_tlv_copy_string", "tlv_walk_nested", "hp_version"},
             {"tlv_nested_overrun"}, set()),
    (1, 4): ({"hp_json_escape", "hp_array_unpack", "hp_tlv_copy_string", "tlv_walk_nested",
              "hp_version", "hp_get_stats", "hp_ring_push", "hp_ring_write"},
             {"mul_overflows_u32", "tlv_nested_overrun", "cmd_hex"},
             {"g_hp_config", "g_hp_stats", "g_commands"}),
}


def check_diffs(bindir, build, summary_lines):
    d = os.path.join(bindir, build)
    funcs = {}
    for v in version_dirs(d):
        _, rows = read_tsv(os.path.join(d, v, "sample.funcs.tsv"))
        funcs[int(v[1:])] = {r[0]: (r[1], int(r[2]), r[3]) for r in rows}
    for (a, b), (must_modify, must_add, must_data) in sorted(EXPECTED_DIFFS.items()):
        where = "%s/diff-v%d-v%d" % (build, a, b)
        path = os.path.join(d, "diff-v%d-v%d.tsv" % (a, b))
        if not os.path.exists(path):
            err(where, "missing")
            continue
        header, rows = read_tsv(path)
        if header != ["name", "status", "old_rva", "new_rva"]:
            err(where, "bad header %s" % header)
            continue
        if [r[0] for r in rows] != sorted({r[0] for r in rows}):
            err(where, "not sorted by name, or names repeat")
        old, new = funcs[a], funcs[b]
        tops_old = {n for n, f in old.items() if not f[2]}
        tops_new = {n for n, f in new.items() if not f[2]}
        if {r[0] for r in rows} != tops_old | tops_new:
            err(where, "names differ from those of the two sample.funcs.tsv")
        status = {}
        for name, st, orva, nrva in rows:
            status[name] = st
            want = ("added" if name not in tops_old else "removed" if name not in tops_new
                    else None)
            if (want and st != want) or (not want and st not in ("unchanged", "modified")):
                err(where, "%s: status %s" % (name, st))
            if orva != (old[name][0] if name in tops_old else "") or \
                    nrva != (new[name][0] if name in tops_new else ""):
                err(where, "%s: rvas %s %s do not match sample.funcs.tsv" % (name, orva, nrva))
            if st == "unchanged":
                parts_old = {n: f[1] for n, f in old.items() if n == name or f[2] == name}
                parts_new = {n: f[1] for n, f in new.items() if n == name or f[2] == name}
                if parts_old != parts_new:
                    err(where, "%s: unchanged, but its size or parts differ" % name)
        modified = {n for n, st in status.items() if st == "modified"}
        added = {re.sub(r"\.(isra|constprop|part|cold)\.\d+$", "", n)
                 for n, st in status.items() if st == "added"}
        removed = {n for n, st in status.items() if st == "removed"}
        if not must_modify <= modified:
            err(where, "not modified: %s" % sorted(must_modify - modified))
        if added != must_add or removed:
            err(where, "added %s, removed %s" % (sorted(added), sorted(removed)))
        dheader, drows = read_tsv(os.path.join(d, "diff-v%d-v%d.data.tsv" % (a, b)))
        if dheader != ["name", "section", "status", "old_size", "new_size"]:
            err(where, "bad .data.tsv header %s" % dheader)
            continue
        dmod = set()
        for name, section, st, osize, nsize in drows:
            if section not in (".data", ".bss", ".rdata") or \
                    st not in ("modified", "added", "removed"):
                err(where, "data %s: section %s status %s" % (name, section, st))
            if st == "modified":
                dmod.add(name)
        if dmod != must_data:
            err(where, "data modified %s, expected %s" % (sorted(dmod), sorted(must_data)))
        summary_lines.append("%-30s %3d unchanged %2d modified %d added %d removed, %d data" % (
            where, len(status) - len(modified) - len(added) - len(removed), len(modified),
            len(added), len(removed), len(drows)))


def main():
    bindir = sys.argv[1]
    quiet = "--quiet" in sys.argv
    summary = []
    for build in sorted(os.listdir(bindir)):
        for ver in version_dirs(os.path.join(bindir, build)):
            verify_dir(os.path.join(bindir, build, ver), summary)
    if not quiet:
        for s in summary:
            jt = [t for t in s["textdata"] if t[0] == "jumptable"]
            ld = [t for t in s["textdata"] if t[0] != "jumptable"]
            print("%-28s %3d functions (%d split parts), %d without .pdata, padding %s"
                  % (s["dir"], s["funcs"], s["cold"], len(s["missing_pdata"]),
                     ",".join("%s" % k for k in sorted(s["pads"])) or "none"))
            if jt:
                print("    jump tables in .text: %s" % ", ".join(
                    "%s@0x%x(%d)" % (t[3], t[1], t[2]) for t in jt))
            if ld:
                print("    linker data in .text: %s" % ", ".join(
                    "%s@0x%x(%d)" % (t[3], t[1], t[2]) for t in ld))
            if s["missing_pdata"]:
                print("    no .pdata: %s" % " ".join(s["missing_pdata"]))
            if s["pdata_end_mismatch"]:
                print("    .pdata end != rva+size: %s" % " ".join(s["pdata_end_mismatch"]))
            print("    smallest gap before a function: %d bytes; functions whose first "
                  "instruction is 1 byte: %d" % (s["min_gap"], len(s["short_first"])))
            if s["seh_nop"]:
                print("    end with call/jmp + nop (SEH): %s" % " ".join(s["seh_nop"]))
            if s["nonterm"]:
                print("    last instruction not ret/jmp: %s" % "; ".join(s["nonterm"]))
    lines = []
    for build in sorted(os.listdir(bindir)):
        check_servicing(bindir, build, lines)
    for build in sorted(os.listdir(bindir)):
        check_diffs(bindir, build, lines)
    if not quiet:
        for line in lines:
            print(line)
    if errors:
        for e in errors:
            print("ERROR " + e)
        sys.exit(1)
    print("verify.py: %d images OK" % len(summary))


if __name__ == "__main__":
    main()
