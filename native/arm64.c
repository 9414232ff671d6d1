/*
 * ARM64 normalisation over a buffer of instruction words, and its Python wrapper.
 *
 * The twin is normalise_arm64 in hpatch/_fallback/scan.py; a parity test fuzzes one
 * against the other and compares them on every sample and corpus function.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "arm64.h"

#define RVA_LIMIT 0xFFFFFFFFLL

static uint32_t read_word(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void write_word(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int64_t sign_extend(uint32_t value, int bits)
{
    uint32_t sign = 1u << (bits - 1);
    return (int64_t)(value ^ sign) - (int64_t)sign;
}

/* The byte offset an ADD (immediate, 64-bit, no shift) or LDR/STR (unsigned
 * immediate, scaled by the access size) adds to its base register; -1 for any other
 * word. These are what complete an ADRP. */
static int64_t page_offset(uint32_t word)
{
    if ((word & 0xFFC00000u) == 0x91000000u)
        return (int64_t)((word >> 10) & 0xFFFu);
    if ((word & 0x3B000000u) == 0x39000000u) {
        unsigned scale = word >> 30;
        if ((word & 0x04000000u) && ((word >> 23) & 1u)) /* 128-bit vector register */
            scale = 4;
        return (int64_t)((word >> 10) & 0xFFFu) << scale;
    }
    return -1;
}

/* General-purpose registers as bits: x0..x30. Number 31 (SP or the zero register)
 * never holds a page. */
#define ALL_REGISTERS 0x7FFFFFFFu
/* What a call leaves undefined: x0-x18 by the calling convention, and x30 (the link). */
#define CALL_CLOBBERED (0x0007FFFFu | (1u << 30))
#define REGISTERS 31
#define UNKNOWN (-1)

static uint32_t reg(unsigned n)
{
    return n < REGISTERS ? 1u << n : 0;
}

/* Every register field of the word (Rt, Rn, Rt2, Rs): what an instruction whose
 * shape is known but not its every form may write. */
static uint32_t fields(uint32_t word)
{
    return reg(word & 31u) | reg((word >> 5) & 31u) | reg((word >> 10) & 31u) |
           reg((word >> 16) & 31u);
}

static uint32_t load_store_written(uint32_t word)
{
    unsigned rt = word & 31u, rn = (word >> 5) & 31u;
    int vector = (word & 0x04000000u) != 0;
    if ((word & 0xBE000000u) == 0x0C000000u) /* Advanced SIMD structures */
        return (word & 0x00800000u) ? reg(rn) : 0; /* post-indexed: the base moves */
    if ((word & 0x3B000000u) == 0x18000000u) /* load literal; vector, PRFM */
        return (vector || (word >> 30) == 3) ? 0 : reg(rt);
    if ((word & 0x38000000u) == 0x28000000u) { /* register pairs */
        unsigned mode = (word >> 23) & 3u;
        uint32_t moved = (mode == 1 || mode == 3) ? reg(rn) : 0;
        if (!vector && (word >> 30) == 3)
            return fields(word);
        if (vector || !(word & 0x00400000u)) /* a vector pair, or a store */
            return moved;
        return moved | reg(rt) | reg((word >> 10) & 31u);
    }
    if ((word & 0x38000000u) == 0x38000000u) { /* single registers */
        unsigned size = word >> 30, opc = (word >> 22) & 3u;
        uint32_t moved = 0;
        if (word & 0x01000000u) { /* unsigned offset */
        } else if (!(word & 0x00200000u)) { /* unscaled, pre- or post-indexed, unprivileged */
            unsigned index = (word >> 10) & 3u;
            moved = (index == 1 || index == 3) ? reg(rn) : 0;
        } else if (((word >> 10) & 3u) != 2) { /* atomics, LD64B (eight registers), LDRAA */
            return fields(word) | ((0xFFu << rt) & ALL_REGISTERS);
        }
        if (vector || opc == 0 || (opc == 2 && size == 3)) /* vector, store, PRFM */
            return moved;
        if (opc == 3 && size >= 2)
            return fields(word);
        return moved | reg(rt);
    }
    /* exclusives, CASP (Rs and Rs+1, Rt and Rt+1), tag stores */
    return fields(word) | reg(rt + 1) | reg(((word >> 16) & 31u) + 1);
}

