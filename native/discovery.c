/*
 * Function discovery's loops over code, in C; the twins live in
 * hpatch/_fallback/discovery.py.
 *
 * x64_code_extent walks a function's control flow as capstone decodes it. Capstone
 * is the oracle of what an instruction is (its length, whether it decodes, its
 * mnemonic), and the walk must decode exactly as it does: a Python loop over
 * millions of instructions cost microseconds each, most of the time of discovering
 * a large DLL, and capstone itself, reached from C, still took 0.2 us each.
 * So the walk lays out an instruction itself when its shape is one that capstone
 * was checked to decode the same way in every ModRM, SIB and REX form (the
 * x64_*_forms tables, made by the generator at the end of this file), and asks
 * capstone's own cs_disasm_iter for anything else, through the entry points of the
 * library the capstone package loaded (hpatch.arch.x64 passes them).
 *
 * gap_evidence and gap_leaves are the rounds of leaf discovery
 * (hpatch/image/functions.py): the evidence of every candidate start in the gaps
 * between .pdata ranges, from 270,000 references on a large DLL, and the walk of a
 * gap over its candidates, which asks the image and the arch (through callbacks) only
 * where a function may start. gap_leaves holds the GIL: it calls back at every step.
 * gap_evidence weighs the references without it, over C arrays, then takes it back to
 * ask the checks and make the lists. A long walk or run of padding lets go of it too,
 * so that another thread (the diff discovers two images at once) runs meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"

/* The walk's limits: the same numbers as hpatch/_fallback/discovery.py. */
#define EXTENT_WINDOW 256

/* Work done before a call lets go of the GIL: most calls are a few microseconds,
 * shorter than another thread takes to wake up and run, and each release costs both
 * threads a hand-over; a long walk or run of padding frees it for the rest. About
 * 50 us of work each. */
#define WALK_WITH_GIL 2048     /* instructions */
#define PADDING_WITH_GIL 65536 /* bytes */


/* What an instruction does to the walk, from capstone's mnemonic (see classify):
 * K_TRAP int3; K_STOP a return, ud2 or hlt; K_BRANCH a direct conditional branch
 * or loop; K_JMP a direct jmp; K_JMP_INDIRECT any other jmp; K_NORMAL the rest. */
enum { K_NORMAL = 0, K_TRAP = 1, K_STOP = 2, K_BRANCH = 3, K_JMP = 4, K_JMP_INDIRECT = 5 };

/* An opcode's layout after it: a ModRM (and SIB and displacement) and the immediate. */
enum {
    L_MODRM = 1 << 0,
    L_IMM8 = 1 << 1,
    L_IMMZ = 1 << 2,
    L_IMMV = 1 << 3,
    L_REL8 = 1 << 4,
    L_REL32 = 1 << 5,
    L_IMM16 = 1 << 6,
    L_ENTER = 1 << 7,
    L_MOFFS = 1 << 8,
    L_GRP3 = 1 << 9,
    L_BAD = 1 << 10,
};

static unsigned legacy_layout(unsigned map, unsigned op)
{
    if (map == 2)
        return L_MODRM;
    if (map == 3)
        return L_MODRM | L_IMM8;
    if (map == 1) {
        switch (op) {
        case 0x0F: case 0x38: case 0x3A: return L_BAD;
        case 0x70: case 0x71: case 0x72: case 0x73: return L_MODRM | L_IMM8;
        case 0xA4: case 0xAC: case 0xBA: return L_MODRM | L_IMM8;
        case 0xC2: case 0xC4: case 0xC5: case 0xC6: return L_MODRM | L_IMM8;
        default: break;
        }
        if (op <= 0x03) return L_MODRM;
        if (op <= 0x0F) return 0;
        if (op >= 0x30 && op <= 0x37) return 0;
        if (op >= 0x80 && op <= 0x8F) return L_REL32;
        if (op >= 0xA0 && op <= 0xA2) return 0;
        if (op >= 0xA8 && op <= 0xAA) return 0;
        if (op >= 0xC8 && op <= 0xCF) return 0;
        return L_MODRM;
    }
    if (op < 0x40) {
        unsigned low = op & 7;
        if (low < 4) return L_MODRM;
        if (low == 4) return L_IMM8;
        if (low == 5) return L_IMMZ;
        return L_BAD;
    }
    if (op < 0x60) return 0;
    switch (op) {
    case 0x63: return L_MODRM;
    case 0x68: return L_IMMZ;
    case 0x69: return L_MODRM | L_IMMZ;
    case 0x6A: return L_IMM8;
    case 0x6B: return L_MODRM | L_IMM8;
    case 0x80: case 0x83: return L_MODRM | L_IMM8;
    case 0x81: return L_MODRM | L_IMMZ;
    case 0xA8: return L_IMM8;
    case 0xA9: return L_IMMZ;
    case 0xC0: case 0xC1: case 0xC6: return L_MODRM | L_IMM8;
    case 0xC2: case 0xCA: return L_IMM16;
    case 0xC7: return L_MODRM | L_IMMZ;
    case 0xC8: return L_ENTER;
    case 0xCD: return L_IMM8;
    case 0xE8: case 0xE9: return L_REL32;
    case 0xEB: return L_REL8;
    case 0xF6: case 0xF7: return L_MODRM | L_GRP3;
    case 0x0F: case 0x60: case 0x61: case 0x62: case 0x82: case 0x8F: case 0x9A: case 0xC4:
    case 0xC5: case 0xCE: case 0xD4: case 0xD5: case 0xD6: case 0xEA:
    case 0x26: case 0x2E: case 0x36: case 0x3E: case 0x64: case 0x65: case 0x66: case 0x67:
    case 0xF0: case 0xF2: case 0xF3:
        return L_BAD;
    default: break;
    }
    if (op >= 0x70 && op <= 0x7F) return L_REL8;
    if (op >= 0x84 && op <= 0x8E) return L_MODRM;
    if (op >= 0xA0 && op <= 0xA3) return L_MOFFS;
    if (op >= 0xB0 && op <= 0xB7) return L_IMM8;
    if (op >= 0xB8 && op <= 0xBF) return L_IMMV;
    if (op >= 0xD0 && op <= 0xD3) return L_MODRM;
    if (op >= 0xD8 && op <= 0xDF) return L_MODRM;
    if (op >= 0xE0 && op <= 0xE3) return L_REL8;
    if (op >= 0xE4 && op <= 0xE7) return L_IMM8;
    if (op == 0xFE || op == 0xFF) return L_MODRM;
    return 0;
}

static unsigned vex_layout(unsigned map, unsigned op)
{
    if (map == 1 && op == 0x77) return 0;
    if (map == 3) return L_MODRM | L_IMM8;
    if (map == 1 && ((op >= 0x70 && op <= 0x73) || op == 0xC2 || (op >= 0xC4 && op <= 0xC6)))
        return L_MODRM | L_IMM8;
    return L_MODRM;
}

static int legacy_kind(unsigned map, unsigned op, unsigned reg)
{
    if (map == 0) {
        switch (op) {
        case 0xCC: return K_TRAP;
        case 0xC2: case 0xC3: case 0xCA: case 0xCB: case 0xCF: case 0xF4: return K_STOP;
        case 0xE9: case 0xEB: return K_JMP;
        case 0xFF: return reg == 4 ? K_JMP_INDIRECT : K_NORMAL;
        default: break;
        }
        if ((op >= 0x70 && op <= 0x7F) || (op >= 0xE0 && op <= 0xE3)) return K_BRANCH;
    } else if (map == 1) {
        if (op == 0x0B) return K_STOP;
        if (op >= 0x80 && op <= 0x8F) return K_BRANCH;
    }
    return K_NORMAL;
}

/* One instruction, as the walk sees it. */
typedef struct {
    size_t length;
    int kind;
    int64_t target; /* of K_BRANCH and K_JMP */
} fast_insn_t;

/* Where an instruction's shape is looked up in the x64_*_forms tables. */
typedef struct {
    int vex;            /* 0 legacy, 1 vex */
    unsigned pfx;       /* legacy: 0 none 1 66 2 F3 3 F2; vex: pp */
    unsigned map, op, l, w, v1111;
    unsigned sub;       /* (mod == 3 ? 8 : 0) | reg, 16 without a ModRM */
} fast_key_t;

/* Lay out the instruction at `code` (`avail` bytes, at most 15 read) by the generic
 * rules of its opcode map, and set its table key: 1 if laid out, 0 if it has a shape
 * the tables do not cover (other prefixes, XOP, EVEX) or is cut short. Whether
 * capstone agrees is the tables' answer, see fast_certain. */
