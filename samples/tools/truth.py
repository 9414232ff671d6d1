#!/usr/bin/env python3
"""Generates the function ground truth (sample.funcs.tsv) of one sample.dll.

Sources, none of them .pdata:
  * DWARF of the companion debug link (same objects, same layout; checked
    here byte for byte against the shipped image): exact [low_pc, high_pc)
    of every compiled function and of every split-off part (gcc ".cold");
  * the linker map: every input section placed in .text, which catches
    code that has no DWARF (e.g. import stubs the linker pulled in), and
    data the linker script places in .text;
  * the COFF symbol table: names.
Bytes that the map says belong to a function's input section but lie past
its DWARF end are padding or, for clang on x64, the function's jump tables
(validated entry by entry); these are written to sample.textdata.tsv.

Usage: truth.py --debug-image D --shipped S --map M --map-kind gnu|lld
                --out FUNCS.tsv --data-out TEXTDATA.tsv
"""

import argparse
import os
import re
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pecoff import PE, MACHINE_AMD64  # noqa: E402
import disasm  # noqa: E402


def die(msg):
    sys.stderr.write("truth.py: error: %s\n" % msg)
    sys.exit(1)


# ---------------------------------------------------------------------------
# DWARF

RANGE_RE = re.compile(r"\[0x([0-9a-f]+), 0x([0-9a-f]+)\)")
ENTRY_RE = re.compile(r"^0x[0-9a-f]+:\s+(DW_TAG_\w+|NULL)")
ATTR_RE = re.compile(r"^\s+DW_AT_(\w+)\s+\((.*)$")