static uint32_t register_written(uint32_t word)
{
    unsigned rd = word & 31u, op2 = (word >> 21) & 0xFu;
    if (!(word & 0x10000000u)) /* logical, add/sub (shifted or extended register) */
        return reg(rd);
    if (op2 == 0 && ((word >> 10) & 0x3Fu) == 0) /* add/sub with carry */
        return reg(rd);
    if (op2 == 2) /* conditional compare */
        return 0;
    if (op2 == 4 || op2 == 6 || (op2 & 8)) /* select; one or two sources; three */
        return reg(rd);
    return fields(word);
}

/* The general-purpose registers (bits) an A64 word may change: exact where
 * hpatch.arch.arm64_relocate models the instruction (every register it takes as
 * written is in here), every register field where it knows the shape only, every
 * register where it does not model the word at all (SVC, SVE, SME, unallocated). */
static uint32_t written(uint32_t word)
{
    unsigned rd = word & 31u, group = (word >> 25) & 0xFu;
    if (group == 8 || group == 9) { /* data processing, immediate */
        unsigned op = (word >> 23) & 7u, opc = (word >> 29) & 3u;
        if (op == 3) /* add/sub with tags */
            return fields(word);
        if ((op == 5 && opc == 1) || (op == 6 && opc == 3))
            return ALL_REGISTERS;
        return reg(rd);
    }
    if (group == 10 || group == 11) { /* branches, exception generation, system */
        if ((word & 0x7C000000u) == 0x14000000u) /* B, BL */
            return (word >> 31) ? reg(30) : 0;
        if ((word & 0x7C000000u) == 0x34000000u || (word & 0xFE000000u) == 0x54000000u ||
            (word & 0xFFE0001Fu) == 0xD4200000u) /* CBZ, TBZ, B.cond, BRK */
            return 0;
        if ((word & 0xFFFFF01Fu) == 0xD503201Fu) { /* hints */
            unsigned crm = (word >> 8) & 0xFu, op2 = (word >> 5) & 7u;
            if (crm == 1) /* PAC and AUT of x17 */
                return reg(17);
            if (crm == 3 || (crm == 0 && op2 == 7)) /* PAC and AUT of x30, XPACLRI */
                return reg(30);
            return 0;
        }
        if ((word & 0xFFC00000u) == 0xD5000000u) /* system: MRS and SYSL write Rt */
            return ((word & 0x00200000u) && (word & 0x00180000u)) ? reg(rd) : 0;
        if ((word & 0xFE000000u) == 0xD6000000u) { /* branch to register */
            unsigned opc = (word >> 21) & 0xFu;
            return (opc == 1 || opc == 9) ? reg(30) : 0;
        }
        return ALL_REGISTERS;
    }
    if ((group & 5u) == 4) /* loads and stores */
        return load_store_written(word);
    if (group == 5 || group == 13) /* data processing, register */
        return register_written(word);
    if (group == 7 || group == 15) { /* scalar floating point and Advanced SIMD */
        if ((word & 0x5F20FC00u) == 0x1E200000u) { /* conversion with a general register */
            unsigned opcode = (word >> 16) & 7u;
            return (opcode == 2 || opcode == 3 || opcode == 7) ? 0 : reg(rd);
        }
        if ((word & 0x5F200000u) == 0x1E000000u) { /* conversion with a fixed-point integer */
            unsigned opcode = (word >> 16) & 7u;
            return (opcode == 2 || opcode == 3) ? 0 : reg(rd);
        }
        if ((word & 0x9FE08400u) == 0x0E000400u && !(word & 0x20000000u)) { /* SIMD copy */
            unsigned imm4 = (word >> 11) & 0xFu;
            return (imm4 == 5 || imm4 == 7) ? reg(rd) : 0; /* SMOV, UMOV */
        }
        return 0;
    }
    return ALL_REGISTERS; /* reserved, SME, SVE, unallocated */
}