static int fast_layout(const uint8_t *code, size_t avail, int64_t rva, fast_insn_t *out,
                       fast_key_t *key)
{
    size_t i = 0, limit = avail < 15 ? avail : 15;
    unsigned rex = 0, flags, op, map = 0;
    int opsize16 = 0;
    memset(key, 0, sizeof *key);
    if (limit == 0) return 0;
    uint8_t b = code[0];
    if (b == 0x66) { key->pfx = 1; opsize16 = 1; i = 1; }
    else if (b == 0xF3) { key->pfx = 2; i = 1; }
    else if (b == 0xF2) { key->pfx = 3; i = 1; }
    if (i < limit && (code[i] & 0xF0) == 0x40) rex = code[i++];
    if (i >= limit) return 0;
    op = code[i++];
    if (op == 0xC4 || op == 0xC5) {
        if (i != 1) return 0; /* prefixes before VEX: left to capstone */
        key->vex = 1;
        if (op == 0xC5) {
            if (i + 1 > limit) return 0;
            unsigned p = code[i];
            key->map = 1;
            key->pfx = p & 3;
            key->l = (p >> 2) & 1;
            key->w = 0;
            key->v1111 = ((p >> 3) & 15) == 15;
            i += 1;
        } else {
            if (i + 2 > limit) return 0;
            unsigned p0 = code[i], p1 = code[i + 1];
            key->map = p0 & 0x1F;
            key->pfx = p1 & 3;
            key->l = (p1 >> 2) & 1;
            key->w = p1 >> 7;
            key->v1111 = ((p1 >> 3) & 15) == 15;
            i += 2;
        }
        if (key->map < 1 || key->map > 3 || i >= limit) return 0;
        op = code[i++];
        key->op = op;
        map = key->map;
        flags = vex_layout(map, op);
    } else {
        if (op == 0x0F) {
            if (i >= limit) return 0;
            op = code[i++];
            map = 1;
            if (op == 0x38 || op == 0x3A) {
                if (i >= limit) return 0;
                map = op == 0x38 ? 2 : 3;
                op = code[i++];
            }
        }
        key->map = map;
        key->op = op;
        flags = legacy_layout(map, op);
    }
    if (flags & L_BAD) return 0;
    unsigned reg = 0;
    key->sub = 16;
    if (flags & L_MODRM) {
        if (i >= limit) return 0;
        unsigned modrm = code[i++], mod = modrm >> 6, rm = modrm & 7;
        reg = (modrm >> 3) & 7;
        key->sub = (mod == 3 ? 8u : 0u) | reg;
        if (mod != 3) {
            size_t disp = 0;
            if (rm == 4) {
                if (i >= limit) return 0;
                unsigned sib = code[i++];
                if (mod == 0 && (sib & 7) == 5) disp = 4;
            } else if (mod == 0 && rm == 5) {
                disp = 4;
            }
            if (mod == 1) disp = 1;
            else if (mod == 2) disp = 4;
            i += disp;
        }
    }
    size_t imm = 0;
    if (flags & L_IMM8) imm = 1;
    if (flags & L_IMMZ) imm = opsize16 ? 2 : 4;
    if (flags & L_IMMV) imm = (rex & 8) ? 8 : (opsize16 ? 2 : 4);
    if (flags & L_IMM16) imm = 2;
    if (flags & L_ENTER) imm = 3;
    if (flags & L_REL8) imm = 1;
    if (flags & L_REL32) imm = 4;
    if (flags & L_GRP3) { if (reg < 2) imm = (op == 0xF6) ? 1 : (opsize16 ? 2 : 4); }
    if (flags & L_MOFFS) imm = 8;
    size_t at = i;
    i += imm;
    if (i > limit) return 0;
    out->length = i;
    out->kind = key->vex ? K_NORMAL : legacy_kind(map, op, reg);
    out->target = -1;
    if (flags & (L_REL8 | L_REL32)) {
        int64_t rel;
        if (imm == 1) rel = (int8_t)code[at];
        else {
            uint32_t v = (uint32_t)code[at] | ((uint32_t)code[at + 1] << 8) |
                         ((uint32_t)code[at + 2] << 16) | ((uint32_t)code[at + 3] << 24);
            rel = (int32_t)v;
        }
        out->target = rva + (int64_t)i + rel;
        /* capstone prints a target of 0 to 9 in decimal, which the twin does not
         * read as one */
        if (out->target >= 0 && out->target <= 9)
            out->kind = out->kind == K_JMP ? K_JMP_INDIRECT : K_NORMAL;
        /* past 32 bits either way: never followed, as classify says */
        if (out->target < 0 || out->target > 0xFFFFFFFFLL)
            out->target = -1;
    }
    return 1;
}

/* Generated by the program at the end of this file from capstone 5.0: a bit for
 * each shape whose every form capstone decodes with the length, kind and target
 * fast_layout gives. x64_all_forms: legacy shapes (prefix 0-3 << 10 | map << 8 |
 * opcode) good in every ModRM form; x64_some_forms: (shape, bit (mod == 3) * 8 +
 * reg of the ModRM forms that are); x64_vex_forms: VEX shapes, byte
 * (pp * 3 + map - 1) * 256 + opcode, bit L << 2 | W << 1 | (vvvv == 1111). */
static const uint64_t x64_all_forms[64] = {
    0x3f3f3f3f3f3f3f3fULL, 0xffffff08ffff0000ULL, 0xfffffffffbff0ffbULL,
    0x3ff2fbff018fbf0fULL, 0x00bff70082774becULL, 0xc371cffffffeffffULL,
    0xf8cbbf3fffffffffULL, 0x7f7eff3fff3eff57ULL, 0x0000000070000fffULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000003f00ULL,
    0x0000000000008000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000001000ULL, 0x1f1f1f1f1f1f1f1fULL, 0xfffffc08ffff0000ULL,
    0xfffffdfffbff0ff9ULL, 0x3f72fbff018fbf0bULL, 0x00bff70082334becULL,
    0xf071fffffff2ffffULL, 0xf8cbbf3ffffffffcULL, 0x7f7eff7fff7fff57ULL,
    0xffbf0b3f70b10fffULL, 0x0000000000000003ULL, 0x0000000000000000ULL,
    0x00400000f800bf00ULL, 0x0000000700f0ff00ULL, 0x0000000f00000017ULL,
    0x0000000000000000ULL, 0x000000008000d000ULL, 0x3f3f3f3f3f3f3f3fULL,
    0xffffff08ffff0000ULL, 0xfffffffffbff0ffbULL, 0x3ff2fbff018fbf03ULL,
    0x00bf340082474becULL, 0xc0018000ff0effffULL, 0xf9cbbf3fffffffffULL,
    0x000000400000ff07ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0040000000003f00ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000001000ULL,
    0x3f3f3f3f3f3f3f3fULL, 0x0000ff08ffff0000ULL, 0xfffffffffbff0ffbULL,
    0x3ff2f1f7018fb303ULL, 0x00bf340082074becULL, 0x30010000f702ffffULL,
    0xc8cbbf3fffff0000ULL, 0x000000400001ff07ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0003000000003f00ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000001000ULL,
};
static const uint16_t x64_some_forms[][2] = {
    {0x08c, 0x3f3f}, {0x08d, 0x00ff}, {0x08e, 0x3f3f}, {0x0c6, 0x0101}, {0x0c7, 0x0101}, {0x0d9, 0xcbfd},
    {0x0da, 0x0fff}, {0x0db, 0x6faf}, {0x0dc, 0xf3ff}, {0x0dd, 0x3ddf}, {0x0de, 0xf3ff}, {0x0df, 0x61ff},
    {0x0fe, 0x0303}, {0x0ff, 0x575f}, {0x100, 0x3f3f}, {0x101, 0x58df}, {0x113, 0x00ff}, {0x117, 0x00ff},
    {0x118, 0xf0ff}, {0x11c, 0x0001}, {0x11d, 0x00ff}, {0x11e, 0x00ff}, {0x120, 0xff00}, {0x121, 0xff00},
    {0x122, 0xff00}, {0x123, 0xff00}, {0x12b, 0x00ff}, {0x150, 0xff00}, {0x171, 0x5400}, {0x172, 0x5400},
    {0x173, 0x4400}, {0x1ae, 0x00ff}, {0x1b2, 0x00ff}, {0x1b4, 0x00ff}, {0x1b5, 0x00ff}, {0x1ba, 0xf0f0},
    {0x1c3, 0x00ff}, {0x1c5, 0xff00}, {0x1c7, 0xc0fa}, {0x1d7, 0xff00}, {0x1e7, 0x00ff}, {0x1f7, 0xff00},
    {0x2f0, 0x00ff}, {0x2f1, 0x00ff}, {0x2f6, 0x00ff}, {0x2f9, 0x00ff}, {0x48c, 0x3f3f}, {0x48d, 0x00ff},
    {0x48e, 0x3f3f}, {0x4c6, 0x0101}, {0x4d9, 0xcbfd}, {0x4da, 0x0fff}, {0x4db, 0x6faf}, {0x4dc, 0xf3ff},
    {0x4dd, 0x3ddf}, {0x4de, 0xf3ff}, {0x4df, 0x61ff}, {0x4f7, 0xfcfc}, {0x4fe, 0x0303}, {0x4ff, 0x577f},
    {0x500, 0x3f3f}, {0x501, 0x58df}, {0x512, 0x00ff}, {0x513, 0x00ff}, {0x516, 0x00ff}, {0x517, 0x00ff},
    {0x518, 0xf0ff}, {0x51c, 0x00ff}, {0x51d, 0x00ff}, {0x51e, 0x00ff}, {0x520, 0xff00}, {0x521, 0xff00},
    {0x522, 0xff00}, {0x523, 0xff00}, {0x52b, 0x00ff}, {0x550, 0xff00}, {0x571, 0x5400}, {0x572, 0x5400},
    {0x573, 0xcc00}, {0x579, 0xff00}, {0x5ae, 0x40cf}, {0x5b2, 0x00ff}, {0x5b4, 0x00ff}, {0x5b5, 0x00ff},
    {0x5ba, 0xf0f0}, {0x5c5, 0xff00}, {0x5c7, 0xc07a}, {0x5d7, 0xff00}, {0x5e7, 0x00ff}, {0x5f7, 0xff00},
    {0x62a, 0x00ff}, {0x680, 0x00ff}, {0x681, 0x00ff}, {0x682, 0x00ff}, {0x6f0, 0x00ff}, {0x6f1, 0x00ff},
    {0x6f5, 0x00ff}, {0x6f8, 0x00ff}, {0x6f9, 0x00ff}, {0x88c, 0x3f3f}, {0x88d, 0x00ff}, {0x88e, 0x3f3f},
    {0x8c6, 0x0101}, {0x8c7, 0x0101}, {0x8d9, 0xcbfd}, {0x8da, 0x0fff}, {0x8db, 0x6faf}, {0x8dc, 0xf3ff},
    {0x8dd, 0x3ddf}, {0x8de, 0xf3ff}, {0x8df, 0x61ff}, {0x8fe, 0x0303}, {0x8ff, 0x575f}, {0x900, 0x3f3f},
    {0x901, 0x58ff}, {0x918, 0xf0ff}, {0x91c, 0x0001}, {0x91d, 0x00ff}, {0x91e, 0x02ff}, {0x920, 0xff00},
    {0x921, 0xff00}, {0x922, 0xff00}, {0x923, 0xff00}, {0x92b, 0x00ff}, {0x9ae, 0x7f5f}, {0x9b2, 0x00ff},
    {0x9b4, 0x00ff}, {0x9b5, 0x00ff}, {0x9ba, 0xf0f0}, {0x9c7, 0x807a}, {0x9d6, 0xff00}, {0xaf9, 0x00ff},
    {0xc8c, 0x3f3f}, {0xc8d, 0x00ff}, {0xc8e, 0x3f3f}, {0xcc6, 0x0101}, {0xcc7, 0x0101}, {0xcd9, 0xcbfd},
    {0xcda, 0x0fff}, {0xcdb, 0x6faf}, {0xcdc, 0xf3ff}, {0xcdd, 0x3ddf}, {0xcde, 0xf3ff}, {0xcdf, 0x61ff},
    {0xcfe, 0x0303}, {0xcff, 0x476f}, {0xd00, 0x3f3f}, {0xd01, 0x58df}, {0xd18, 0xf0ff}, {0xd1c, 0x0001},
    {0xd1d, 0x00ff}, {0xd1e, 0x00ff}, {0xd20, 0xff00}, {0xd21, 0xff00}, {0xd22, 0xff00}, {0xd23, 0xff00},
    {0xd2b, 0x00ff}, {0xd79, 0xff00}, {0xdae, 0x400f}, {0xdb2, 0x00ff}, {0xdb4, 0x00ff}, {0xdb5, 0x00ff},
    {0xdba, 0xf0f0}, {0xdc7, 0x003a}, {0xdd6, 0xff00}, {0xdf0, 0x00ff}, {0xef9, 0x00ff},
};
static const uint64_t x64_vex_forms[384] = {
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x000fffff000faaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0xaaaa00000000aaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0xffffffffaaaaaa00ULL, 0xffffffffaaaaffffULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0xaa00000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x00ff000000ff0000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0f000f00000f0000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000ffff0000aaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0xaaaa00000000aaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0xffffffff0000aa00ULL, 0xffffffffaaaaffffULL,
    0xffffffffffffffffULL, 0xaa0affffffffffffULL, 0x00ffffff000000aaULL,
    0xaa0affff00000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x00ff000300ff0000ULL, 0x0000000000000000ULL, 0x000affffffffffffULL,
    0xffffffffffffffffULL, 0x00aaffffffffffffULL, 0xffffffffffffffffULL,
    0x00ffffffffffff00ULL, 0x00ffffffffffffffULL, 0xff33ffffffffffffULL,
    0x22223333ffffffffULL, 0xaa30000022000000ULL, 0x00aaaaaa00002022ULL,
    0x0000aaaaaaaaaaaaULL, 0x000000003300ffffULL, 0xff30aaaaaaaaaaaaULL,
    0xffffffffffffffffULL, 0xff33ff0000000affULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000002222ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000002222ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0xffff000000000000ULL,
    0xffffffffffffffffULL, 0xffff000000000000ULL, 0xffffffffffffffffULL,
    0xffff000000000000ULL, 0xffffffffffffffffULL, 0x0000000000000000ULL,
    0x3300000000000000ULL, 0x0000000000000000ULL, 0xffffffff0a000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0f00000000000000ULL,
    0x0000000000000000ULL, 0x0030222200338080ULL, 0xffffffffffffaaaaULL,
    0x0a0a020200000000ULL, 0x0000220000002030ULL, 0x00000000000f0f03ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000002030ULL,
    0x003000ff00ff0fffULL, 0x000000333333ffffULL, 0x0000000000000000ULL,
    0xffffffff00000000ULL, 0x0000000002020202ULL, 0xffffffffffffffffULL,
    0x0000000000000000ULL, 0xffffffffffffffffULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0xcccc000000000000ULL,
    0x0000000000000000ULL, 0x0a00000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x00aa000000aaaaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000aaaa00ff0000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x00000000ffffff00ULL, 0xffffffffaaffffffULL,
    0x0000000000000000ULL, 0xaa00000000000000ULL, 0x00000000000000aaULL,
    0xaa0a000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000ff0000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x00aa000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0f000f0000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000aaaaaaULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000aaaa00ff0000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x000000000000ff00ULL, 0xffffffff00ffffffULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x00000000000000aaULL,
    0x0000ffff00000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000ff0000ULL, 0x0000000000000000ULL, 0x00000000000000ffULL,
    0x0000000000000000ULL, 0x00aa000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0f0f0f0000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x0000000000000000ULL, 0x0000000000000000ULL,
    0x0000000000000000ULL, 0x000000000000000aULL, 0x0000000000000000ULL,
};

