#!/usr/bin/env python3
"""Generates the per-pair diff ground truth of one build from the compiler's
objects (not from the linked images).

For a pair of versions A -> B it writes, next to the version directories,

  diff-vA-vB.tsv       name  status  old_rva  new_rva
                       every function of sample.funcs.tsv of either version
                       (split-off parts folded into their parent), status
                       unchanged / modified / added / removed;
  diff-vA-vB.data.tsv  name  section  status  old_size  new_size
                       the named global data objects (.data, .bss, .rdata)
                       that were modified, added or removed.

The comparison is kpatch's rule at object level. Every function is its own
COFF section (-ffunction-sections). A function is unchanged when, between
the two versions,
  * its section bytes are equal, the relocated fields excepted, and
  * its relocations are equal: same count, same offsets, same types, and
    each target the same: a named symbol by its name plus the addend (COFF
    stores the addend in the relocated field); a section symbol of code or
    of a named data object by that function's or object's name plus the
    offset into it; string literals and other anonymous constants (gcc's
    section-relative references into .rdata, clang's ??_C@ / __real@
    COMDATs) by the content of the referenced bytes (and their own
    relocations, compared the same way) plus the offset into them, since
    their numbering and placement shift between versions.
A function with split-off parts (gcc's foo.cold) is modified when any part
is. Only functions listed in the version's sample.funcs.tsv count (lld's
/opt:ref drops some); code that no object compiles (GNU ld's import stubs)
is compared through its import-library record. Data objects are the named
data symbols of the objects, sized from the objects' DWARF, compared by
section, size, and initial bytes plus relocations (as above); a pointer to
a function is equal when it names the same function, wherever that moved.

Usage: difftruth.py --obj OBJ_DIR --bin BIN_DIR --implib LIB
                    [--pairs 1-2,1-3,2-3,1-4] [--explain]
  OBJ_DIR/v<N>/*.o|*.obj: the objects of version N;
  BIN_DIR/v<N>/sample.funcs.tsv, sample.map: the version's truth and map;
  LIB: the import library the images were linked with.
"""

import argparse
import glob
import os
import re
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pecoff import (COFFObject, MACHINE_AMD64, MACHINE_ARM64,  # noqa: E402
                    IMAGE_SYM_CLASS_EXTERNAL, IMAGE_SYM_CLASS_STATIC)

DEFAULT_PAIRS = "1-2,1-3,2-3,1-4"


def die(msg):
    sys.stderr.write("difftruth.py: error: %s\n" % msg)
    sys.exit(1)


# ---------------------------------------------------------------------------
# Relocated fields

def reloc_field(machine, typ, data, off):
    """(field offset, field length, bit mask of the field, addend) of one relocation."""
    if machine == MACHINE_AMD64:
        if typ == 0x0:                              # ABSOLUTE
            return off, 0, 0, 0
        if typ == 0x1:                              # ADDR64
            return off, 8, (1 << 64) - 1, struct.unpack_from("<q", data, off)[0]
        if typ in (0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xB):
            # ADDR32, ADDR32NB, REL32, REL32_1..REL32_5, SECREL
            return off, 4, 0xFFFFFFFF, struct.unpack_from("<i", data, off)[0]
        if typ == 0xA:                              # SECTION
            return off, 2, 0xFFFF, struct.unpack_from("<H", data, off)[0]
    elif machine == MACHINE_ARM64:
        if typ == 0x0:                              # ABSOLUTE
            return off, 0, 0, 0
        if typ == 0xE:                              # ADDR64
            return off, 8, (1 << 64) - 1, struct.unpack_from("<q", data, off)[0]
        if typ in (0x1, 0x2, 0x8, 0x11):            # ADDR32, ADDR32NB, SECREL, REL32
            return off, 4, 0xFFFFFFFF, struct.unpack_from("<i", data, off)[0]
        if typ == 0xD:                              # SECTION
            return off, 2, 0xFFFF, struct.unpack_from("<H", data, off)[0]
        insn = struct.unpack_from("<I", data, off)[0]

        def sext(v, bits):
            return v - (1 << bits) if v & (1 << (bits - 1)) else v
        if typ == 0x3:                              # BRANCH26
            return off, 4, 0x03FFFFFF, sext(insn & 0x03FFFFFF, 26) * 4
        if typ == 0xF:                              # BRANCH19
            return off, 4, 0x00FFFFE0, sext((insn >> 5) & 0x7FFFF, 19) * 4
        if typ == 0x10:                             # BRANCH14
            return off, 4, 0x0007FFE0, sext((insn >> 5) & 0x3FFF, 14) * 4
        if typ in (0x4, 0x5):                       # PAGEBASE_REL21, REL21 (adrp, adr)
            imm = ((insn >> 3) & 0x1FFFFC) | ((insn >> 29) & 3)
            return off, 4, 0x60FFFFE0, sext(imm, 21)
        if typ in (0x6, 0x9, 0xA):                  # PAGEOFFSET_12A, SECREL_LOW12A/HIGH12A
            return off, 4, 0x003FFC00, (insn >> 10) & 0xFFF
        if typ in (0x7, 0xB):                       # PAGEOFFSET_12L, SECREL_LOW12L
            scale = insn >> 30
            if insn & 0x04800000 == 0x04800000:     # 128-bit SIMD/FP load/store
                scale += 4
            return off, 4, 0x003FFC00, ((insn >> 10) & 0xFFF) << scale
    die("relocation type 0x%x (machine 0x%x) not supported" % (typ, machine))