static int64_t adrp_page(uint32_t word, int64_t rva)
{
    int64_t immediate = sign_extend((((word >> 5) & 0x7FFFFu) << 2) | ((word >> 29) & 3u), 21);
    return (rva & ~(int64_t)0xFFF) + immediate * 4096;
}

static int is_adrp(uint32_t word)
{
    return (word & 0x9F000000u) == 0x90000000u;
}

/* What a word does to the control flow. */
enum { GOES_ON, CALLS, ENDS, DISPATCHES };

static int control(uint32_t word)
{
    if ((word & 0xFC000000u) == 0x94000000u) /* BL */
        return CALLS;
    if ((word & 0xFE000000u) == 0xD6000000u) { /* branch to register */
        unsigned opc = (word >> 21) & 0xFu;
        if (opc == 1 || opc == 9) /* BLR and its authenticated forms return */
            return CALLS;
        /* BR and its authenticated forms (a jump table's dispatch, or a tail call);
         * RET and ERET leave for good */
        return (opc == 0 || opc == 8) ? DISPATCHES : ENDS;
    }
    if ((word & 0xFFFF0000u) == 0 || (word & 0xFFE0001Fu) == 0xD4200000u) /* UDF, BRK */
        return ENDS;
    if ((word & 0xFC000000u) == 0x14000000u) /* B */
        return ENDS;
    return GOES_ON;
}

/* The pages each register holds, followed along the control flow of a part: see
 * _link_pages in hpatch/_fallback/scan.py. A register's value is an ADRP's index;
 * CLASS(c): one of the ADRPs of the page of the ADRP at c (the part's first with
 * that page); UNKNOWN; or NOTHING, where no path from the part's start leads (the
 * top of the lattice). CLASS is its own inverse. */
#define NOTHING (-2)
#define CLASS(c) (-3 - (c))
#define IS_PAGE(value) ((value) >= 0 || (value) < NOTHING)

typedef struct {
    const uint8_t *code;
    size_t words;
    int32_t *link;    /* per word: see link_pages */
    int32_t *target;  /* per word: where a direct branch leads in the part, or -1 */
    int32_t *slot;    /* per word: its head number, or -1 */
    int32_t *classes; /* per word: an ADRP's class */
    uint8_t *visited; /* per word */
    size_t heads;     /* head number `heads` stands for the targets of every BR */
    int32_t *head;    /* per head: its word */
    int32_t *state;   /* per head: REGISTERS values */
    uint8_t *reached; /* per head: its state holds something */
    uint8_t *queued;  /* per head */
    int32_t *heap;    /* heads to walk, lowest first */
    size_t pending;
    int32_t *seeds; /* the heads the BR head leads to */
    size_t seeded;
} flow_t;

static void push(flow_t *f, int32_t head)
{
    size_t at = f->pending++;
    f->queued[head] = 1;
    while (at > 0 && f->heap[(at - 1) / 2] > head) {
        f->heap[at] = f->heap[(at - 1) / 2];
        at = (at - 1) / 2;
    }
    f->heap[at] = head;
}

static int32_t pop(flow_t *f)
{
    int32_t top = f->heap[0], last = f->heap[--f->pending];
    size_t at = 0;
    for (;;) {
        size_t child = 2 * at + 1;
        if (child >= f->pending)
            break;
        if (child + 1 < f->pending && f->heap[child + 1] < f->heap[child])
            child++;
        if (f->heap[child] >= last)
            break;
        f->heap[at] = f->heap[child];
        at = child;
    }
    if (f->pending)
        f->heap[at] = last;
    f->queued[top] = 0;
    return top;
}

static int32_t class_of(const flow_t *f, int32_t value)
{
    return value >= 0 ? f->classes[value] : CLASS(value);
}

/* The meet of a head's state and one that reaches it. */
static void merge(flow_t *f, int32_t head, const int32_t *incoming)
{
    int32_t *state = f->state + (size_t)head * REGISTERS;
    int changed = 0;
    if (!f->reached[head]) {
        memcpy(state, incoming, REGISTERS * sizeof(int32_t));
        f->reached[head] = 1;
        changed = 1;
    } else {
        for (int r = 0; r < REGISTERS; r++) {
            int32_t value = state[r], other = incoming[r];
            if (value == other || value == UNKNOWN || other == NOTHING)
                continue;
            if (value == NOTHING) {
                state[r] = other;
                changed = 1;
                continue;
            }
            if (other != UNKNOWN && class_of(f, value) == class_of(f, other)) {
                if (value >= 0) { /* two ADRPs of one page: the class */
                    state[r] = CLASS(f->classes[value]);
                    changed = 1;
                }
                continue;
            }
            state[r] = UNKNOWN;
            changed = 1;
        }
    }
    if (changed && !f->queued[head])
        push(f, head);
}