/* 1 if capstone decodes every form of the key's shape as fast_layout does. */
static int fast_certain(const fast_key_t *key)
{
    if (key->vex) {
        size_t index = ((size_t)key->pfx * 3 + key->map - 1) * 256 + key->op;
        unsigned bit = key->l << 2 | key->w << 1 | key->v1111;
        return (int)((x64_vex_forms[index >> 3] >> ((index & 7) * 8 + bit)) & 1);
    }
    unsigned shape = key->pfx << 10 | key->map << 8 | key->op;
    if ((x64_all_forms[shape >> 6] >> (shape & 63)) & 1)
        return 1;
    if (key->sub >= 16)
        return 0;
    size_t low = 0, high = sizeof x64_some_forms / sizeof x64_some_forms[0];
    while (low < high) {
        size_t mid = (low + high) / 2;
        if (x64_some_forms[mid][0] < shape)
            low = mid + 1;
        else
            high = mid;
    }
    return low < sizeof x64_some_forms / sizeof x64_some_forms[0] &&
           x64_some_forms[low][0] == shape && ((x64_some_forms[low][1] >> key->sub) & 1);
}

static int fast_decode(const uint8_t *code, size_t avail, int64_t rva, fast_insn_t *out)
{
    fast_key_t key;
    return fast_layout(code, avail, rva, out, &key) && fast_certain(&key);
}

/* capstone's API, as far as the walk uses it: cs_disasm_iter, cs_malloc, cs_free,
 * and where the size, mnemonic and operand text lie in a cs_insn (taken from the
 * capstone package's own ctypes declaration of the structure). */
typedef int (*cs_iter_fn)(size_t handle, const uint8_t **code, size_t *size, uint64_t *address,
                          void *insn);
typedef void *(*cs_malloc_fn)(size_t handle);
typedef void (*cs_free_fn)(void *insn, size_t count);

typedef struct {
    size_t handle;
    cs_iter_fn iter;
    cs_malloc_fn malloc_insn;
    cs_free_fn free_insn;
    size_t size_offset, mnemonic_offset, op_str_offset;
} capstone_t;

typedef struct {
    int64_t *items;
    size_t count, capacity;
} rva_stack_t;

static int push(rva_stack_t *stack, int64_t value)
{
    if (stack->count == stack->capacity) {
        size_t grown = stack->capacity ? stack->capacity * 2 : 64;
        int64_t *items = realloc(stack->items, grown * sizeof(int64_t));
        if (items == NULL)
            return -1;
        stack->items = items;
        stack->capacity = grown;
    }
    stack->items[stack->count++] = value;
    return 0;
}

typedef struct {
    const uint8_t *code;
    size_t len;
    int64_t start;
    const capstone_t *cs;
    void *insn;
    uint8_t *visited; /* one bit per byte of code */
    rva_stack_t pending;
    size_t decoded; /* instructions decoded so far */
} walk_t;

static int is_visited(const walk_t *walk, int64_t rva)
{
    size_t offset = (size_t)(rva - walk->start);
    return (walk->visited[offset >> 3] >> (offset & 7)) & 1;
}

static void visit(walk_t *walk, int64_t rva)
{
    size_t offset = (size_t)(rva - walk->start);
    walk->visited[offset >> 3] |= (uint8_t)(1u << (offset & 7));
}

/* A jump's operand as capstone prints a direct target ("0x" and hex digits, as the
 * twin's int(op_str, 16) reads it); 0 if it is not one. */
static int hex_target(const char *text, uint64_t *target)
{
    if (text[0] != '0' || text[1] != 'x' || text[2] == '\0')
        return 0;
    uint64_t value = 0;
    for (const char *p = text + 2; *p; p++) {
        unsigned digit;
        if (*p >= '0' && *p <= '9')
            digit = (unsigned)(*p - '0');
        else if (*p >= 'a' && *p <= 'f')
            digit = (unsigned)(*p - 'a' + 10);
        else if (*p >= 'A' && *p <= 'F')
            digit = (unsigned)(*p - 'A' + 10);
        else
            return 0;
        if (value >> 60)
            return 0; /* past 64 bits: past any bound */
        value = value << 4 | digit;
    }
    *target = value;
    return 1;
}

/* capstone's mnemonic and operand text as a kind and a target, the way the twin
 * reads them. */
static void classify(const char *mnemonic, const char *op_str, fast_insn_t *out)
{
    static const char *const stops[] = {"ret", "retf", "retfq", "iretq", "iretd", "iret",
                                        "ud2", "hlt"};
    out->kind = K_NORMAL;
    out->target = -1;
    if (strcmp(mnemonic, "int3") == 0) {
        out->kind = K_TRAP;
        return;
    }
    for (size_t i = 0; i < sizeof stops / sizeof stops[0]; i++)
        if (strcmp(mnemonic, stops[i]) == 0) {
            out->kind = K_STOP;
            return;
        }
    if (mnemonic[0] == 'j' || strncmp(mnemonic, "loop", 4) == 0) {
        uint64_t target;
        int direct = hex_target(op_str, &target);
        /* a target past 32 bits is past any bound: the twin does not follow it */
        if (direct && target <= 0xFFFFFFFFULL)
            out->target = (int64_t)target;
        if (strcmp(mnemonic, "jmp") == 0)
            out->kind = direct ? K_JMP : K_JMP_INDIRECT;
        else if (direct)
            out->kind = K_BRANCH;
    }
}

/* Decode the instruction at `offset`, reading no further than `window_end`: 0 if
 * capstone does not decode it there. */
static int decode(walk_t *walk, size_t offset, size_t window_end, fast_insn_t *out)
{
    const uint8_t *at = walk->code + offset;
    size_t size = window_end - offset;
    int64_t rva = walk->start + (int64_t)offset;
    if (fast_decode(at, size, rva, out))
        return 1;
    uint64_t address = (uint64_t)rva;
    if (!walk->cs->iter(walk->cs->handle, &at, &size, &address, walk->insn))
        return 0;
    const char *insn = (const char *)walk->insn;
    uint16_t length;
    memcpy(&length, insn + walk->cs->size_offset, sizeof length);
    out->length = length;
    classify(insn + walk->cs->mnemonic_offset, insn + walk->cs->op_str_offset, out);
    return 1;
}