def dwarf_functions(image_path):
    """Returns [(name_or_None, [(lo, hi), ...])] for every subprogram with code."""
    out = subprocess.run(["llvm-dwarfdump", "--debug-info", image_path],
                         check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    funcs = []
    cur = None
    in_ranges = False

    def flush():
        if cur and cur["tag"] == "DW_TAG_subprogram":
            ranges = list(cur["ranges"])
            if "low_pc" in cur and "high_pc" in cur:
                ranges.append((cur["low_pc"], cur["high_pc"]))
            ranges = [r for r in ranges if r[1] > r[0]]
            if ranges:
                funcs.append((cur.get("name"), sorted(ranges), cur.get("low_pc")))

    for line in out.splitlines():
        m = ENTRY_RE.match(line)
        if m:
            flush()
            cur = {"tag": m.group(1), "ranges": []}
            in_ranges = False
            continue
        if cur is None:
            continue
        a = ATTR_RE.match(line)
        if a:
            in_ranges = False
            key, val = a.group(1), a.group(2)
            if key == "name":
                cur["name"] = val.strip('")')
            elif key in ("low_pc", "high_pc"):
                mm = re.match(r"0x([0-9a-f]+)", val)
                if mm:
                    cur[key] = int(mm.group(1), 16)
            elif key == "ranges":
                in_ranges = True
                for lo, hi in RANGE_RE.findall(val):
                    cur["ranges"].append((int(lo, 16), int(hi, 16)))
            continue
        if in_ranges:
            for lo, hi in RANGE_RE.findall(line):
                cur["ranges"].append((int(lo, 16), int(hi, 16)))
    flush()
    return funcs


# ---------------------------------------------------------------------------
# Linker maps

def parse_lld_map(path, image_base):
    """Input sections of .text: [(rva, size, origin)], and no script data."""
    secs = []
    out_sec = None
    line_re = re.compile(r"^([0-9a-f]{8,16}) ([0-9a-f]{8,16}) +(\d+) (.*)$")
    with open(path) as f:
        for line in f:
            m = line_re.match(line.rstrip("\n"))
            if not m:
                continue
            addr, size, rest = int(m.group(1), 16), int(m.group(2), 16), m.group(4)
            if rest and not rest.startswith(" "):
                out_sec = rest.strip()
                continue
            rest = rest.strip()
            if out_sec == ".text" and rest.endswith(")") and ":(" in rest and size:
                rva = addr - image_base if addr >= image_base else addr
                secs.append((rva, size, rest))
    return secs, []


def parse_gnu_map(path, image_base):
    """Input sections of .text and LONG/QUAD data the linker script puts there."""
    secs = []
    data = []
    in_text = False
    pending = None
    last_sym = None
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        if re.match(r"^\.text\s", line) or line == ".text":
            in_text = True
            continue
        if in_text and re.match(r"^\.\S+", line):
            break  # next output section
        if not in_text:
            continue
        m = re.match(r"^ (\.text\S*|\S+)\s*$", line)
        if m and not line.startswith(" *"):
            pending = m.group(1)
            continue
        m = re.match(r"^ (\.text\S*)?\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(\S.*)$", line)
        if m and not line.startswith(" *") and (m.group(1) or pending):
            name = m.group(1) or pending
            pending = None
            addr, size, origin = int(m.group(2), 16), int(m.group(3), 16), m.group(4)
            if size and not origin.startswith(("LONG", "QUAD", "SHORT", "BYTE")):
                secs.append((addr - image_base, size, "%s(%s)" % (origin, name)))
            continue
        pending = None
        m = re.match(r"^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+(LONG|QUAD|SHORT|BYTE)\s", line)
        if m:
            data.append((int(m.group(1), 16) - image_base, int(m.group(2), 16), last_sym))
            continue
        m = re.match(r"^\s+0x([0-9a-f]+)\s+(\w+) = \.", line)
        if m:
            last_sym = m.group(2)
    # merge adjacent script data words into regions named by the symbol before them
    regions = []
    for rva, size, sym in data:
        if regions and regions[-1][0] + regions[-1][1] == rva and regions[-1][2] == sym:
            regions[-1] = (regions[-1][0], regions[-1][1] + size, sym)
        else:
            regions.append((rva, size, sym))
    return secs, regions


# ---------------------------------------------------------------------------

def symbol_names(pe):
    """rva -> sorted list of distinct names of symbols in .text (no section symbols).

    Where a function-typed symbol (COFF type 0x20) shares its address with untyped
    labels (GNU ld's ___crt_xc_start__ and friends), only the function names count.
    """
    text = pe.text()
    names, functions = {}, {}
    for s in pe.symbols:
        if s.rva is None or not (text.rva <= s.rva < text.rva + text.vsize):
            continue
        if s.name.startswith(".") or s.name.startswith("$"):
            continue
        names.setdefault(s.rva, set()).add(s.name)
        if (s.type >> 4) & 0x3 == 2:
            functions.setdefault(s.rva, set()).add(s.name)
    names.update(functions)
    return {k: sorted(v) for k, v in names.items()}


def check_same_image(dbg, shipped):
    if dbg.machine != shipped.machine or dbg.image_base != shipped.image_base \
            or dbg.entry_rva != shipped.entry_rva:
        die("debug image and shipped image differ in machine/base/entry")
    a = {s.name: s for s in dbg.loaded_sections()}
    b = {s.name: s for s in shipped.loaded_sections()}
    if sorted(a) != sorted(b):
        die("section lists differ: %s vs %s" % (sorted(a), sorted(b)))
    # Stripping debug sections can shrink the headers and so move raw data in the
    # file: the debug directory's PointerToRawData fields may differ by exactly that
    # shift, nothing else may.
    debug_rva, debug_size = dbg.dirs[6] if len(dbg.dirs) > 6 else (0, 0)
    pointer_fields = [debug_rva + 28 * entry + 24 for entry in range(debug_size // 28)]
    for name in a:
        if a[name].rva != b[name].rva:
            die("section %s moved between the debug image and the shipped image" % name)
        old, new = dbg.section_bytes(a[name]), shipped.section_bytes(b[name])
        shift = a[name].rawptr - b[name].rawptr
        if len(old) != len(new):
            die("section %s differs between the debug image and the shipped image" % name)
        for field in pointer_fields:
            offset = field - a[name].rva
            if offset % 4 == 0 and 0 <= offset <= len(old) - 4:
                was = struct.unpack_from("<I", old, offset)[0]
                now = struct.unpack_from("<I", new, offset)[0]
                if was and was - now == shift:
                    new = new[:offset] + old[offset : offset + 4] + new[offset + 4 :]
        if old != new:
            die("section %s differs between the debug image and the shipped image" % name)


def validate_jump_table(pe, start, size, fstart, fend):
    """A clang x64 jump table: int32 entries relative to the table start,
    each pointing into the owning function's code."""
    if size % 4 or start % 4:
        return False
    raw = pe.read(start, size)
    for (e,) in struct.iter_unpack("<i", raw):
        if not (fstart <= start + e < fend):
            return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--debug-image", required=True)
    ap.add_argument("--shipped", required=True)
    ap.add_argument("--map", required=True)
    ap.add_argument("--map-kind", choices=("gnu", "lld"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-out", required=True)
    args = ap.parse_args()

    dbg = PE(args.debug_image)
    shipped = PE(args.shipped)
    check_same_image(dbg, shipped)
    base = dbg.image_base
    text = dbg.text()
    names = symbol_names(shipped)
    if names != symbol_names(dbg):
        die("symbol tables of the debug and shipped images differ")

    parse = parse_gnu_map if args.map_kind == "gnu" else parse_lld_map
    insecs, script_data = parse(args.map, base)
    if not insecs:
        die("no .text input sections found in %s" % args.map)
    insec_at = {rva: (size, origin) for rva, size, origin in insecs}

    def name_at(rva, hint=None):
        n = names.get(rva)
        if not n:
            die("no symbol at rva 0x%x (%s)" % (rva, hint))
        if len(n) > 1:
            die("several names at rva 0x%x: %s" % (rva, n))
        return n[0]

    funcs = []        # (name, rva, size, parent)
    covered = set()   # input-section starts explained by DWARF
    textdata = []     # (kind, rva, size, owner)
    for dname, ranges, low_pc in dwarf_functions(args.debug_image):
        parts = []
        # code the linker discarded (/opt:ref) keeps its DWARF with address 0
        ranges = [r for r in ranges if r[0] >= base]
        if not ranges:
            continue
        for lo, hi in ranges:
            rva, size = lo - base, hi - lo
            if not (text.rva <= rva and rva + size <= text.rva + text.vsize):
                die("DWARF range of %s outside .text" % dname)
            parts.append((name_at(rva, dname), rva, size))
        mains = [p for p in parts if not re.search(r"\.cold(\.\d+)?$", p[0])]
        if len(mains) != 1:
            die("cannot tell the entry part of %s: %s" % (dname, parts))
        main_name = mains[0][0]
        for pname, rva, size in parts:
            parent = main_name if pname != main_name else ""
            funcs.append((pname, rva, size, parent))
            if rva not in insec_at:
                die("%s at 0x%x does not start an input section of the map" % (pname, rva))
            covered.add(rva)
            ssize, origin = insec_at[rva]
            if size > ssize:
                die("%s: DWARF size %d exceeds its input section (%d)" % (pname, size, ssize))
            slack = ssize - size
            if slack and args.map_kind == "lld":
                # clang never pads section ends: what follows the code is the
                # function's jump tables (x64), each addressed by a RIP-relative lea
                tbl, tend = (rva + size + 3) & ~3, rva + ssize
                refs = set()
                for va, (n, txt) in disasm.objdump(args.shipped, base + rva, base + rva + size).items():
                    for t in re.findall(r"# 0x([0-9a-f]+)", txt):
                        if tbl <= int(t, 16) - base < tend:
                            refs.add(int(t, 16) - base)
                starts = sorted(refs)
                if not starts or starts[0] != tbl:
                    die("%s: %d bytes after the code are not referenced as a table" % (pname, slack))
                for t0, t1 in zip(starts, starts[1:] + [tend]):
                    if not validate_jump_table(dbg, t0, t1 - t0, rva, rva + size):
                        die("%s: bytes at 0x%x are not a jump table" % (pname, t0))
                    textdata.append(("jumptable", t0, t1 - t0, pname))

    # input sections without DWARF: code the linker pulled in (import stubs ...)
    for rva, size, origin in insecs:
        if rva in covered:
            continue
        nm = name_at(rva, origin)
        code = disasm.trim_padding(args.shipped, dbg.machine, rva + base, rva + base + size)
        if code <= 0:
            die("input section %s at 0x%x holds no code" % (origin, rva))
        funcs.append((nm, rva, code - rva - base, ""))

    for rva, size, sym in script_data:
        textdata.append(("linker_data", rva, size, sym or ""))

    funcs.sort(key=lambda f: f[1])
    for a, b in zip(funcs, funcs[1:]):
        if a[1] + a[2] > b[1]:
            die("overlap: %s and %s" % (a[0], b[0]))
    seen = set()
    for f in funcs:
        if f[0] in seen:
            die("duplicate function name %s" % f[0])
        seen.add(f[0])

    # every function-typed symbol in .text must start a listed function
    starts = {f[1] for f in funcs}
    for s in shipped.symbols:
        if s.rva is not None and s.type == 0x20 and text.rva <= s.rva < text.rva + text.vsize:
            if s.rva not in starts:
                die("function symbol %s at 0x%x is not in the truth" % (s.name, s.rva))

    with open(args.out, "w") as f:
        f.write("name\trva\tsize\tparent\n")
        for name, rva, size, parent in funcs:
            f.write("%s\t0x%x\t%d\t%s\n" % (name, rva, size, parent))
    textdata.sort(key=lambda d: d[1])
    with open(args.data_out, "w") as f:
        f.write("kind\trva\tsize\towner\n")
        for kind, rva, size, owner in textdata:
            f.write("%s\t0x%x\t%d\t%s\n" % (kind, rva, size, owner))


if __name__ == "__main__":
    main()