static void forget(int32_t *state, uint32_t registers)
{
    for (int r = 0; registers; r++, registers >>= 1)
        if (registers & 1u)
            state[r] = UNKNOWN;
}

/* Follow the code from word w with the registers in state, up to the next head or
 * the end of the path; each completion on the way takes the value of its base. */
static void walk(flow_t *f, size_t w, int32_t *state)
{
    for (;;) {
        uint32_t word = read_word(f->code + 4 * w);
        f->visited[w] = 1;
        if (page_offset(word) >= 0) {
            unsigned base = (word >> 5) & 31u;
            f->link[w] = base < REGISTERS && IS_PAGE(state[base]) ? state[base] : UNKNOWN;
        }
        unsigned rd = word & 31u;
        if (is_adrp(word)) {
            if (rd < REGISTERS)
                state[rd] = (int32_t)w;
        } else if ((word & 0xFFE0FFE0u) == 0xAA0003E0u) { /* mov xD, xS: the page is copied */
            unsigned source = (word >> 16) & 31u;
            if (rd < REGISTERS)
                state[rd] = source < REGISTERS ? state[source] : UNKNOWN;
        } else {
            forget(state, written(word));
        }
        int how = control(word);
        if (how == CALLS)
            forget(state, CALL_CLOBBERED);
        else if (f->target[w] >= 0)
            merge(f, f->slot[f->target[w]], state);
        else if (how == DISPATCHES)
            merge(f, (int32_t)f->heads, state);
        if (how >= ENDS || ++w >= f->words)
            return;
        if (f->slot[w] >= 0) {
            merge(f, f->slot[w], state);
            return;
        }
    }
}

/* Sorts ADRPs by page, then index. */
typedef struct {
    int64_t page;
    int32_t index;
} page_entry_t;