/* Straight-line code from `rva`: sets *end to the end of the last body byte, and
 * returns 1; 0 if the code does not decode or runs past the bound; -1 when out of
 * memory. Mirrors _walk_block in the twin, its 256-byte decode windows included. */
static int walk_block(walk_t *walk, int64_t rva, int64_t *end)
{
    int64_t bound = walk->start + (int64_t)walk->len;
    *end = rva;
    while (!is_visited(walk, rva)) {
        if (rva >= bound)
            return 0;
        size_t offset = (size_t)(rva - walk->start);
        size_t window_end = offset + EXTENT_WINDOW < walk->len ? offset + EXTENT_WINDOW : walk->len;
        int decoded = 0;
        fast_insn_t insn;
        while (offset < window_end && decode(walk, offset, window_end, &insn)) {
            int64_t address = walk->start + (int64_t)offset;
            decoded = 1;
            if (is_visited(walk, address))
                return 1;
            if (address + (int64_t)insn.length > bound)
                return 0;
            visit(walk, address);
            walk->decoded++;
            rva = address + (int64_t)insn.length;
            offset += insn.length;
            if (insn.kind == K_TRAP)
                return 1; /* a trap is where fall-through stops: padding, not body */
            *end = rva;
            if (insn.kind == K_STOP || insn.kind == K_JMP_INDIRECT)
                return 1;
            if (insn.kind == K_BRANCH || insn.kind == K_JMP) {
                if (insn.target >= walk->start && insn.target < bound &&
                    push(&walk->pending, insn.target) < 0)
                    return -1;
                if (insn.kind == K_JMP)
                    return 1;
            }
        }
        if (!decoded)
            return 0;
    }
    return 1;
}

/* The pending blocks, until none is left or `limit` instructions were decoded: 1 if
 * every block walked ends within the bound (*end the furthest), else as walk_block. */
static int walk_blocks(walk_t *walk, size_t limit, int64_t *end)
{
    int status = 1;
    while (walk->pending.count && status == 1 && walk->decoded < limit) {
        int64_t block_end;
        status = walk_block(walk, walk->pending.items[--walk->pending.count], &block_end);
        if (status == 1 && block_end > *end)
            *end = block_end;
    }
    return status;
}

#ifndef HPATCH_X64_FORMS_GENERATOR
static int decoder_arg(PyObject *obj, void *out)
{
    capstone_t *cs = (capstone_t *)out;
    unsigned long long values[7];
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 7) {
        PyErr_SetString(PyExc_TypeError, "decoder must be a tuple of 7 ints");
        return 0;
    }
    for (Py_ssize_t i = 0; i < 7; i++) {
        values[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(obj, i));
        if (PyErr_Occurred())
            return 0;
    }
    if (values[1] == 0 || values[2] == 0 || values[3] == 0 || values[4] > 4096 ||
        values[5] > 4096 || values[6] > 4096) {
        PyErr_SetString(PyExc_ValueError, "decoder holds no capstone entry points");
        return 0;
    }
    cs->handle = (size_t)values[0];
    cs->iter = (cs_iter_fn)(uintptr_t)values[1];
    cs->malloc_insn = (cs_malloc_fn)(uintptr_t)values[2];
    cs->free_insn = (cs_free_fn)(uintptr_t)values[3];
    cs->size_offset = (size_t)values[4];
    cs->mnemonic_offset = (size_t)values[5];
    cs->op_str_offset = (size_t)values[6];
    return 1;
}

PyDoc_STRVAR(x64_code_extent_doc,
"x64_code_extent(code, start_rva, roots, decoder, /)\n--\n\n"
"End of the x64 function at start_rva whose code (up to its bound) is code.\n\n"
"Follows every direct branch from start_rva and from each root inside the code,\n"
"decoding as capstone does; returns the end of the furthest body byte, or None if\n"
"a path does not decode or runs past the bound. decoder is hpatch.arch.x64's\n"
"capstone entry points (the twin decodes with the capstone package itself).");

