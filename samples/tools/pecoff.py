"""Minimal PE/COFF reader (standard library only) used by the sample tools."""

import struct

MACHINE_AMD64 = 0x8664
MACHINE_ARM64 = 0xAA64


class Section:
    def __init__(self, name, vsize, rva, rawsize, rawptr, chars):
        self.name = name
        self.vsize = vsize
        self.rva = rva
        self.rawsize = rawsize
        self.rawptr = rawptr
        self.chars = chars


class Symbol:
    def __init__(self, name, value, secnum, typ, sclass):
        self.name = name
        self.value = value      # offset inside the section
        self.secnum = secnum    # 1-based section number, <= 0 for special
        self.type = typ
        self.sclass = sclass
        self.rva = None


class PE:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        if d[:2] != b"MZ":
            raise ValueError("%s: not an MZ image" % path)
        self.pe_off = struct.unpack_from("<I", d, 0x3C)[0]
        if d[self.pe_off:self.pe_off + 4] != b"PE\0\0":
            raise ValueError("%s: no PE signature" % path)
        fh = self.pe_off + 4
        (self.machine, nsec, self.timestamp, self.symptr, self.nsyms,
         self.opt_size, self.characteristics) = struct.unpack_from("<HHIIIHH", d, fh)
        self.file_header_off = fh
        opt = fh + 20
        magic = struct.unpack_from("<H", d, opt)[0]
        if magic != 0x20B:
            raise ValueError("%s: not PE32+" % path)
        self.entry_rva = struct.unpack_from("<I", d, opt + 16)[0]
        self.image_base = struct.unpack_from("<Q", d, opt + 24)[0]
        ndirs = struct.unpack_from("<I", d, opt + 108)[0]
        self.dirs = [struct.unpack_from("<II", d, opt + 112 + 8 * i) for i in range(ndirs)]
        self.optional_header_off = opt
        sh = opt + self.opt_size
        self.strtab_off = self.symptr + 18 * self.nsyms if self.symptr else None
        self.sections = []
        for i in range(nsec):
            raw = d[sh + 40 * i: sh + 40 * (i + 1)]
            name = raw[:8].rstrip(b"\0").decode("latin-1")
            vsize, rva, rawsize, rawptr = struct.unpack_from("<IIII", raw, 8)
            chars = struct.unpack_from("<I", raw, 36)[0]
            if name.startswith("/") and self.strtab_off is not None:
                name = self._strtab_string(int(name[1:]))
            self.sections.append(Section(name, vsize, rva, rawsize, rawptr, chars))
        self.section_headers_off = sh
        self.symbols = self._read_symbols() if self.symptr else []

    # -- helpers -----------------------------------------------------------
    def _strtab_string(self, off):
        start = self.strtab_off + off
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode("latin-1")

    def _read_symbols(self):
        d = self.data
        out = []
        i = 0
        while i < self.nsyms:
            off = self.symptr + 18 * i
            raw = d[off:off + 18]
            if raw[:4] == b"\0\0\0\0":
                name = self._strtab_string(struct.unpack_from("<I", raw, 4)[0])
            else:
                name = raw[:8].rstrip(b"\0").decode("latin-1")
            value, secnum, typ, sclass, naux = struct.unpack_from("<IhHBB", raw, 8)
            sym = Symbol(name, value, secnum, typ, sclass)
            if 1 <= secnum <= len(self.sections):
                sym.rva = self.sections[secnum - 1].rva + value
            out.append(sym)
            i += 1 + naux
        return out

    def section(self, name):
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_bytes(self, name_or_sec):
        s = self.section(name_or_sec) if isinstance(name_or_sec, str) else name_or_sec
        raw = self.data[s.rawptr:s.rawptr + min(s.rawsize, s.vsize)]
        if len(raw) < s.vsize:
            raw += b"\0" * (s.vsize - len(raw))
        return raw

    def read(self, rva, size):
        for s in self.sections:
            if s.rva <= rva and rva + size <= s.rva + max(s.vsize, s.rawsize):
                b = self.section_bytes(s)
                return b[rva - s.rva: rva - s.rva + size]
        raise ValueError("rva 0x%x+%d not mapped" % (rva, size))

    def cstring(self, rva):
        for s in self.sections:
            if s.rva <= rva < s.rva + max(s.vsize, s.rawsize):
                b = self.section_bytes(s)[rva - s.rva:]
                return b[:b.index(b"\0")].decode("latin-1")
        raise ValueError("rva 0x%x not mapped" % rva)

    def text(self):
        return self.section(".text")

    def pdata(self):
        """Returns a list of (begin_rva, end_rva_or_None, unwind_word)."""
        rva, size = self.dirs[3] if len(self.dirs) > 3 else (0, 0)
        if not rva or not size:
            return []
        raw = self.read(rva, size)
        out = []
        if self.machine == MACHINE_AMD64:
            for i in range(0, size - size % 12, 12):
                b, e, u = struct.unpack_from("<III", raw, i)
                if b or e:
                    out.append((b, e, u))
        elif self.machine == MACHINE_ARM64:
            for i in range(0, size - size % 8, 8):
                b, u = struct.unpack_from("<II", raw, i)
                if not b:
                    continue
                flag = u & 3
                if flag:  # packed unwind data: FunctionLength in 4-byte units, bits 2..12
                    length = ((u >> 2) & 0x7FF) * 4
                    out.append((b, b + length, u))
                else:     # .xdata record: FunctionLength in bits 0..17 of the first word
                    x = struct.unpack_from("<I", self.read(u, 4))[0]
                    length = (x & 0x3FFFF) * 4
                    out.append((b, b + length, u))
        return out

    def exports(self):
        """Returns {name_or_'#ordinal': rva}."""
        rva, size = self.dirs[0]
        if not rva:
            return {}
        hdr = self.read(rva, 40)
        (_, _, _, _, _name, base, nfuncs, nnames, funcs, names, ords) = struct.unpack_from(
            "<IIHHIIIIIII", hdr)
        eat = struct.unpack_from("<%dI" % nfuncs, self.read(funcs, 4 * nfuncs)) if nfuncs else ()
        npt = struct.unpack_from("<%dI" % nnames, self.read(names, 4 * nnames)) if nnames else ()
        ot = struct.unpack_from("<%dH" % nnames, self.read(ords, 2 * nnames)) if nnames else ()
        out = {}
        named = set()
        for n_rva, idx in zip(npt, ot):
            out[self.cstring(n_rva)] = eat[idx]
            named.add(idx)
        for idx, f in enumerate(eat):
            if f and idx not in named:
                out["#%d" % (base + idx)] = f
        return out

    def imports(self):
        """Returns [(dll, [name or '#ordinal', ...])]."""
        rva, size = self.dirs[1]
        out = []
        if not rva:
            return out
        i = 0
        while True:
            desc = self.read(rva + 20 * i, 20)
            ilt, _, _, name_rva, iat = struct.unpack_from("<IIIII", desc)
            if not (ilt or name_rva or iat):
                break
            dll = self.cstring(name_rva)
            names = []
            j = 0
            while True:
                ent = struct.unpack_from("<Q", self.read((ilt or iat) + 8 * j, 8))[0]
                if not ent:
                    break
                if ent >> 63:
                    names.append("#%d" % (ent & 0xFFFF))
                else:
                    names.append(self.cstring((ent & 0x7FFFFFFF) + 2))
                j += 1
            out.append((dll, names))
            i += 1
        return out

    def base_relocs(self):
        """Returns the sorted RVAs of all DIR64 base relocations."""
        rva, size = self.dirs[5] if len(self.dirs) > 5 else (0, 0)
        out = []
        if not rva:
            return out
        raw = self.read(rva, size)
        off = 0
        while off + 8 <= size:
            page, bsize = struct.unpack_from("<II", raw, off)
            if bsize < 8:
                break
            for (ent,) in struct.iter_unpack("<H", raw[off + 8: off + bsize]):
                if ent >> 12 == 10:     # IMAGE_REL_BASED_DIR64
                    out.append(page + (ent & 0xFFF))
            off += bsize
        return sorted(out)

    def loaded_sections(self):
        """Sections that are part of the mapped image (not DWARF debug sections)."""
        return [s for s in self.sections if not s.name.startswith(".debug")]