static int by_page(const void *a, const void *b)
{
    const page_entry_t *x = a, *y = b;
    if (x->page != y->page)
        return x->page < y->page ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* For each word: a completion (an ADD/LDR/STR whose base register holds an ADRP's
 * page on every path to it) -> the index of an ADRP of that page; an ADRP -> the
 * index of the completion that gives its target; -1 otherwise. Returns 0, or -1 when
 * memory runs out. */
static int link_pages(const uint8_t *code, size_t words, int64_t code_rva, int64_t lo, int64_t hi,
                      int32_t *link)
{
    flow_t f;
    memset(&f, 0, sizeof f);
    f.code = code;
    f.words = words;
    f.link = link;
    int32_t state[REGISTERS];
    page_entry_t *pages = NULL;
    size_t n = words ? words : 1, adrps = 0, following = 0;
    int result = -1;
    for (size_t w = 0; w < words; w++)
        link[w] = UNKNOWN;
    f.target = malloc(n * sizeof(int32_t));
    f.slot = malloc(n * sizeof(int32_t));
    f.classes = malloc(n * sizeof(int32_t));
    f.visited = calloc(n, 1);
    if (f.target == NULL || f.slot == NULL || f.classes == NULL || f.visited == NULL)
        goto done;
    int64_t end = code_rva + 4 * (int64_t)words;
    if (hi < end)
        end = hi;
    for (size_t w = 0; w < words; w++) {
        uint32_t word = read_word(code + 4 * w);
        int64_t rva = code_rva + 4 * (int64_t)w, target;
        f.target[w] = -1;
        f.slot[w] = -1;
        if (is_adrp(word))
            adrps++;
        if ((word & 0xFC000000u) == 0x14000000u)
            target = rva + 4 * sign_extend(word & 0x03FFFFFFu, 26);
        else if ((word & 0xFF000010u) == 0x54000000u || (word & 0x7E000000u) == 0x34000000u)
            target = rva + 4 * sign_extend((word >> 5) & 0x7FFFFu, 19);
        else if ((word & 0x7E000000u) == 0x36000000u)
            target = rva + 4 * sign_extend((word >> 5) & 0x3FFFu, 14);
        else
            continue;
        if (target >= code_rva && target < end && target >= lo)
            f.target[w] = (int32_t)((target - code_rva) / 4);
    }
    /* Heads: where branches lead, and where code that no path falls into starts. */
    for (size_t w = 0; w < words; w++) {
        if (f.target[w] >= 0)
            f.slot[f.target[w]] = 0;
        if (w + 1 < words && control(read_word(code + 4 * w)) >= ENDS)
            f.slot[w + 1] = 0;
    }
    if (words)
        f.slot[0] = 0;
    for (size_t w = 0; w < words; w++)
        if (f.slot[w] >= 0)
            f.slot[w] = (int32_t)f.heads++;
    /* Each ADRP's class: the first ADRP of the part with the same page. */
    pages = malloc((adrps ? adrps : 1) * sizeof(page_entry_t));
    size_t h = f.heads + 1;
    if (h > SIZE_MAX / (REGISTERS * sizeof(int32_t)))
        goto done;
    f.head = malloc(h * sizeof(int32_t));
    f.state = malloc(h * REGISTERS * sizeof(int32_t));
    f.reached = calloc(h, 1);
    f.queued = calloc(h, 1);
    f.heap = malloc(h * sizeof(int32_t));
    f.seeds = malloc(h * sizeof(int32_t));
    if (pages == NULL || f.head == NULL || f.state == NULL || f.reached == NULL ||
        f.queued == NULL || f.heap == NULL || f.seeds == NULL)
        goto done;
    adrps = 0;
    for (size_t w = 0; w < words; w++) {
        uint32_t word = read_word(code + 4 * w);
        if (f.slot[w] >= 0)
            f.head[f.slot[w]] = (int32_t)w;
        if (is_adrp(word)) {
            pages[adrps].page = adrp_page(word, code_rva + 4 * (int64_t)w);
            pages[adrps++].index = (int32_t)w;
        }
    }
    qsort(pages, adrps, sizeof(page_entry_t), by_page);
    for (size_t i = 0; i < adrps; i++) {
        int first = i == 0 || pages[i].page != pages[i - 1].page;
        f.classes[pages[i].index] = first ? pages[i].index : f.classes[pages[i - 1].index];
    }
    for (;;) {
        while (f.pending) {
            int32_t head = pop(&f);
            const int32_t *known = f.state + (size_t)head * REGISTERS;
            if ((size_t)head == f.heads) {
                for (size_t i = 0; i < f.seeded; i++)
                    merge(&f, f.seeds[i], known);
            } else {
                memcpy(state, known, sizeof state);
                walk(&f, (size_t)f.head[head], state);
            }
        }
        while (following < words && f.visited[following])
            following++;
        if (following == words)
            break;
        /* Code no path from the part's start reaches (the cases of a jump table,
         * which take what registers hold at every BR of the part; a handler the
         * system enters; padding) starts with NOTHING; the start with UNKNOWN. The
         * word is a head: the one before it does not fall through. */
        f.seeds[f.seeded++] = f.slot[following];
        if (following && f.reached[f.heads]) {
            memcpy(state, f.state + f.heads * REGISTERS, sizeof state);
        } else {
            for (int r = 0; r < REGISTERS; r++)
                state[r] = following ? NOTHING : UNKNOWN;
        }
        merge(&f, f.slot[following], state);
    }
    /* An ADRP's target: its first completion in address order, else the first
     * completion of its class that a join reached (kept in f.slot, done with). */
    for (size_t w = 0; w < words; w++)
        f.slot[w] = -1;
    for (size_t w = 0; w < words; w++) {
        int32_t value = link[w];
        if (page_offset(read_word(code + 4 * w)) < 0)
            continue;
        if (value >= 0 && link[value] < 0)
            link[value] = (int32_t)w;
        else if (value < NOTHING && f.slot[CLASS(value)] < 0)
            f.slot[CLASS(value)] = (int32_t)w;
    }
    for (size_t w = 0; w < words; w++) {
        uint32_t word = read_word(code + 4 * w);
        if (page_offset(word) >= 0) {
            if (link[w] < NOTHING)
                link[w] = CLASS(link[w]);
        } else if (is_adrp(word) && link[w] < 0) {
            link[w] = f.slot[f.classes[w]];
        }
    }
    result = 0;
done:
    free(pages);
    free(f.target);
    free(f.slot);
    free(f.classes);
    free(f.visited);
    free(f.head);
    free(f.state);
    free(f.reached);
    free(f.queued);
    free(f.heap);
    free(f.seeds);
    return result;
}

ptrdiff_t arm64_normalise(const uint8_t *code, size_t len, int64_t code_rva, int64_t lo,
                          int64_t hi, uint8_t *out, arm64_ref_t *refs)
{
    size_t words = len / 4, count = 0;
    int32_t *link = malloc((words ? words : 1) * sizeof(int32_t));
    if (link == NULL || link_pages(code, words, code_rva, lo, hi, link) < 0) {
        free(link);
        return -1;
    }
    for (size_t w = 0; w < words; w++) {
        uint32_t word = read_word(code + 4 * w);
        uint32_t masked = word;
        int64_t rva = code_rva + 4 * (int64_t)w;
        if ((word & 0x7C000000u) == 0x14000000u) {
            /* B / BL imm26 */
            int64_t target = rva + 4 * sign_extend(word & 0x03FFFFFFu, 26);
            if (target < lo || target >= hi) {
                masked = word & 0xFC000000u;
                refs[count].kind = (word & 0x80000000u) ? REF_CALL : REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0xFF000010u) == 0x54000000u || (word & 0x7E000000u) == 0x34000000u) {
            /* B.cond, CBZ / CBNZ imm19 */
            int64_t target = rva + 4 * sign_extend((word >> 5) & 0x7FFFFu, 19);
            if (target < lo || target >= hi) {
                masked = word & ~(0x7FFFFu << 5);
                refs[count].kind = REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0x7E000000u) == 0x36000000u) {
            /* TBZ / TBNZ imm14 */
            int64_t target = rva + 4 * sign_extend((word >> 5) & 0x3FFFu, 14);
            if (target < lo || target >= hi) {
                masked = word & ~(0x3FFFu << 5);
                refs[count].kind = REF_BRANCH;
                refs[count].site = rva;
                refs[count++].target = target;
            }
        } else if ((word & 0x1F000000u) == 0x10000000u) {
            /* ADR / ADRP: an ADRP names a page; what it means is its first completion */
            masked = word & ~((0x7FFFFu << 5) | (3u << 29));
            refs[count].kind = REF_ADDRESS;
            refs[count].site = rva;
            if (word & 0x80000000u) {
                int64_t target = adrp_page(word, rva);
                if (link[w] >= 0)
                    target += page_offset(read_word(code + 4 * (size_t)link[w]));
                refs[count++].target = target;
            } else {
                refs[count++].target =
                    rva + sign_extend((((word >> 5) & 0x7FFFFu) << 2) | ((word >> 29) & 3u), 21);
            }
        } else if ((word & 0x3B000000u) == 0x18000000u && (word & 0xC4000000u) != 0xC0000000u) {
            /* LDR (literal) of a W/X/S/D/Q register or LDRSW; not PRFM */
            masked = word & ~(0x7FFFFu << 5);
            refs[count].kind = REF_LITERAL;
            refs[count].site = rva;
            refs[count++].target = rva + 4 * sign_extend((word >> 5) & 0x7FFFFu, 19);
        } else if (link[w] >= 0) {
            /* an ADD/LDR/STR completing the page of the ADRP at link[w] */
            size_t adrp = (size_t)link[w];
            int64_t page = adrp_page(read_word(code + 4 * adrp), code_rva + 4 * (int64_t)adrp);
            masked = word & ~(0xFFFu << 10);
            refs[count].kind = REF_ADDRESS;
            refs[count].site = rva;
            refs[count++].target = page + page_offset(word);
        }
        write_word(out + 4 * w, masked);
    }
    if (len > 4 * words)
        memcpy(out + 4 * words, code + 4 * words, len - 4 * words);
    free(link);
    return (ptrdiff_t)count;
}

static PyObject *refs_to_list(const arm64_ref_t *refs, size_t count)
{
    PyObject *list = PyList_New((Py_ssize_t)count);
    if (list == NULL)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_New(3);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
        PyObject *site = PyLong_FromLongLong(refs[i].site);
        PyObject *kind = PyLong_FromLong(refs[i].kind);
        PyObject *target = PyLong_FromLongLong(refs[i].target);
        if (site == NULL || kind == NULL || target == NULL) {
            Py_XDECREF(site);
            Py_XDECREF(kind);
            Py_XDECREF(target);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 0, site);
        PyTuple_SET_ITEM(item, 1, kind);
        PyTuple_SET_ITEM(item, 2, target);
    }
    return list;
}

