/*
 * A table-driven x64 decoder (64-bit mode): enough of each instruction to know its
 * length and where its displacement and immediate lie, and to apply hpatch's
 * normalisation. The tables follow the Intel SDM opcode maps; capstone, through the
 * pure-Python twin, is the oracle a parity test holds this to.
 */
#include "x64.h"

#include <stdlib.h>
#include <string.h>

enum {
    F_NONE = 0,
    F_MODRM = 1 << 0,
    F_IMM8 = 1 << 1,
    F_IMMZ = 1 << 2,  /* 16 or 32 bits by operand size */
    F_IMMV = 1 << 3,  /* 16, 32 or 64 bits (MOV r, imm) */
    F_REL8 = 1 << 4,
    F_REL32 = 1 << 5,
    F_IMM16 = 1 << 6,
    F_ENTER = 1 << 7, /* imm16 + imm8 */
    F_MOFFS = 1 << 8, /* 64-bit (32 with 0x67) absolute offset */
    F_GRP3 = 1 << 9,  /* F6/F7: an immediate only for /0 and /1 */
    F_INVALID = 1 << 10,
};

static unsigned one_byte_flags(unsigned op)
{
    if (op < 0x40) {
        unsigned low = op & 7;
        if (low < 4)
            return F_MODRM;
        if (low == 4)
            return F_IMM8;
        if (low == 5)
            return F_IMMZ;
        return F_INVALID; /* segment pushes/pops, BCD: invalid in 64-bit mode */
    }
    if (op < 0x60)
        return F_NONE; /* PUSH/POP r */
    switch (op) {
    case 0x63: return F_MODRM;
    case 0x68: return F_IMMZ;
    case 0x69: return F_MODRM | F_IMMZ;
    case 0x6A: return F_IMM8;
    case 0x6B: return F_MODRM | F_IMM8;
    case 0x6C: case 0x6D: case 0x6E: case 0x6F: return F_NONE;
    case 0x80: case 0x83: return F_MODRM | F_IMM8;
    case 0x81: return F_MODRM | F_IMMZ;
    case 0x9A: return F_INVALID;
    case 0xA8: return F_IMM8;
    case 0xA9: return F_IMMZ;
    case 0xC0: case 0xC1: case 0xC6: return F_MODRM | F_IMM8;
    case 0xC2: case 0xCA: return F_IMM16;
    case 0xC7: return F_MODRM | F_IMMZ;
    case 0xC8: return F_ENTER;
    case 0xCD: return F_IMM8;
    case 0xD0: case 0xD1: case 0xD2: case 0xD3: return F_MODRM;
    case 0xE8: case 0xE9: return F_REL32;
    case 0xEB: return F_REL8;
    case 0xF6: case 0xF7: return F_MODRM | F_GRP3;
    case 0xFE: case 0xFF: return F_MODRM;
    case 0x60: case 0x61: case 0x62: case 0x82: case 0xC4: case 0xC5: case 0xCE:
    case 0xD4: case 0xD5: case 0xD6: case 0xEA:
        return F_INVALID;
    default: break;
    }
    if (op >= 0x70 && op <= 0x7F) return F_REL8;
    if (op >= 0x84 && op <= 0x8F) return F_MODRM;
    if (op >= 0x90 && op <= 0x9F) return F_NONE;
    if (op >= 0xA0 && op <= 0xA3) return F_MOFFS;
    if (op >= 0xA4 && op <= 0xAF) return F_NONE;
    if (op >= 0xB0 && op <= 0xB7) return F_IMM8;
    if (op >= 0xB8 && op <= 0xBF) return F_IMMV;
    if (op >= 0xD8 && op <= 0xDF) return F_MODRM;
    if (op >= 0xE0 && op <= 0xE3) return F_REL8;
    if (op >= 0xE4 && op <= 0xE7) return F_IMM8;
    return F_NONE; /* C3 C9 CB CC CF D7 EC-EF F1 F4 F5 F8-FD */
}