# ---------------------------------------------------------------------------
# COFF object files (.o / .obj)

IMAGE_SCN_CNT_CODE = 0x20
IMAGE_SCN_CNT_UNINITIALIZED_DATA = 0x80
IMAGE_SCN_LNK_NRELOC_OVFL = 0x01000000
IMAGE_SYM_CLASS_EXTERNAL = 2
IMAGE_SYM_CLASS_STATIC = 3
IMAGE_SYM_DTYPE_FUNCTION = 0x20


class ObjSection:
    def __init__(self, index, name, size, rawptr, relptr, nrel, chars):
        self.index = index      # 1-based
        self.name = name
        self.size = size
        self.rawptr = rawptr
        self.relptr = relptr
        self.nrel = nrel
        self.chars = chars
        self.data = b""
        self.relocs = []        # [(offset, symbol_index, type)]
        self.comdat = 0         # COMDAT selection from the section definition (0: none)

    @property
    def is_code(self):
        return bool(self.chars & IMAGE_SCN_CNT_CODE)

    @property
    def is_bss(self):
        return bool(self.chars & IMAGE_SCN_CNT_UNINITIALIZED_DATA)


class ObjSymbol:
    def __init__(self, index, name, value, secnum, typ, sclass, naux):
        self.index = index      # index in the symbol table (aux records count)
        self.name = name
        self.value = value
        self.secnum = secnum
        self.type = typ
        self.sclass = sclass
        self.naux = naux
        self.is_section = False  # the section's own symbol (static, with a section definition)

    @property
    def is_function(self):
        return self.type == IMAGE_SYM_DTYPE_FUNCTION