PyDoc_STRVAR(normalise_arm64_doc,
"normalise_arm64(code, code_rva, lo_rva, hi_rva, relocated, image_base, /)\n--\n\n"
"Mask the position-dependent fields of ARM64 code at code_rva.\n\n"
"B/BL, B.cond, CBZ/CBNZ and TBZ/TBNZ whose targets lie outside [lo_rva, hi_rva),\n"
"every ADR and ADRP, the ADD/LDR/STR page offsets that complete an ADRP, and LDR\n"
"(literal). relocated (sorted uint32 RVAs of base-relocated fields) and image_base\n"
"are checked and otherwise unused: instruction words hold no relocated field.\n"
"Returns (normalised bytes, [(site_rva, kind, target_rva), ...], instruction count);\n"
"a trailing partial word is kept as it is.");

static PyObject *normalise_arm64(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer code, relocated;
    long long code_rva, lo_rva, hi_rva, image_base;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&:normalise_arm64", hpatch_buffer_arg, &code,
                          hpatch_int64_arg, &code_rva, hpatch_int64_arg, &lo_rva,
                          hpatch_int64_arg, &hi_rva, hpatch_buffer_arg, &relocated,
                          hpatch_int64_arg, &image_base))
        return NULL;
    PyObject *result = NULL, *normalised = NULL, *list = NULL;
    arm64_ref_t *refs = NULL;
    size_t words = (size_t)code.len / 4, count = 0;
    if (relocated.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "relocated must hold uint32 values");
        goto done;
    }
    if (code_rva < 0 || code_rva > RVA_LIMIT || lo_rva < 0 || lo_rva > RVA_LIMIT + 1 ||
        hi_rva < 0 || hi_rva > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "rva out of range");
        goto done;
    }
    if (code_rva + (long long)code.len > RVA_LIMIT + 1) {
        PyErr_SetString(PyExc_ValueError, "code extends past the 32-bit rva space");
        goto done;
    }
    normalised = PyBytes_FromStringAndSize(NULL, code.len);
    if (normalised == NULL)
        goto done;
    /* code.len <= 2**32 here, so the product cannot overflow. */
    refs = malloc((words ? words : 1) * sizeof(arm64_ref_t));
    if (refs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ptrdiff_t written_refs;
    Py_BEGIN_ALLOW_THREADS
    written_refs = arm64_normalise((const uint8_t *)code.buf, (size_t)code.len, code_rva, lo_rva,
                                   hi_rva, (uint8_t *)PyBytes_AS_STRING(normalised), refs);
    Py_END_ALLOW_THREADS
    if (written_refs < 0) {
        PyErr_NoMemory();
        goto done;
    }
    count = (size_t)written_refs;
    list = refs_to_list(refs, count);
    if (list == NULL)
        goto done;
    result = Py_BuildValue("(OOn)", normalised, list, (Py_ssize_t)words);
done:
    Py_XDECREF(normalised);
    Py_XDECREF(list);
    free(refs);
    PyBuffer_Release(&code);
    PyBuffer_Release(&relocated);
    return result;
}

PyMethodDef hpatch_arm64_methods[] = {
    {"normalise_arm64", normalise_arm64, METH_VARARGS, normalise_arm64_doc},
    {NULL, NULL, 0, NULL},
};