static unsigned two_byte_flags(unsigned op)
{
    switch (op) {
    case 0x00: case 0x01: case 0x02: case 0x03: case 0x0D: return F_MODRM;
    case 0x0F: return F_MODRM | F_IMM8; /* 3DNow!: the opcode is a trailing byte */
    case 0x04: case 0x0A: case 0x0C: case 0x36: case 0x39: case 0xA6: case 0xA7:
        return F_INVALID;
    case 0x77: return F_NONE;
    case 0xA3: case 0xA5: case 0xAB: case 0xAD: case 0xAE: case 0xAF: return F_MODRM;
    case 0xA4: case 0xAC: case 0xBA: return F_MODRM | F_IMM8;
    case 0xC2: case 0xC4: case 0xC5: case 0xC6: return F_MODRM | F_IMM8;
    default: break;
    }
    if (op <= 0x0F) return F_NONE; /* 05-0B 0E: SYSCALL, CLTS, SYSRET, INVD, WBINVD, UD2, FEMMS */
    if (op >= 0x24 && op <= 0x27) return F_INVALID;
    if (op >= 0x30 && op <= 0x37) return F_NONE;
    if (op >= 0x3B && op <= 0x3F) return F_INVALID;
    if (op >= 0x70 && op <= 0x73) return F_MODRM | F_IMM8;
    if (op >= 0x80 && op <= 0x8F) return F_REL32;
    if (op >= 0xA0 && op <= 0xAA) return F_NONE; /* PUSH/POP FS/GS, CPUID, RSM */
    if (op >= 0xC8 && op <= 0xCF) return F_NONE; /* BSWAP */
    return F_MODRM;
}

/* VEX/EVEX: every instruction has a ModRM except VZEROUPPER/VZEROALL; the 0F3A map
 * and a few 0F opcodes take an imm8. */
static unsigned vex_flags(unsigned map, unsigned op)
{
    if (map == 1 && op == 0x77)
        return F_NONE;
    if (map == 3)
        return F_MODRM | F_IMM8;
    if (map == 1 && ((op >= 0x70 && op <= 0x73) || op == 0xC2 || (op >= 0xC4 && op <= 0xC6)))
        return F_MODRM | F_IMM8;
    return F_MODRM;
}

typedef struct {
    size_t length;
    size_t imm_offset, imm_size;
    size_t disp_offset, disp_size;
    int rel;           /* 0, or the kind of direct branch: REF_CALL / REF_BRANCH */
    int rip_relative;  /* the memory operand is [rip + disp32] */
    int base;          /* base register number of the memory operand, or -1 */
    int lea64_reg;     /* destination register of a 64-bit one-byte-map LEA, or -1 */
    int moffs;         /* A0-A3 with a 64-bit offset */
} insn_t;

static uint64_t read_le(const uint8_t *p, size_t size)
{
    uint64_t value = 0;
    for (size_t i = 0; i < size; i++)
        value |= (uint64_t)p[i] << (8 * i);
    return value;
}