def rel32_tails(o):
    """{(section index, relocation offset): bytes of the instruction after the
    relocated field} for the REL32 relocations in the code of an x64 object.

    A RIP-relative operand is relative to the end of the instruction, so
    where an immediate follows the displacement, gcc and clang fold its size
    into the addend of a plain REL32: the referenced offset is the addend
    plus that size."""
    if o.machine != MACHINE_AMD64:
        return {}
    out = subprocess.run(["llvm-objdump", "-d", "-r", o.path], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    code = [s for s in o.sections if s.is_code and s.size]
    tails = {}
    block = -1
    sec = None
    last = None
    for line in out.splitlines():
        m = re.match(r"^Disassembly of section (.*):$", line)
        if m:
            block += 1
            if block >= len(code) or code[block].name != m.group(1):
                die("%s: llvm-objdump section order does not match the section table" % o.path)
            sec, last = code[block], None
            continue
        m = INSN_RE.match(line)
        if m and sec is not None:
            start = int(m.group(1), 16)
            last = (start, start + sum(len(g) // 2 for g in m.group(2).split()))
            continue
        m = RELOC_LINE_RE.match(line)
        if m and sec is not None and m.group(2) in ("IMAGE_REL_AMD64_REL32",) + tuple(
                "IMAGE_REL_AMD64_REL32_%d" % k for k in range(1, 6)):
            off = int(m.group(1), 16)
            if last is None or not (last[0] <= off and off + 4 <= last[1]):
                die("%s: %s: relocation at 0x%x outside its instruction" % (o.path, sec.name, off))
            tails[(sec.index, off)] = last[1] - (off + 4)
    return tails


INSN_RE = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{2} )*[0-9a-f]{2})\s*\t")
RELOC_LINE_RE = re.compile(r"^\s+([0-9a-f]+):\s+(IMAGE_REL_\w+)\s")


def mask_field(buf, start, length, mask):
    if not length:
        return
    v = int.from_bytes(buf[start:start + length], "little") & ~mask
    buf[start:start + length] = v.to_bytes(length, "little")


# ---------------------------------------------------------------------------
# DWARF: sizes of the global variables an object defines

DIE_RE = re.compile(r"^(0x[0-9a-f]+):(\s+)(DW_TAG_\w+|NULL)")
ATTR_RE = re.compile(r"^\s+DW_AT_(\w+)\s+\((.*)\)\s*$")


def dwarf_variable_sizes(path):
    """{name: byte size} of every variable with a static address (DW_OP_addr)."""
    out = subprocess.run(["llvm-dwarfdump", "--debug-info", path], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    dies = {}
    order = []
    stack = []          # (depth, offset)
    cur = None
    for line in out.splitlines():
        m = DIE_RE.match(line)
        if m:
            depth = len(m.group(2))
            while stack and stack[-1][0] >= depth:
                stack.pop()
            if m.group(3) == "NULL":
                cur = None
                continue
            off = int(m.group(1), 16)
            cur = {"tag": m.group(3), "parent": stack[-1][1] if stack else None,
                   "children": [], "top": len(stack) == 1}
            if stack:
                dies[stack[-1][1]]["children"].append(off)
            dies[off] = cur
            order.append(off)
            stack.append((depth, off))
            continue
        a = ATTR_RE.match(line)
        if a and cur is not None:
            key, val = a.group(1), a.group(2)
            if key in ("type", "specification", "abstract_origin"):
                cur[key] = int(val.split()[0], 16)
            elif key in ("byte_size", "count", "upper_bound", "lower_bound"):
                if re.match(r"^0x[0-9a-f]+$", val):
                    cur[key] = int(val, 16)
            elif key == "name":
                cur["name"] = val.strip('"')
            elif key == "location":
                mm = re.match(r"DW_OP_addr 0x[0-9a-f]+$", val)
                if mm:
                    cur["static"] = True
            elif key == "declaration":
                cur["declaration"] = True

    def size_of(off, seen=()):
        d = dies[off]
        if off in seen:
            die("%s: recursive DWARF type at 0x%x" % (path, off))
        seen = seen + (off,)
        if "byte_size" in d:
            return d["byte_size"]
        tag = d["tag"]
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return 8
        if tag in ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                   "DW_TAG_restrict_type", "DW_TAG_atomic_type"):
            return size_of(d["type"], seen)
        if tag == "DW_TAG_array_type":
            n = size_of(d["type"], seen)
            for c in d["children"]:
                sub = dies[c]
                if sub["tag"] != "DW_TAG_subrange_type":
                    continue
                if "count" in sub:
                    n *= sub["count"]
                elif "upper_bound" in sub:
                    n *= sub["upper_bound"] - sub.get("lower_bound", 0) + 1
                else:
                    die("%s: array of unknown bound at 0x%x" % (path, off))
            return n
        die("%s: cannot size DWARF type %s at 0x%x" % (path, tag, off))

    sizes = {}
    for off in order:
        d = dies[off]
        if d["tag"] != "DW_TAG_variable" or not d.get("static") or not d["top"]:
            continue
        spec = dies.get(d.get("specification")) if "specification" in d else None
        name = d.get("name") or (spec or {}).get("name")
        typ = d.get("type", (spec or {}).get("type"))
        if name is None or typ is None:
            die("%s: variable DIE 0x%x without name or type" % (path, off))
        sizes[name] = size_of(typ)
    return sizes


# ---------------------------------------------------------------------------
# One version: its objects, functions and data objects

# symbols of anonymous constants: their names are derived from the content
# (MSVC-style ??_C@ strings, __real@/__xmm@ constants) or are local labels
LITERAL_RE = re.compile(r"^(\?\?_C@|__real@|__xmm@|__ymm@|__zmm@|\.L|__unnamed_)")
DATA_SECTIONS = (".data", ".bss", ".rdata")


def base_section(name):
    return re.split(r"[$]", name, 1)[0]


class Version:
    def __init__(self, obj_dir, bin_dir, v, imports):
        self.v = v
        self.imports = imports   # import-library records: symbol -> fingerprint
        paths = sorted(glob.glob(os.path.join(obj_dir, "v%d" % v, "*.o")) +
                       glob.glob(os.path.join(obj_dir, "v%d" % v, "*.obj")))
        if not paths:
            die("no objects in %s/v%d" % (obj_dir, v))
        self.objects = [COFFObject(p) for p in paths]
        self.funcs = {}          # name -> (rva, parent)
        with open(os.path.join(bin_dir, "v%d" % v, "sample.funcs.tsv")) as f:
            rows = [line.rstrip("\n").split("\t") for line in f]
        if rows[0] != ["name", "rva", "size", "parent"]:
            die("bad header in v%d/sample.funcs.tsv" % v)
        for name, rva, _, parent in rows[1:]:
            self.funcs[name] = (int(rva, 16), parent)
        with open(os.path.join(bin_dir, "v%d" % v, "sample.map")) as f:
            self.map_words = set(re.findall(r"[^\s()]+", f.read()))

        self.code = {}           # function name -> (object, section)
        self.data = {}           # data object name -> (object, section, offset, size)
        self.extent = {}         # (object path, section index) -> [(start, end, name)]
        self.literal_bounds = {}  # (object path, section index) -> sorted offsets
        for o in self.objects:
            self._index(o)
        self._memo = {}

    def _index(self, o):
        sizes = dwarf_variable_sizes(o.path)
        o.tails = rel32_tails(o)
        by_section = {}
        for sym in o.symbols.values():
            sec = o.section_of(sym)
            if sec is None or sym.is_section:
                continue
            if sym.sclass not in (IMAGE_SYM_CLASS_EXTERNAL, IMAGE_SYM_CLASS_STATIC):
                continue
            by_section.setdefault(sec.index, []).append(sym)
            if sec.is_code:
                if not sym.is_function:
                    continue
                if sym.value != 0:
                    die("%s: function %s does not start its section" % (o.path, sym.name))
                if sym.name in self.code and sym.name in self.funcs:
                    die("v%d: function %s defined in %s and %s" % (
                        self.v, sym.name, self.code[sym.name][0].path, o.path))
                self.code[sym.name] = (o, sec)
            elif base_section(sec.name) in DATA_SECTIONS and not LITERAL_RE.match(sym.name) \
                    and not sym.name.startswith((".", "$", "@")):
                if sym.name not in sizes:
                    if sym.name.startswith(".refptr."):
                        continue    # gcc's pointer to an external object (named after it)
                    die("%s: data symbol %s has no DWARF variable" % (o.path, sym.name))
                size = sizes[sym.name]
                if sym.value + size > sec.size:
                    die("%s: %s extends past its section" % (o.path, sym.name))
                # a COMDAT object may have been dropped by the linker (/opt:ref)
                if sec.comdat and sym.name not in self.map_words:
                    continue
                if sym.name in self.data:
                    die("v%d: data object %s defined twice" % (self.v, sym.name))
                self.data[sym.name] = (o, sec, sym.value, size)
                self.extent.setdefault((o.path, sec.index), []).append(
                    (sym.value, sym.value + size, sym.name))
        for secidx, syms in by_section.items():
            sec = o.sections[secidx - 1]
            if sec.is_code:
                names = [s.name for s in syms if s.is_function]
                if len(names) > 1:
                    die("%s: section %d holds several functions %s" % (o.path, secidx, names))
        # Boundaries of anonymous constants: every symbol and every offset a
        # section-relative relocation of this object points at.
        for sec in o.sections:
            bounds = {0, sec.size}
            for sym in by_section.get(sec.index, []):
                bounds.add(sym.value)
            for start, end, _ in self.extent.get((o.path, sec.index), []):
                bounds.add(end)
            self.literal_bounds[(o.path, sec.index)] = bounds
        for sec in o.sections:
            if sec.name.startswith(".debug"):
                continue
            for off, symidx, typ in sec.relocs:
                sym = o.symbols[symidx]
                tsec = o.section_of(sym)
                if tsec is None or not (sym.is_section or LITERAL_RE.match(sym.name)):
                    continue
                target = sym.value + self.addend(o, sec, off, typ)
                if 0 <= target <= tsec.size:
                    self.literal_bounds[(o.path, tsec.index)].add(target)
        for k in self.literal_bounds:
            self.literal_bounds[k] = sorted(self.literal_bounds[k])

    # -- canonical form of relocation targets and section contents -----------
    def addend(self, o, sec, off, typ):
        """The offset from the target symbol that a relocation refers to."""
        _, _, _, addend = reloc_field(o.machine, typ, sec.data, off)
        if o.machine == MACHINE_AMD64 and 0x4 <= typ <= 0x9 and sec.is_code:
            if (sec.index, off) not in o.tails:
                die("%s: %s: no instruction for the relocation at 0x%x" % (o.path, sec.name, off))
            # REL32_k already accounts for k bytes after the field
            addend += o.tails[(sec.index, off)] - (typ - 0x4)
        return addend

    def target(self, o, symidx, addend, stack=()):
        sym = o.symbols[symidx]
        sec = o.section_of(sym)
        if sec is None or not (sym.is_section or LITERAL_RE.match(sym.name)):
            return ("sym", sym.name, addend)
        off = sym.value + addend
        if sec.is_code:
            funcs = [s for s in o.symbols.values()
                     if s.secnum == sec.index and s.is_function and not s.is_section]
            if len(funcs) != 1:
                die("%s: reference into %s, which holds %d functions" % (o.path, sec.name, len(funcs)))
            return ("sym", funcs[0].name, off - funcs[0].value)
        for start, end, name in self.extent.get((o.path, sec.index), []):
            if start <= off < end:
                return ("sym", name, off - start)
        bounds = self.literal_bounds[(o.path, sec.index)]
        lo = max(b for b in bounds if b <= off) if off >= 0 else None
        if lo is None or off > sec.size:
            die("%s: reference to %s%+d outside the section" % (o.path, sec.name, off))
        hi = min([b for b in bounds if b > lo] or [sec.size])
        return ("lit", self.content(o, sec, lo, hi, literal=True, stack=stack), off - lo)

    def content(self, o, sec, lo, hi, literal=False, stack=()):
        """Bytes [lo, hi) of a section with relocated fields masked, and the
        relocations inside, with canonical targets."""
        key = (o.path, sec.index, lo, hi, literal)
        if key in self._memo:
            return self._memo[key]
        if key in stack:
            return ("cycle", stack.index(key))
        stack = stack + (key,)
        if sec.is_bss:
            result = ("bss", hi - lo)
        else:
            buf = bytearray(sec.data[lo:hi])
            rels = []
            for off, symidx, typ in sorted(sec.relocs):
                if not (lo <= off < hi):
                    continue
                start, length, mask, _ = reloc_field(o.machine, typ, sec.data, off)
                mask_field(buf, start - lo, length, mask)
                rels.append((off - lo, typ,
                             self.target(o, symidx, self.addend(o, sec, off, typ), stack)))
            data = bytes(buf)
            if literal and not (sec.comdat and lo == 0 and hi == sec.size):
                # an anonymous constant delimited by the next thing referenced:
                # alignment padding (zeros) may follow it
                data = data.rstrip(b"\0")
            result = ("bytes", data, tuple(rels))
        self._memo[key] = result
        return result

    def function_key(self, name):
        o, sec = self.code[name]
        return self.content(o, sec, 0, sec.size)

    def data_key(self, name):
        o, sec, off, size = self.data[name]
        return (base_section(sec.name), size, self.content(o, sec, off, off + size))


# ---------------------------------------------------------------------------
# Import library (code no object compiles: GNU ld's import stubs)

def import_records(path):
    """{symbol: (machine, ordinal/hint, type word, dll)} of the short import members."""
    with open(path, "rb") as f:
        d = f.read()
    if d[:8] != b"!<arch>\n":
        die("%s: not an archive" % path)
    out = {}
    pos = 8
    while pos + 60 <= len(d):
        size = int(d[pos + 48:pos + 58].decode("ascii").strip())
        body = d[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if len(body) < 20 or struct.unpack_from("<HH", body, 0) != (0, 0xFFFF):
            continue
        machine, _, _, hint, typ = struct.unpack_from("<HIIHH", body, 6)
        names = body[20:].split(b"\0")
        out[names[0].decode("latin-1")] = (machine, hint, typ, names[1].decode("latin-1"))
    return out


# ---------------------------------------------------------------------------

def fragments(ver, name):
    """{part name: key} of a function and the parts split off it."""
    parts = [name] + sorted(n for n, (_, parent) in ver.funcs.items() if parent == name)
    out = {}
    for p in parts:
        if p in ver.code:
            out[p] = ver.function_key(p)
        elif p in ver.imports:
            out[p] = ("import",) + ver.imports[p]
        else:
            die("v%d: %s is in sample.funcs.tsv but in no object or import record" % (ver.v, p))
    return out


def explain(old, new, name):
    a, b = fragments(old, name), fragments(new, name)
    if sorted(a) != sorted(b):
        return "parts %s -> %s" % (sorted(a), sorted(b))
    why = []
    for p in sorted(a):
        ka, kb = a[p], b[p]
        if ka == kb:
            continue
        if ka[0] != "bytes" or kb[0] != "bytes":
            why.append("%s: differs" % p)
            continue
        if ka[1] != kb[1]:
            why.append("%s: code %d -> %d bytes" % (p, len(ka[1]), len(kb[1])))
        if len(ka[2]) != len(kb[2]):
            why.append("%s: %d -> %d relocations" % (p, len(ka[2]), len(kb[2])))
        else:
            for ra, rb in zip(ka[2], kb[2]):
                if ra != rb:
                    def short(r):
                        t = r[2]
                        what = t[1] if t[0] == "sym" else "literal"
                        return "%#x %s%+d" % (r[0], what, t[2])
                    why.append("%s: relocation %s -> %s" % (p, short(ra), short(rb)))
                    break
    return "; ".join(why)


def diff_pair(old, new, out_dir, explain_mode):
    tops_old = {n for n, (_, parent) in old.funcs.items() if not parent}
    tops_new = {n for n, (_, parent) in new.funcs.items() if not parent}
    rows = []
    counts = {"unchanged": 0, "modified": 0, "added": 0, "removed": 0}
    for name in sorted(tops_old | tops_new):
        if name not in tops_new:
            status = "removed"
        elif name not in tops_old:
            status = "added"
        else:
            status = "unchanged" if fragments(old, name) == fragments(new, name) else "modified"
        counts[status] += 1
        rows.append((name, status,
                     "0x%x" % old.funcs[name][0] if name in tops_old else "",
                     "0x%x" % new.funcs[name][0] if name in tops_new else ""))
        if explain_mode and status == "modified":
            print("    %-28s %s" % (name, explain(old, new, name)))
    path = os.path.join(out_dir, "diff-v%d-v%d.tsv" % (old.v, new.v))
    with open(path, "w") as f:
        f.write("name\tstatus\told_rva\tnew_rva\n")
        for r in rows:
            f.write("\t".join(r) + "\n")

    drows = []
    for name in sorted(set(old.data) | set(new.data)):
        if name not in new.data:
            status = "removed"
        elif name not in old.data:
            status = "added"
        elif old.data_key(name) != new.data_key(name):
            status = "modified"
        else:
            continue
        section = base_section((new.data.get(name) or old.data[name])[1].name)
        drows.append((name, section, status,
                      str(old.data[name][3]) if name in old.data else "",
                      str(new.data[name][3]) if name in new.data else ""))
    with open(os.path.join(out_dir, "diff-v%d-v%d.data.tsv" % (old.v, new.v)), "w") as f:
        f.write("name\tsection\tstatus\told_size\tnew_size\n")
        for r in drows:
            f.write("\t".join(r) + "\n")
    return counts, rows, drows


def names_with(rows, status):
    return " ".join(r[0] for r in rows if r[1] == status) or "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--obj", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--implib", required=True)
    ap.add_argument("--pairs", default=DEFAULT_PAIRS)
    ap.add_argument("--explain", action="store_true",
                    help="print why each modified function differs")
    args = ap.parse_args()

    pairs = [tuple(int(x) for x in p.split("-")) for p in args.pairs.split(",")]
    imports = import_records(args.implib)
    versions = {}
    for v in sorted({v for p in pairs for v in p}):
        ver = Version(args.obj, args.bin, v, imports)
        for name in ver.funcs:
            if name not in ver.code and name not in imports:
                die("v%d: function %s of sample.funcs.tsv is in no object" % (v, name))
        versions[v] = ver
    build = os.path.basename(os.path.normpath(args.bin))
    for a, b in pairs:
        if args.explain:
            print("%s v%d -> v%d" % (build, a, b))
        counts, rows, drows = diff_pair(versions[a], versions[b], args.bin, args.explain)
        print("%-18s v%d->v%d: %d unchanged, %d modified, %d added, %d removed; "
              "modified: %s; added: %s; removed: %s; data: %s" % (
                  build, a, b, counts["unchanged"], counts["modified"], counts["added"],
                  counts["removed"], names_with(rows, "modified"), names_with(rows, "added"),
                  names_with(rows, "removed"),
                  " ".join("%s(%s)" % (r[0], r[2]) for r in drows) or "-"))


if __name__ == "__main__":
    main()