static PyObject *x64_code_extent(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer code = {0};
    long long start_rva;
    PyObject *roots;
    capstone_t cs;
    PyObject *result = NULL;
    walk_t walk = {0};
    if (!PyArg_ParseTuple(args, "O&O&OO&:x64_code_extent", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &start_rva, &roots, decoder_arg, &cs))
        return NULL;
    /* The code lies in the 32-bit RVA space, end included: a PE has nothing past it. */
    if (start_rva < 0 || start_rva > 0xFFFFFFFFLL || code.len > 0x7FFFFFFF ||
        start_rva + (long long)code.len > 0x100000000LL) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        goto done;
    }
    walk.code = (const uint8_t *)code.buf;
    walk.len = (size_t)code.len;
    walk.start = start_rva;
    walk.cs = &cs;
    if (walk.len == 0) {
        PyErr_SetString(PyExc_ValueError, "no code");
        goto done;
    }
    walk.visited = calloc(walk.len / 8 + 1, 1);
    walk.insn = cs.malloc_insn(cs.handle);
    if (walk.visited == NULL || walk.insn == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (push(&walk.pending, start_rva) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *iterator = PyObject_GetIter(roots);
    if (iterator == NULL)
        goto done;
    PyObject *item;
    int64_t bound = start_rva + (int64_t)walk.len;
    while ((item = PyIter_Next(iterator)) != NULL) {
        long long root;
        int ok = hpatch_int64_arg(item, &root);
        Py_DECREF(item);
        if (!ok) {
            Py_DECREF(iterator);
            goto done;
        }
        if (root >= start_rva && root < bound && push(&walk.pending, root) < 0) {
            Py_DECREF(iterator);
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        goto done;
    int64_t end = start_rva;
    int status = walk_blocks(&walk, WALK_WITH_GIL, &end);
    /* The rest of a long walk runs without the GIL: it reads only the code (held by
     * the buffer), its own arrays and the capstone handle, which hpatch.arch.x64 keeps
     * one of per thread (capstone is thread-safe with a handle per thread, not with
     * one shared). */
    if (status == 1 && walk.pending.count) {
        Py_BEGIN_ALLOW_THREADS
        status = walk_blocks(&walk, SIZE_MAX, &end);
        Py_END_ALLOW_THREADS
    }
    if (status < 0)
        PyErr_NoMemory();
    else if (status == 0)
        result = Py_NewRef(Py_None);
    else
        result = PyLong_FromLongLong(end);
done:
    if (walk.insn != NULL)
        cs.free_insn(walk.insn, 1);
    free(walk.visited);
    free(walk.pending.items);
    PyBuffer_Release(&code);
    return result;
}

/* The values of a one-dimensional buffer of unsigned ints or bytes (format "I" or
 * "B": the columns hpatch keeps its reference sites in, array("I") and array("B")) as a
 * malloc'd array of int64, read without making an int object of each: 1 if `object`
 * is such a buffer, 0 if not (nothing set), -1 with an exception set. */
static int int64_array_from_column(PyObject *object, int64_t **out, Py_ssize_t *count)
{
    if (!PyObject_CheckBuffer(object))
        return 0;
    Py_buffer view;
    if (PyObject_GetBuffer(object, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear(); /* not a contiguous buffer: read as a sequence */
        return 0;
    }
    int wide = view.format != NULL && strcmp(view.format, "I") == 0 &&
               view.itemsize == (Py_ssize_t)sizeof(unsigned int);
    int narrow = view.format != NULL && strcmp(view.format, "B") == 0 && view.itemsize == 1;
    if (view.ndim != 1 || !(wide || narrow)) {
        PyBuffer_Release(&view);
        return 0;
    }
    Py_ssize_t n = view.len / view.itemsize;
    int64_t *values = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (values == NULL) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        values[i] = wide ? (int64_t)((const unsigned int *)view.buf)[i]
                         : (int64_t)((const unsigned char *)view.buf)[i];
    PyBuffer_Release(&view);
    *out = values;
    *count = n;
    return 1;
}

/* A sequence of ints as a malloc'd array of int64 (NULL with an exception set). */
static int64_t *int64_array(PyObject *sequence, Py_ssize_t *count)
{
    int64_t *column = NULL;
    int status = int64_array_from_column(sequence, &column, count);
    if (status != 0)
        return column; /* NULL with an exception set when status is -1 */
    PyObject *fast = PySequence_Fast(sequence, "expected a sequence of ints");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int64_t *values = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (values == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        long long value;
        if (!hpatch_int64_arg(items[i], &value)) {
            free(values);
            Py_DECREF(fast);
            return NULL;
        }
        values[i] = value;
    }
    Py_DECREF(fast);
    *count = n;
    return values;
}

/* Index of the last of the sorted `values` at or before `key`, -1 if none. */
static Py_ssize_t last_at_or_before(const int64_t *values, Py_ssize_t count, int64_t key)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t mid = low + (high - low) / 2;
        if (values[mid] <= key)
            low = mid + 1;
        else
            high = mid;
    }
    return low - 1;
}

/* found[key] |= bit. */
static int or_into(PyObject *found, PyObject *key, long long bit)
{
    PyObject *have = PyDict_GetItemWithError(found, key);
    long long mask = 0;
    if (have == NULL && PyErr_Occurred())
        return -1;
    if (have != NULL) {
        mask = PyLong_AsLongLong(have);
        if (mask == -1 && PyErr_Occurred())
            return -1;
    }
    PyObject *value = PyLong_FromLongLong(mask | bit);
    if (value == NULL)
        return -1;
    int status = PyDict_SetItem(found, key, value);
    Py_DECREF(value);
    return status;
}

/* unchecked.setdefault((target, bit), []): a borrowed reference. */
static PyObject *unchecked_sites(PyObject *unchecked, long long target, long long bit)
{
    PyObject *key = Py_BuildValue("(LL)", target, bit);
    if (key == NULL)
        return NULL;
    PyObject *sites = PyDict_GetItemWithError(unchecked, key);
    if (sites == NULL && !PyErr_Occurred()) {
        sites = PyList_New(0);
        if (sites != NULL) {
            int status = PyDict_SetItem(unchecked, key, sites);
            Py_DECREF(sites); /* the dict holds it */
            if (status < 0)
                sites = NULL;
        }
    }
    Py_DECREF(key);
    return sites;
}

static int append_site(PyObject *sites, int64_t start, int64_t end, long long site)
{
    PyObject *row = Py_BuildValue("(LLL)", (long long)start, (long long)end, site);
    if (row == NULL)
        return -1;
    int status = PyList_Append(sites, row);
    Py_DECREF(row);
    return status;
}

/* entry_bits: None (on = 0), or the masks (call, entry, foreign, not_a_jump). */
typedef struct {
    int on;
    int64_t call, entry, foreign, not_a_jump;
} entry_masks_t;

/* entry_bits into *masks; 0 with an exception set if it is neither None nor a tuple
 * of 4 ints. */
static int entry_masks_arg(PyObject *entry_bits, entry_masks_t *masks)
{
    long long bits[4] = {0, 0, 0, 0};
    masks->on = entry_bits != Py_None;
    if (masks->on) {
        /* PyArg_ParseTuple takes only a tuple: anything else is the caller's TypeError. */
        if (!PyTuple_Check(entry_bits) || PyTuple_GET_SIZE(entry_bits) != 4) {
            PyErr_SetString(PyExc_TypeError, "entry_bits must be 4 ints");
            return 0;
        }
        if (!PyArg_ParseTuple(entry_bits, "O&O&O&O&;entry_bits must be 4 ints",
                              hpatch_int64_arg, &bits[0], hpatch_int64_arg, &bits[1],
                              hpatch_int64_arg, &bits[2], hpatch_int64_arg, &bits[3]))
            return 0;
    }
    masks->call = bits[0];
    masks->entry = bits[1];
    masks->foreign = bits[2];
    masks->not_a_jump = bits[3];
    return 1;
}

/* The range of starts/ends holding the reference's site (its index), or -1 for none.
 * With masks on, a call, or a reference into another range than its own, gains the
 * entry bit in *bit (and the foreign bit when it is not a jump or its target lies in
 * another range): only an entry of target explains it, and *by_entry says so. */
static Py_ssize_t reference_range(const int64_t *starts, const int64_t *ends, Py_ssize_t count,
                                  const entry_masks_t *masks, int64_t target, int64_t site,
                                  int64_t *bit, int *by_entry)
{
    Py_ssize_t index = last_at_or_before(starts, count, site);
    *by_entry = 0;
    if (index < 0 || site >= ends[index])
        return -1;
    if (masks->on && (*bit == masks->call || !(starts[index] <= target && target < ends[index]))) {
        *bit |= masks->entry;
        /* A jump from the code right before the target may reach the function's own
         * block laid out after its last instruction. */
        if ((*bit & masks->not_a_jump) || last_at_or_before(starts, count, target) != index)
            *bit |= masks->foreign;
        *by_entry = 1;
    }
    return index;
}

PyDoc_STRVAR(reference_evidence_doc,
"reference_evidence(found, incoming, starts, ends, entry_bits, /)\n--\n\n"
"Add to found (RVA -> evidence mask) each incoming (target, site, bit) reference\n"
"whose site lies in one of the sorted, disjoint ranges [starts[i], ends[i]).\n\n"
"With entry_bits, a tuple (call, entry, foreign, not_a_jump) of masks, a call, or a\n"
"reference from outside the target's own range, is only explained by an entry: it\n"
"gains the entry bit (and the foreign bit when it is not a jump or its target lies\n"
"in another range) and is returned unchecked instead, as a dict (target, bit) ->\n"
"[(range start, range end, site), ...] in the order met. Returns that dict.");

static PyObject *reference_evidence(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *found, *incoming, *starts_seq, *ends_seq, *entry_bits;
    entry_masks_t masks;
    if (!PyArg_ParseTuple(args, "O!OOOO:reference_evidence", &PyDict_Type, &found, &incoming,
                          &starts_seq, &ends_seq, &entry_bits) ||
        !entry_masks_arg(entry_bits, &masks))
        return NULL;
    Py_ssize_t count, ends_count;
    int64_t *starts = NULL, *ends = NULL;
    PyObject *rows = NULL, *unchecked = NULL, *result = NULL;
    if ((starts = int64_array(starts_seq, &count)) == NULL ||
        (ends = int64_array(ends_seq, &ends_count)) == NULL)
        goto done;
    if (count != ends_count) {
        PyErr_SetString(PyExc_ValueError, "starts and ends differ in length");
        goto done;
    }
    rows = PySequence_Fast(incoming, "incoming must be a sequence of (target, site, bit)");
    if (rows == NULL || (unchecked = PyDict_New()) == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(rows);
    PyObject **items = PySequence_Fast_ITEMS(rows);
    /* Rows come grouped by target: the bits of a run of rows for one target go into
     * found at once, and a run for one (target, bit) shares its list, instead of
     * dict operations for each of 270,000 rows. */
    PyObject *run_key = NULL; /* the target whose bits are gathered in run_bits */
    long long run_target = -1, run_bits = 0;
    PyObject *last_sites = NULL; /* unchecked's list of last_target, last_bit */
    long long last_target = -1, last_bit = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = items[i];
        long long target, site, row_bit;
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 3) {
            PyErr_SetString(PyExc_TypeError, "incoming must be a sequence of (target, site, bit)");
            goto done;
        }
        if (!hpatch_int64_arg(PyTuple_GET_ITEM(row, 0), &target) ||
            !hpatch_int64_arg(PyTuple_GET_ITEM(row, 1), &site) ||
            !hpatch_int64_arg(PyTuple_GET_ITEM(row, 2), &row_bit))
            goto done;
        int64_t bit = row_bit;
        int by_entry;
        Py_ssize_t index =
            reference_range(starts, ends, count, &masks, target, site, &bit, &by_entry);
        if (index < 0)
            continue;
        if (by_entry) {
            if (last_sites == NULL || target != last_target || bit != last_bit) {
                last_sites = unchecked_sites(unchecked, target, bit);
                if (last_sites == NULL)
                    goto done;
                last_target = target;
                last_bit = bit;
            }
            if (append_site(last_sites, starts[index], ends[index], site) < 0)
                goto done;
            continue;
        }
        if (run_key != NULL && target != run_target) {
            if (or_into(found, run_key, run_bits) < 0)
                goto done;
            run_key = NULL;
        }
        if (run_key == NULL) {
            run_key = PyTuple_GET_ITEM(row, 0);
            run_target = target;
            run_bits = 0;
        }
        run_bits |= bit;
    }
    if (run_key != NULL && or_into(found, run_key, run_bits) < 0)
        goto done;
    result = unchecked;
    unchecked = NULL;
done:
    Py_XDECREF(unchecked);
    Py_XDECREF(rows);
    free(starts);
    free(ends);
    return result;
}


/* 1 if values[0..count) ascend (strictly: each greater than the one before). */
static int ascending(const int64_t *values, Py_ssize_t count, int strictly)
{
    for (Py_ssize_t i = 1; i < count; i++)
        if (values[i] < values[i - 1] || (strictly && values[i] == values[i - 1]))
            return 0;
    return 1;
}

/* A reference of one target that only an entry explains, waiting for its check. */
typedef struct {
    int64_t bit, start, end, site;
    Py_ssize_t order; /* where it was met among the target's references */
} entry_ref_t;

/* By bit, then in the order met: each bit's references side by side, in order. */
static int by_bit_then_order(const void *a, const void *b)
{
    const entry_ref_t *x = a, *y = b;
    if (x->bit != y->bit)
        return x->bit < y->bit ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

/* A run of references with one bit: [first, last) of the sorted references, and
 * where its first reference was met. */
typedef struct {
    Py_ssize_t first, last, order;
} bit_run_t;

static int by_order(const void *a, const void *b)
{
    const bit_run_t *x = a, *y = b;
    return (x->order > y->order) - (x->order < y->order);
}

/* The bits of the target's entry references whose check passes for one of their
 * sites, asked bit by bit in the order each bit was first met, and only while the
 * mask lacks some of that bit: ORed into *mask. -1 with an exception set. */
static int check_entry_refs(entry_ref_t *refs, Py_ssize_t count, bit_run_t *runs,
                            PyObject *check, int64_t *mask)
{
    if (count == 0)
        return 0;
    qsort(refs, (size_t)count, sizeof *refs, by_bit_then_order);
    Py_ssize_t run_count = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i == 0 || refs[i].bit != refs[i - 1].bit) {
            runs[run_count].first = i;
            runs[run_count].order = refs[i].order;
            run_count++;
        }
        runs[run_count - 1].last = i + 1;
    }
    qsort(runs, (size_t)run_count, sizeof *runs, by_order);
    for (Py_ssize_t r = 0; r < run_count; r++) {
        int64_t bit = refs[runs[r].first].bit;
        if ((*mask & bit) == bit)
            continue;
        for (Py_ssize_t i = runs[r].first; i < runs[r].last; i++) {
            PyObject *answer = PyObject_CallFunction(check, "LLL", (long long)refs[i].start,
                                                     (long long)refs[i].end,
                                                     (long long)refs[i].site);
            if (answer == NULL)
                return -1;
            int truth = PyObject_IsTrue(answer);
            Py_DECREF(answer);
            if (truth < 0)
                return -1;
            if (truth) {
                *mask |= bit;
                break;
            }
        }
    }
    return 0;
}

/* An iterable of ints as a tuple of them, kept so that a result can hand back the
 * caller's own int objects (their memory is the caller's already), and as a malloc'd
 * array of int64: NULL with an exception set. A column (see int64_array_from_column)
 * has no int objects to hand back: *kept is NULL then. */
static int64_t *kept_int64_array(PyObject *sequence, Py_ssize_t *count, PyObject **kept)
{
    int64_t *column = NULL;
    *kept = NULL;
    if (int64_array_from_column(sequence, &column, count) != 0)
        return column;
    *kept = PySequence_Tuple(sequence);
    if (*kept == NULL)
        return NULL;
    int64_t *values = int64_array(*kept, count);
    if (values == NULL)
        Py_CLEAR(*kept);
    return values;
}