/* Decode one instruction; 0 if it does not decode (invalid, truncated, too long). */
static int decode(const uint8_t *code, size_t len, insn_t *insn)
{
    size_t i = 0, limit = len < 15 ? len : 15;
    int opsize16 = 0, addr32 = 0;
    unsigned rex = 0, flags, op;
    memset(insn, 0, sizeof(*insn));
    insn->base = -1;
    insn->lea64_reg = -1;
    for (; i < limit; i++) {
        uint8_t b = code[i];
        if (b == 0x66) opsize16 = 1;
        else if (b == 0x67) addr32 = 1;
        else if (b == 0x26 || b == 0x2E || b == 0x36 || b == 0x3E || b == 0x64 || b == 0x65 ||
                 b == 0xF0 || b == 0xF2 || b == 0xF3) continue;
        else break;
    }
    if (i < limit && (code[i] & 0xF0) == 0x40)
        rex = code[i++];
    if (i >= limit)
        return 0;
    op = code[i++];
    int one_byte_map = 0;
    if (op == 0xC4 || op == 0xC5 || op == 0x62) {
        unsigned map;
        if (op == 0xC5) {
            if (i + 1 > limit) return 0;
            map = 1;
            i += 1;
        } else if (op == 0xC4) {
            if (i + 2 > limit) return 0;
            map = code[i] & 0x1F;
            i += 2;
        } else {
            if (i + 3 > limit) return 0;
            map = code[i] & 0x07;
            i += 3;
        }
        if (i >= limit || map < 1 || map > 3) return 0;
        op = code[i++];
        flags = vex_flags(map, op);
    } else if (op == 0x0F) {
        if (i >= limit) return 0;
        op = code[i++];
        if (op == 0x38 || op == 0x3A) {
            if (i >= limit) return 0;
            i++;
            flags = op == 0x38 ? F_MODRM : (F_MODRM | F_IMM8);
        } else {
            flags = two_byte_flags(op);
        }
    } else {
        one_byte_map = 1;
        flags = one_byte_flags(op);
    }
    if (flags & F_INVALID)
        return 0;
    unsigned reg = 0;
    if (flags & F_MODRM) {
        if (i >= limit) return 0;
        unsigned modrm = code[i++], mod = modrm >> 6, rm = modrm & 7;
        reg = (modrm >> 3) & 7;
        if (mod != 3) {
            if (rm == 4) {
                if (i >= limit) return 0;
                unsigned sib = code[i++], base = sib & 7;
                if (mod == 0 && base == 5) {
                    insn->disp_offset = i;
                    insn->disp_size = 4;
                } else {
                    insn->base = (int)(base | ((rex & 1) << 3));
                }
            } else if (mod == 0 && rm == 5) {
                insn->disp_offset = i;
                insn->disp_size = 4;
                insn->rip_relative = !addr32;
            } else {
                insn->base = (int)(rm | ((rex & 1) << 3));
            }
            if (mod == 1) {
                insn->disp_offset = i;
                insn->disp_size = 1;
            } else if (mod == 2) {
                insn->disp_offset = i;
                insn->disp_size = 4;
            }
            i += insn->disp_size;
            if (addr32)
                insn->base = -1; /* 32-bit addressing: not a 64-bit base register */
        }
        if (one_byte_map && op == 0x8D && (rex & 8) && mod != 3)
            insn->lea64_reg = (int)(reg | ((rex & 4) << 1));
    }
    size_t imm = 0;
    if (flags & F_IMM8) imm = 1;
    if (flags & F_IMMZ) imm = opsize16 ? 2 : 4;
    if (flags & F_IMMV) imm = (rex & 8) ? 8 : (opsize16 ? 2 : 4);
    if (flags & F_IMM16) imm = 2;
    if (flags & F_ENTER) imm = 3;
    if (flags & F_REL8) { imm = 1; insn->rel = REF_BRANCH; }
    if (flags & F_REL32) { imm = 4; insn->rel = (one_byte_map && op == 0xE8) ? REF_CALL : REF_BRANCH; }
    if (flags & F_GRP3) {
        if (reg < 2) imm = (op == 0xF6) ? 1 : (opsize16 ? 2 : 4);
    }
    if (flags & F_MOFFS) {
        imm = addr32 ? 4 : 8;
        insn->moffs = !addr32;
    }
    if (imm) {
        insn->imm_offset = i;
        insn->imm_size = imm;
        i += imm;
    }
    if (i > limit)
        return 0;
    insn->length = i;
    return 1;
}

/* The i-th uint32 (host order, as the twin's memoryview.cast("I") reads it) of a
 * buffer with no alignment promised: any bytes-like object, a slice of one too. */
static uint32_t relocated_item(const uint8_t *relocated, size_t i)
{
    uint32_t value;
    memcpy(&value, relocated + 4 * i, 4);
    return value;
}