class COFFObject:
    """A COFF relocatable object: sections with their bytes and relocations,
    and the symbol table (indexed as the relocations index it)."""

    def __init__(self, path):
        with open(path, "rb") as f:
            d = f.read()
        self.path = path
        (self.machine, nsec, _, symptr, nsyms, optsize, _) = struct.unpack_from("<HHIIIHH", d, 0)
        if self.machine not in (MACHINE_AMD64, MACHINE_ARM64) or optsize:
            raise ValueError("%s: not an x64/arm64 COFF object" % path)
        strtab = symptr + 18 * nsyms

        def string(off):
            end = d.index(b"\0", strtab + off)
            return d[strtab + off:end].decode("latin-1")

        self.sections = []
        for i in range(nsec):
            off = 20 + 40 * i
            raw = d[off:off + 8]
            name = raw.rstrip(b"\0").decode("latin-1")
            if name.startswith("/"):
                name = string(int(name[1:]))
            (_, _, size, rawptr, relptr, _, nrel, _, chars) = struct.unpack_from(
                "<IIIIIIHHI", d, off + 8)
            if chars & IMAGE_SCN_LNK_NRELOC_OVFL:
                raise ValueError("%s: section %s: relocation count overflow" % (path, name))
            s = ObjSection(i + 1, name, size, rawptr, relptr, nrel, chars)
            if not s.is_bss:
                s.data = d[rawptr:rawptr + size]
            for j in range(nrel):
                s.relocs.append(struct.unpack_from("<IIH", d, relptr + 10 * j))
            self.sections.append(s)

        self.symbols = {}
        i = 0
        while i < nsyms:
            off = symptr + 18 * i
            raw = d[off:off + 18]
            if raw[:4] == b"\0\0\0\0":
                name = string(struct.unpack_from("<I", raw, 4)[0])
            else:
                name = raw[:8].rstrip(b"\0").decode("latin-1")
            value, secnum, typ, sclass, naux = struct.unpack_from("<IhHBB", raw, 8)
            sym = ObjSymbol(i, name, value, secnum, typ, sclass, naux)
            if (sclass == IMAGE_SYM_CLASS_STATIC and naux and value == 0 and
                    1 <= secnum <= nsec and self.sections[secnum - 1].name == name):
                sym.is_section = True
                aux = d[off + 18:off + 36]
                self.sections[secnum - 1].comdat = aux[14]
            self.symbols[i] = sym
            i += 1 + naux

    def section_of(self, sym):
        if 1 <= sym.secnum <= len(self.sections):
            return self.sections[sym.secnum - 1]
        return None