/* value as an int: `same` itself (a new reference) when it is an int that holds
 * exactly value, else a new one. */
static PyObject *int_like(PyObject *same, int64_t value)
{
    if (same != NULL && PyLong_CheckExact(same) && value != INT64_MIN && value != INT64_MAX)
        return Py_NewRef(same);
    return PyLong_FromLongLong(value);
}

/* The few distinct masks a round gives, each one int object, not one per target. */
typedef struct {
    int64_t values[16];
    PyObject *objects[16];
    int count, next;
} mask_ints_t;

static PyObject *mask_int(mask_ints_t *cache, int64_t value)
{
    for (int i = 0; i < cache->count; i++)
        if (cache->values[i] == value)
            return Py_NewRef(cache->objects[i]);
    PyObject *object = PyLong_FromLongLong(value);
    if (object == NULL)
        return NULL;
    int slot = cache->count < 16 ? cache->count++ : cache->next++ % 16;
    Py_XSETREF(cache->objects[slot], Py_NewRef(object));
    cache->values[slot] = value;
    return object;
}

/* Appends a new reference to list, which it consumes; -1 with an exception set. */
static int append_new(PyObject *list, PyObject *item)
{
    if (item == NULL)
        return -1;
    int status = PyList_Append(list, item);
    Py_DECREF(item);
    return status;
}

/* A target of gap_evidence's round: its mask so far, the references of it that only a
 * check counts (refs[first_ref..first_ref + ref_count)), and where the caller's int
 * object for it lies (static_items or target_items, at item). */
typedef struct {
    int64_t target, mask;
    Py_ssize_t first_ref, ref_count, item;
    int static_item;
} gap_target_t;

/* gap_evidence's walk over the references and the stated starts, merged in target
 * order, on C values only (it runs without the GIL): fills found[] with every target
 * that has a mask or references to check, and refs[] with those references; returns
 * how many targets. */
static Py_ssize_t gather_evidence(const int64_t *static_targets, const int64_t *static_masks,
                                  Py_ssize_t static_count, const int64_t *targets,
                                  const int64_t *sites, const int64_t *bits, Py_ssize_t n,
                                  const int64_t *starts, const int64_t *ends, Py_ssize_t count,
                                  const entry_masks_t *masks, gap_target_t *found,
                                  entry_ref_t *refs)
{
    Py_ssize_t i = 0, s = 0, found_count = 0, pending_total = 0;
    while (i < n || s < static_count) {
        int64_t target = i < n && (s >= static_count || targets[i] <= static_targets[s])
                             ? targets[i]
                             : static_targets[s];
        gap_target_t entry = {target, 0, pending_total, 0, 0, 0};
        if (i < n && targets[i] == target) {
            entry.item = i;
        } else {
            entry.item = s;
            entry.static_item = 1;
        }
        if (s < static_count && static_targets[s] == target)
            entry.mask = static_masks[s++];
        for (Py_ssize_t order = 0; i < n && targets[i] == target; i++, order++) {
            int64_t site = sites[i], bit = bits[i];
            int by_entry;
            Py_ssize_t index =
                reference_range(starts, ends, count, masks, target, site, &bit, &by_entry);
            if (index < 0)
                continue;
            if (by_entry) {
                refs[pending_total++] = (entry_ref_t){bit, starts[index], ends[index], site, order};
                continue;
            }
            entry.mask |= bit;
        }
        entry.ref_count = pending_total - entry.first_ref;
        if (entry.mask != 0 || entry.ref_count != 0)
            found[found_count++] = entry;
    }
    return found_count;
}

PyDoc_STRVAR(gap_evidence_doc,
"gap_evidence(static_targets, static_masks, targets, sites, bits, starts, ends, entry_bits, check, /)\n--\n\n"
"One round's evidence masks, as two lists: the RVAs with a nonzero mask, ascending,\n"
"and their masks.\n"
"\n"
"static_targets (strictly ascending) and static_masks are the evidence stated before;\n"
"targets (ascending), sites and bits the references (target, site, bit). A reference\n"
"counts when its site lies in one of the sorted, disjoint ranges [starts[i], ends[i]).\n"
"With entry_bits (call, entry, foreign, not_a_jump), not None, a call or a reference\n"
"from outside the target's own range is only explained by an entry: it gains the entry\n"
"bit (and the foreign bit when it is not a jump or its target lies in another range),\n"
"and a target gains such a bit if check(start, end, site) is true for one of its\n"
"sites: asked bit by bit in the order the target's references meet them, site by site\n"
"in order until one passes, and only while the target's mask lacks some of the bit.");

static PyObject *gap_evidence(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *static_targets_seq, *static_masks_seq, *targets_seq, *sites_seq, *bits_seq;
    PyObject *starts_seq, *ends_seq, *entry_bits, *check;
    entry_masks_t masks;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO:gap_evidence", &static_targets_seq, &static_masks_seq,
                          &targets_seq, &sites_seq, &bits_seq, &starts_seq, &ends_seq, &entry_bits,
                          &check))
        return NULL;
    if (!entry_masks_arg(entry_bits, &masks))
        return NULL;
    if (!PyCallable_Check(check)) {
        PyErr_SetString(PyExc_TypeError, "check must be callable");
        return NULL;
    }
    int64_t *static_targets = NULL, *static_masks = NULL, *targets = NULL, *sites = NULL,
            *bits = NULL, *starts = NULL, *ends = NULL;
    Py_ssize_t static_count, mask_count, n, site_count, bit_count, count, ends_count;
    entry_ref_t *refs = NULL;
    bit_run_t *runs = NULL;
    gap_target_t *found = NULL;
    PyObject *out_targets = NULL, *out_masks = NULL, *result = NULL;
    PyObject *static_items = NULL, *target_items = NULL;
    mask_ints_t mask_ints = {{0}, {NULL}, 0, 0};
    if ((static_targets = kept_int64_array(static_targets_seq, &static_count, &static_items)) ==
            NULL ||
        (static_masks = int64_array(static_masks_seq, &mask_count)) == NULL ||
        (targets = kept_int64_array(targets_seq, &n, &target_items)) == NULL ||
        (sites = int64_array(sites_seq, &site_count)) == NULL ||
        (bits = int64_array(bits_seq, &bit_count)) == NULL ||
        (starts = int64_array(starts_seq, &count)) == NULL ||
        (ends = int64_array(ends_seq, &ends_count)) == NULL)
        goto done;
    if (static_count != mask_count) {
        PyErr_SetString(PyExc_ValueError, "static_targets and static_masks differ in length");
        goto done;
    }
    if (n != site_count || n != bit_count) {
        PyErr_SetString(PyExc_ValueError, "targets, sites and bits differ in length");
        goto done;
    }
    if (count != ends_count) {
        PyErr_SetString(PyExc_ValueError, "starts and ends differ in length");
        goto done;
    }
    if (!ascending(static_targets, static_count, 1)) {
        PyErr_SetString(PyExc_ValueError, "static_targets must ascend strictly");
        goto done;
    }
    if (!ascending(targets, n, 0)) {
        PyErr_SetString(PyExc_ValueError, "targets must ascend");
        goto done;
    }
    /* At most one entry reference and one run per reference, and one target per
     * reference or stated start. */
    refs = malloc((size_t)(n ? n : 1) * sizeof *refs);
    runs = malloc((size_t)(n ? n : 1) * sizeof *runs);
    found = malloc((size_t)(n + static_count ? n + static_count : 1) * sizeof *found);
    out_targets = PyList_New(0);
    out_masks = PyList_New(0);
    if (refs == NULL || runs == NULL || found == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (out_targets == NULL || out_masks == NULL)
        goto done;
    /* First, without the GIL, each target's mask and the references only a check can
     * count (over columns and arrays of C values alone); then, with it, the checks
     * and the lists. */
    Py_ssize_t found_count;
    Py_BEGIN_ALLOW_THREADS
    found_count = gather_evidence(static_targets, static_masks, static_count, targets, sites,
                                  bits, n, starts, ends, count, &masks, found, refs);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t f = 0; f < found_count; f++) {
        gap_target_t *target = &found[f];
        int64_t mask = target->mask;
        if (check_entry_refs(refs + target->first_ref, target->ref_count, runs, check, &mask) < 0)
            goto done;
        if (mask == 0)
            continue;
        /* the caller's own int object where there is one (none from a column) */
        PyObject *items = target->static_item ? static_items : target_items;
        PyObject *target_item = items != NULL ? PyTuple_GET_ITEM(items, target->item) : NULL;
        if (append_new(out_targets, int_like(target_item, target->target)) < 0 ||
            append_new(out_masks, mask_int(&mask_ints, mask)) < 0)
            goto done;
    }
    result = PyTuple_Pack(2, out_targets, out_masks);
done:
    for (int m = 0; m < mask_ints.count; m++)
        Py_DECREF(mask_ints.objects[m]);
    Py_XDECREF(static_items);
    Py_XDECREF(target_items);
    Py_XDECREF(out_targets);
    Py_XDECREF(out_masks);
    free(refs);
    free(runs);
    free(found);
    free(static_targets);
    free(static_masks);
    free(targets);
    free(sites);
    free(bits);
    free(starts);
    free(ends);
    return result;
}

/* a + b, saturating at the ends of int64 (as the twin's _int64 clamps). */
static int64_t saturating_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

/* Index of the first of the sorted values[from..count) at or after key. */
static Py_ssize_t first_at_or_after(const int64_t *values, Py_ssize_t from, Py_ssize_t count,
                                    int64_t key)
{
    Py_ssize_t low = from, high = count;
    while (low < high) {
        Py_ssize_t mid = low + (high - low) / 2;
        if (values[mid] < key)
            low = mid + 1;
        else
            high = mid;
    }
    return low;
}

/* function(*values), values one or two int64s: a new reference, or NULL with an
 * exception set. */