static int relocated_at(const uint8_t *relocated, size_t count, int64_t rva)
{
    size_t lo = 0, hi = count;
    if (rva < 0 || rva > 0xFFFFFFFFLL)
        return 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (relocated_item(relocated, mid) < (uint32_t)rva) lo = mid + 1;
        else hi = mid;
    }
    return lo < count && relocated_item(relocated, lo) == (uint32_t)rva;
}

static int add_ref(x64_refs_t *refs, int64_t site, int kind, int64_t target)
{
    if (refs->count == refs->capacity) {
        size_t grown = refs->capacity ? refs->capacity * 2 : 16;
        x64_ref_t *items = realloc(refs->items, grown * sizeof(x64_ref_t));
        if (items == NULL)
            return -1;
        refs->items = items;
        refs->capacity = grown;
    }
    refs->items[refs->count].site = site;
    refs->items[refs->count].kind = kind;
    refs->items[refs->count].target = target;
    refs->count++;
    return 0;
}

static int64_t sign_extend(uint64_t value, size_t size)
{
    unsigned bits = (unsigned)(8 * size);
    uint64_t sign = (uint64_t)1 << (bits - 1);
    value &= (bits == 64) ? ~(uint64_t)0 : ((sign << 1) - 1);
    return (int64_t)(value ^ sign) - (int64_t)sign;
}

int x64_normalise(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo, int64_t hi,
                  const uint8_t *relocated, size_t relocated_count, uint8_t *out,
                  x64_refs_t *refs, size_t *count)
{
    uint32_t image_base_registers = 0;
    size_t offset = 0;
    memcpy(out, code, len);
    *count = 0;
    while (offset < len) {
        insn_t insn;
        if (!decode(code + offset, len - offset, &insn))
            break;
        (*count)++;
        int64_t site = code_rva + (int64_t)offset;
        int64_t next = site + (int64_t)insn.length;
        const uint8_t *base = code + offset;
        /* An ABSOLUTE reference keeps the raw VA; the caller makes it an RVA. */
        if (insn.imm_size == 8 && !insn.moffs &&
            relocated_at(relocated, relocated_count, site + (int64_t)insn.imm_offset)) {
            uint64_t value = read_le(base + insn.imm_offset, 8);
            memset(out + offset + insn.imm_offset, 0, 8);
            if (add_ref(refs, site, REF_ABSOLUTE, (int64_t)value) < 0) return -1;
        } else if (insn.moffs &&
                   relocated_at(relocated, relocated_count, site + (int64_t)insn.imm_offset)) {
            uint64_t value = read_le(base + insn.imm_offset, 8);
            memset(out + offset + insn.imm_offset, 0, 8);
            if (add_ref(refs, site, REF_ABSOLUTE, (int64_t)value) < 0) return -1;
        } else if (insn.rel) {
            int64_t target = next + sign_extend(read_le(base + insn.imm_offset, insn.imm_size),
                                                insn.imm_size);
            if (!(lo <= target && target < hi)) {
                memset(out + offset + insn.imm_offset, 0, insn.imm_size);
                if (add_ref(refs, site, insn.rel, target) < 0) return -1;
            }
        } else if (insn.disp_size) {
            int64_t disp = sign_extend(read_le(base + insn.disp_offset, insn.disp_size),
                                       insn.disp_size);
            if (insn.rip_relative) {
                int64_t target = next + disp;
                if (target == 0 && insn.lea64_reg >= 0)
                    image_base_registers |= 1u << insn.lea64_reg;
                if (!(lo <= target && target < hi)) {
                    memset(out + offset + insn.disp_offset, 0, insn.disp_size);
                    if (add_ref(refs, site, REF_DATA, target) < 0) return -1;
                }
            } else if (insn.base >= 0 && insn.disp_size == 4 &&
                       (image_base_registers & (1u << insn.base))) {
                memset(out + offset + insn.disp_offset, 0, 4);
                if (add_ref(refs, site, REF_IMAGE_RVA, disp & 0xFFFFFFFFLL) < 0) return -1;
            }
        }
        offset += insn.length;
    }
    return 0;
}