static PyObject *call_with_ints(PyObject *function, int nargs, const int64_t *values)
{
    PyObject *argv[2] = {NULL, NULL};
    for (int i = 0; i < nargs; i++) {
        argv[i] = PyLong_FromLongLong(values[i]);
        if (argv[i] == NULL) {
            Py_XDECREF(argv[0]);
            return NULL;
        }
    }
    PyObject *answer = PyObject_Vectorcall(function, argv, (size_t)nargs, NULL);
    Py_XDECREF(argv[0]);
    Py_XDECREF(argv[1]);
    return answer;
}

/* function(*values) as an int64 in *out, or *is_none (NULL: None is a TypeError);
 * *answer (if not NULL) gets the int it returned, a new reference. 0 on success, -1
 * with an exception set. */
static int call_for_int(PyObject *function, int nargs, const int64_t *values, int64_t *out,
                        int *is_none, PyObject **answer_out)
{
    PyObject *answer = call_with_ints(function, nargs, values);
    if (answer == NULL)
        return -1;
    if (is_none != NULL)
        *is_none = answer == Py_None;
    if (is_none != NULL && answer == Py_None) {
        Py_DECREF(answer);
        return 0;
    }
    long long value = 0;
    if (!hpatch_int64_arg(answer, &value)) {
        Py_DECREF(answer);
        return -1;
    }
    *out = value;
    if (answer_out != NULL)
        *answer_out = answer;
    else
        Py_DECREF(answer);
    return 0;
}

/* The truth of function(*values): 1, 0, or -1 with an exception set. */
static int call_for_truth(PyObject *function, int nargs, const int64_t *values)
{
    PyObject *answer = call_with_ints(function, nargs, values);
    if (answer == NULL)
        return -1;
    int truth = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return truth;
}

/* kept[index], or NULL if there is no kept tuple (a column was passed). */
static PyObject *kept_item(PyObject *kept, Py_ssize_t index)
{
    return kept == NULL ? NULL : PyTuple_GET_ITEM(kept, index);
}

/* leaves[start] = end, as ints: `start_item` and `end_item` themselves where they
 * hold those values (see int_like); consumes the reference to end_item. -1 with an
 * exception set. */
static int add_leaf(PyObject *leaves, PyObject *start_item, int64_t start, PyObject *end_item,
                    int64_t end)
{
    PyObject *key = int_like(start_item, start);
    PyObject *value = int_like(end_item, end);
    Py_XDECREF(end_item);
    int status = key != NULL && value != NULL ? PyDict_SetItem(leaves, key, value) : -1;
    Py_XDECREF(key);
    Py_XDECREF(value);
    return status;
}

PyDoc_STRVAR(gap_leaves_doc,
"gap_leaves(targets, masks, gap_start, gap_end, align, bits, thunk, extent, padding, may_follow, runs_into, /)\n--\n\n"
"The functions a walk of the gap [gap_start, gap_end) finds, as a dict start -> end\n"
"in the order found, and the candidate that runs into the range at gap_end (or None).\n\n"
"targets (strictly ascending) are the candidate starts and masks their evidence;\n"
"bits is (accepted, strong). The walk starts after padding(gap_start) bytes; where\n"
"it stands, thunk(rva) (asked once per place) gives the end of an import thunk, or\n"
"None. Else the next candidate at or after the last function's end is one if it\n"
"has an accepted bit and an rva that align divides, and, right at that end, if\n"
"may_follow(end, mask); it ends at extent(target, bound), bound being the next such\n"
"candidate or gap_end (a bound without a strong bit that the code runs into, None,\n"
"gives way to the next one). A candidate without an end whose code runs into the\n"
"range at gap_end (runs_into(target)) holds up to it, and the walk stops there.\n"
"Past each function, padding(end) bytes are skipped.");

static PyObject *gap_leaves(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *targets_seq, *masks_seq, *start_obj, *end_obj, *align_obj, *bits;
    PyObject *thunk, *extent, *padding, *may_follow, *runs_into;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOO:gap_leaves", &targets_seq, &masks_seq, &start_obj,
                          &end_obj, &align_obj, &bits, &thunk, &extent, &padding, &may_follow,
                          &runs_into))
        return NULL;
    int64_t *targets = NULL, *masks = NULL;
    Py_ssize_t *entries = NULL;
    int64_t *entry_targets = NULL;
    PyObject *leaves = NULL, *result = NULL, *target_items = NULL, *end_item = NULL;
    Py_ssize_t count, mask_count;
    long long gap_start, gap_end, align, accepted, strong;
    if ((targets = kept_int64_array(targets_seq, &count, &target_items)) == NULL ||
        (masks = int64_array(masks_seq, &mask_count)) == NULL ||
        !hpatch_int64_arg(start_obj, &gap_start) || !hpatch_int64_arg(end_obj, &gap_end) ||
        !hpatch_int64_arg(align_obj, &align))
        goto done;
    if (!PyTuple_Check(bits) || PyTuple_GET_SIZE(bits) != 2) {
        PyErr_SetString(PyExc_TypeError, "bits must be 2 ints");
        goto done;
    }
    if (!PyArg_ParseTuple(bits, "O&O&;bits must be 2 ints", hpatch_int64_arg, &accepted,
                          hpatch_int64_arg, &strong))
        goto done;
    if (!PyCallable_Check(thunk) || !PyCallable_Check(extent) || !PyCallable_Check(padding) ||
        !PyCallable_Check(may_follow) || !PyCallable_Check(runs_into)) {
        PyErr_SetString(PyExc_TypeError,
                        "thunk, extent, padding, may_follow and runs_into must be callable");
        goto done;
    }
    if (count != mask_count) {
        PyErr_SetString(PyExc_ValueError, "targets and masks differ in length");
        goto done;
    }
    if (!ascending(targets, count, 1)) {
        PyErr_SetString(PyExc_ValueError, "targets must ascend strictly");
        goto done;
    }
    if (align < 1) {
        PyErr_SetString(PyExc_ValueError, "align must be positive");
        goto done;
    }
    entries = malloc((size_t)(count ? count : 1) * sizeof *entries);
    entry_targets = malloc((size_t)(count ? count : 1) * sizeof *entry_targets);
    if (entries == NULL || entry_targets == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t entry_count = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if ((masks[i] & accepted) && targets[i] % align == 0) {
            entries[entry_count] = i;
            entry_targets[entry_count++] = targets[i];
        }
    }
    if ((leaves = PyDict_New()) == NULL)
        goto done;
    Py_ssize_t index = 0;
    int64_t previous_end = gap_start, cursor, pad, asked = 0, found_end;
    int have_asked = 0, is_none;
    if (call_for_int(padding, 1, &previous_end, &pad, NULL, NULL) < 0)
        goto done;
    cursor = saturating_add(gap_start, pad);
    for (;;) {
        if (cursor < gap_end && !(have_asked && cursor == asked)) {
            asked = cursor;
            have_asked = 1;
            Py_CLEAR(end_item);
            if (call_for_int(thunk, 1, &cursor, &found_end, &is_none, &end_item) < 0)
                goto done;
            if (!is_none) {
                int status = add_leaf(leaves, NULL, cursor, end_item, found_end);
                end_item = NULL;
                if (status < 0 || call_for_int(padding, 1, &found_end, &pad, NULL, NULL) < 0)
                    goto done;
                previous_end = found_end;
                cursor = saturating_add(found_end, pad);
                continue;
            }
        }
        index = first_at_or_after(targets, index, count, previous_end);
        if (index == count)
            break;
        int64_t target = targets[index], mask = masks[index];
        index++;
        if (target % align != 0 || !(mask & accepted))
            continue;
        if (target == previous_end) {
            int64_t question[2] = {previous_end, mask};
            int truth = call_for_truth(may_follow, 2, question);
            if (truth < 0)
                goto done;
            if (!truth)
                continue;
        }
        Py_ssize_t next_entry = last_at_or_before(entry_targets, entry_count, target) + 1;
        int64_t bound;
        for (;;) {
            bound = next_entry < entry_count ? entry_targets[next_entry] : gap_end;
            int64_t question[2] = {target, bound};
            Py_CLEAR(end_item);
            if (call_for_int(extent, 2, question, &found_end, &is_none, &end_item) < 0)
                goto done;
            if (!is_none || bound == gap_end || (masks[entries[next_entry]] & strong))
                break;
            /* The code runs on into the next candidate: not an entry after all. */
            next_entry++;
        }
        if (is_none && bound == gap_end) {
            int truth = call_for_truth(runs_into, 1, &target);
            if (truth < 0)
                goto done;
            if (truth) {
                if (add_leaf(leaves, kept_item(target_items, index - 1), target, NULL,
                             gap_end) < 0)
                    goto done;
                result = Py_BuildValue("(OL)", leaves, (long long)target);
                goto done;
            }
        }
        if (is_none || found_end <= target)
            continue;
        int status = add_leaf(leaves, kept_item(target_items, index - 1), target, end_item,
                              found_end);
        end_item = NULL;
        if (status < 0 || call_for_int(padding, 1, &found_end, &pad, NULL, NULL) < 0)
            goto done;
        previous_end = found_end;
        cursor = saturating_add(found_end, pad);
    }
    result = Py_BuildValue("(OO)", leaves, Py_None);
done:
    Py_XDECREF(end_item);
    Py_XDECREF(target_items);
    Py_XDECREF(leaves);
    free(targets);
    free(masks);
    free(entries);
    free(entry_targets);
    return result;
}

/* Bytes taken by a ModRM byte at `at` and its SIB and displacement; 0 if cut short
 * (as the twin's _modrm_tail returns None). */
static size_t modrm_tail(const uint8_t *data, size_t len, size_t at)
{
    if (at >= len)
        return 0;
    unsigned modrm = data[at], mod = modrm >> 6, rm = modrm & 7;
    size_t size = 1;
    if (mod != 3 && rm == 4) {
        if (at + 1 >= len)
            return 0;
        size += 1;
        if (mod == 0 && (data[at + 1] & 7) == 5)
            size += 4;
    }
    if (mod == 1)
        size += 1;
    else if (mod == 2 || (mod == 0 && rm == 5))
        size += 4;
    return at + size <= len ? size : 0;
}

/* The end of the padding from `i` in data[0..n), looking at no more than `limit`
 * bytes' worth of starts: *ended is 0 if it stopped at that limit, not at code. */
static size_t skip_padding(const uint8_t *data, size_t n, size_t i, size_t limit, int *ended)
{
    size_t stop = limit < n - (i < n ? i : n) ? i + limit : n;
    *ended = 1;
    while (i < n) {
        if (i >= stop) {
            *ended = 0;
            break;
        }
        uint8_t b = data[i];
        if (b == 0xCC || b == 0x90 || b == 0x00) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && (data[j] == 0x66 || data[j] == 0x2E))
            j++;
        if (j > i && j < n && data[j] == 0x90) {
            i = j + 1;
            continue;
        }
        if (j + 1 < n && data[j] == 0x0F && data[j + 1] == 0x1F) {
            size_t tail = modrm_tail(data, n, j + 2);
            if (tail) {
                i = j + 2 + tail;
                continue;
            }
        }
        break;
    }
    return i;
}

PyDoc_STRVAR(x64_padding_length_doc,
"x64_padding_length(data, offset, /)\n--\n\n"
"Length of the x64 padding at offset in data: int3, nop and zero bytes, nops with\n"
"66 and 2E prefixes, and the multi-byte nops 0F 1F /0.");

static PyObject *x64_padding_length(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer view = {0};
    long long offset;
    if (!PyArg_ParseTuple(args, "O&O&:x64_padding_length", hpatch_buffer_arg, &view,
                          hpatch_int64_arg, &offset))
        return NULL;
    if (offset < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset must not be negative");
        return NULL;
    }
    const uint8_t *data = (const uint8_t *)view.buf;
    size_t n = (size_t)view.len, start = (size_t)offset;
    int ended;
    size_t i = skip_padding(data, n, start, PADDING_WITH_GIL, &ended);
    if (!ended) {
        Py_BEGIN_ALLOW_THREADS
        i = skip_padding(data, n, i, SIZE_MAX, &ended);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&view);
    return PyLong_FromSize_t(i > start ? i - start : 0);
}

PyMethodDef hpatch_discovery_methods[] = {
    {"x64_code_extent", x64_code_extent, METH_VARARGS, x64_code_extent_doc},
    {"reference_evidence", reference_evidence, METH_VARARGS, reference_evidence_doc},
    {"x64_padding_length", x64_padding_length, METH_VARARGS, x64_padding_length_doc},
    {"gap_evidence", gap_evidence, METH_VARARGS, gap_evidence_doc},
    {"gap_leaves", gap_leaves, METH_VARARGS, gap_leaves_doc},
    {NULL, NULL, 0, NULL},
};
#endif

#ifdef HPATCH_X64_FORMS_GENERATOR
/*
 * The generator of the x64_*_forms tables: checks every shape fast_layout knows
 * against capstone, in every ModRM form (four SIB bytes where there is one), every
 * REX byte or none, two fillings of the displacement and immediate, two addresses,
 * and with the bytes cut right after the instruction; prints the three arrays that
 * replace the ones above. Run it again when capstone's major version changes (the
 * wheel's library file lacks the version its SONAME names, hence the link):
 *
 *   CS=$(python -c 'import capstone, os; print(os.path.dirname(capstone.__file__))')
 *   mkdir -p /tmp/cs && ln -sf $CS/lib/libcapstone.so /tmp/cs/libcapstone.so.5
 *   cc -O2 -DHPATCH_X64_FORMS_GENERATOR -I$(python -c 'import sysconfig;
 *       print(sysconfig.get_paths()["include"])') -I$CS/include native/discovery.c
 *       /tmp/cs/libcapstone.so.5 -o forms && LD_LIBRARY_PATH=/tmp/cs ./forms
 */
#include <capstone/capstone.h>
#include <stdio.h>

static csh generator_handle;
static cs_insn *generator_insn;

/* 1 if capstone decodes the instruction at the start of buf as fast_layout does. */
static int agrees(const uint8_t *buf, size_t size)
{
    static const uint64_t addresses[2] = {0x1000, 0x7FFFF000};
    for (int a = 0; a < 2; a++) {
        fast_insn_t fast, oracle;
        fast_key_t key;
        if (!fast_layout(buf, size, (int64_t)addresses[a], &fast, &key))
            return 0;
        for (int cut = 0; cut < 2; cut++) {
            const uint8_t *at = buf;
            size_t left = cut ? fast.length : size;
            uint64_t address = addresses[a];
            if (!cs_disasm_iter(generator_handle, &at, &left, &address, generator_insn))
                return 0;
            oracle.length = generator_insn->size;
            classify(generator_insn->mnemonic, generator_insn->op_str, &oracle);
            if (oracle.length != fast.length || oracle.kind != fast.kind)
                return 0;
            if ((fast.kind == K_BRANCH || fast.kind == K_JMP) && oracle.target != fast.target)
                return 0;
        }
    }
    return 1;
}

/* Every form after `head` (prefixes and opcode) whose ModRM matches `sub` (16: all
 * 256 ModRM bytes, or the following byte of an opcode without one). */
static int all_agree(const uint8_t *head, size_t size, unsigned sub)
{
    static const uint8_t sibs[4] = {0x24, 0x25, 0xE5, 0x00};
    uint8_t buf[32];
    for (unsigned modrm = 0; modrm < 256; modrm++) {
        unsigned mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
        if (sub < 16 && ((mod == 3) != ((sub & 8) != 0) || reg != (sub & 7)))
            continue;
        int sib_count = mod != 3 && rm == 4 ? 4 : 1;
        for (int s = 0; s < sib_count; s++) {
            memcpy(buf, head, size);
            buf[size] = (uint8_t)modrm;
            buf[size + 1] = sibs[s];
            for (size_t j = size + 2; j < sizeof buf; j++)
                buf[j] = (uint8_t)(0x91 + j * 37);
            if (!agrees(buf, sizeof buf))
                return 0;
            buf[size + 2] = 0x80;
            buf[size + 3] = 0xFF;
            if (!agrees(buf, sizeof buf))
                return 0;
        }
    }
    return 1;
}

static void print_words(const char *declaration, const uint8_t *bytes, size_t count)
{
    printf("%s = {\n", declaration);
    for (size_t i = 0; i < count; i += 8) {
        uint64_t word = 0;
        for (size_t j = 0; j < 8; j++)
            word |= (uint64_t)bytes[i + j] << (8 * j);
        printf("%s0x%016llxULL,%s", i % 24 == 0 ? "    " : " ", (unsigned long long)word,
               i % 24 == 16 || i + 8 == count ? "\n" : "");
    }
    printf("};\n");
}

int main(void)
{
    static const uint8_t prefixes[4] = {0, 0x66, 0xF3, 0xF2};
    static uint8_t all_forms[512], vex_forms[3072];
    static uint16_t some_forms[4096];
    if (cs_open(CS_ARCH_X86, CS_MODE_64, &generator_handle) != CS_ERR_OK)
        return 1;
    generator_insn = cs_malloc(generator_handle);
    for (unsigned shape = 0; shape < 4096; shape++) {
        unsigned prefix = shape >> 10, map = (shape >> 8) & 3, op = shape & 255;
        int has_modrm = (legacy_layout(map, op) & L_MODRM) != 0;
        unsigned forms = 0;
        for (unsigned sub = has_modrm ? 0 : 16; sub < (has_modrm ? 16u : 17u); sub++) {
            int good = 1;
            for (int rex = -1; rex < 16 && good; rex++) {
                uint8_t head[8];
                size_t size = 0;
                if (prefix)
                    head[size++] = prefixes[prefix];
                if (rex >= 0)
                    head[size++] = (uint8_t)(0x40 | rex);
                if (map) {
                    head[size++] = 0x0F;
                    if (map > 1)
                        head[size++] = map == 2 ? 0x38 : 0x3A;
                }
                head[size++] = (uint8_t)op;
                good = all_agree(head, size, sub);
            }
            if (good)
                forms |= sub < 16 ? 1u << sub : 0xFFFFu;
        }
        if (forms == 0xFFFF)
            all_forms[shape >> 3] |= (uint8_t)(1u << (shape & 7));
        else
            some_forms[shape] = (uint16_t)forms;
    }
    for (unsigned index = 0; index < 3072; index++) {
        unsigned pp = index / 768, map = (index / 256) % 3 + 1, op = index & 255;
        for (unsigned bit = 0; bit < 8; bit++) {
            unsigned l = bit >> 2, w = (bit >> 1) & 1, unused = bit & 1;
            /* vvvv as encoded (inverted): 1111 names no register */
            static const unsigned used[3] = {0, 5, 14};
            int good = 1;
            for (int v = 0; v < (unused ? 1 : 3) && good; v++) {
                unsigned vvvv = unused ? 15 : used[v];
                static const unsigned rxb[4] = {7, 0, 2, 5};
                for (int r = 0; r < 4 && good; r++) {
                    uint8_t head[4] = {0xC4, (uint8_t)(rxb[r] << 5 | map),
                                       (uint8_t)(w << 7 | vvvv << 3 | l << 2 | pp), (uint8_t)op};
                    good = all_agree(head, 4, 16);
                }
                for (unsigned r = 0; r < 2 && good && map == 1 && w == 0; r++) {
                    uint8_t head[3] = {0xC5, (uint8_t)(r << 7 | vvvv << 3 | l << 2 | pp),
                                       (uint8_t)op};
                    good = all_agree(head, 3, 16);
                }
            }
            if (good)
                vex_forms[index] |= (uint8_t)(1u << bit);
        }
    }
    print_words("static const uint64_t x64_all_forms[64]", all_forms, sizeof all_forms);
    printf("static const uint16_t x64_some_forms[][2] = {\n");
    int column = 0;
    for (unsigned shape = 0; shape < 4096; shape++) {
        if (some_forms[shape] == 0)
            continue;
        printf("%s{0x%03x, 0x%04x},%s", column ? " " : "    ", shape, some_forms[shape],
               column == 5 ? "\n" : "");
        column = (column + 1) % 6;
    }
    printf("%s};\n", column ? "\n" : "");
    print_words("static const uint64_t x64_vex_forms[384]", vex_forms, sizeof vex_forms);
    cs_free(generator_insn, 1);
    cs_close(&generator_handle);
    return 0;
}
#endif
