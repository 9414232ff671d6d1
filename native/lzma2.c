/*
 * The LZMA2 encoder of hpatch/_fallback/lzma2.py, in C: the same arguments give the
 * same bytes as the pure-Python twin on every platform.
 *
 * Everything that decides a byte is integer arithmetic over the input, and every
 * cache the twin keeps is kept here with the same lifetime (the footer prices in
 * particular are priced when first asked for after a refresh, not when used), so the
 * parse makes the same choices. The match finder keys its chains by the exact three
 * bytes, as the twin's dictionaries do, so candidates come in the same order.
 *
 * The twin enters positions into its chains as its parse reaches them; here every
 * position is entered before the parse starts, each chained to the ones before it, and
 * the search at a position walks from the head that position's entry replaced: the
 * candidates the twin would see then. The matches at a position are thus the same
 * whichever setting's parse asks for them, which lets lzma2_compress_settings code
 * several (lc, lp, pb) settings with one finder and search each position once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"

#define MATCH_MIN 2
#define MATCH_MAX 273
#define LEN_SYMBOLS (MATCH_MAX + 1)
#define STATES 12
#define POS_STATES_MAX 16
#define END_POS_MODEL 14
#define FULL_DISTANCES 128
#define ALIGN_BITS 4
#define PRICE_BITS 4
#define PRICE_INFINITY ((int64_t)1 << 60)
#define CHUNK_UNPACKED_MAX (1L << 21)
#define CHUNK_PACKED_MAX (1L << 16)
/* Positions and distances are int32: the chains hold one per input byte. */
#define BUFFER_MAX ((int64_t)0x7FFFFFF0)
#define REFRESH_SYMBOLS 64

enum { KIND_LITERAL = 0, KIND_MATCH = 1, KIND_REP = 2, KIND_SHORTREP = 3 };

static const uint8_t LIT_NEXT[STATES] = {0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 4, 5};
static const uint8_t MATCH_NEXT[STATES] = {7, 7, 7, 7, 7, 7, 7, 10, 10, 10, 10, 10};
static const uint8_t REP_NEXT[STATES] = {8, 8, 8, 8, 8, 8, 8, 11, 11, 11, 11, 11};
static const uint8_t SHORTREP_NEXT[STATES] = {9, 9, 9, 9, 9, 9, 9, 11, 11, 11, 11, 11};

/* The twin's _price_table(): price in 1/16 bit of a bit of probability
 * ((index << 4) + 8) / 2048. */
static const uint8_t PRICES[128] = {
    128, 103, 91, 84, 78, 73, 69, 66, 63, 61, 58, 56, 54, 52, 51, 49,
    48,  46,  45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 34, 33,
    32,  31,  31, 30, 29, 29, 28, 28, 27, 26, 26, 25, 25, 24, 24, 23,
    23,  22,  22, 22, 21, 21, 20, 20, 19, 19, 19, 18, 18, 17, 17, 17,
    16,  16,  16, 15, 15, 15, 14, 14, 14, 13, 13, 13, 12, 12, 12, 11,
    11,  11,  11, 10, 10, 10, 10, 9,  9,  9,  9,  8,  8,  8,  8,  7,
    7,   7,   7,  6,  6,  6,  6,  5,  5,  5,  5,  5,  4,  4,  4,  4,
    3,   3,   3,  3,  3,  2,  2,  2,  2,  2,  2,  1,  1,  1,  1,  1,
};

typedef uint16_t prob_t;

static int32_t bit_price(prob_t probability, unsigned bit)
{
    return PRICES[(bit ? 2048u - probability : probability) >> 4];
}

static int32_t tree_price(const prob_t *probs, int bits, uint32_t value)
{
    int32_t price = 0;
    uint32_t m = 1;
    for (int shift = bits - 1; shift >= 0; shift--) {
        unsigned bit = (value >> shift) & 1u;
        price += bit_price(probs[m], bit);
        m = (m << 1) | bit;
    }
    return price;
}

/* probs[offset + m] for m from 1: offset is -1 for the first special slot. */
static int32_t reverse_price(const prob_t *probs, int offset, int bits, uint32_t value)
{
    int32_t price = 0;
    uint32_t m = 1;
    for (int i = 0; i < bits; i++) {
        unsigned bit = value & 1u;
        value >>= 1;
        price += bit_price(probs[offset + (int)m], bit);
        m = (m << 1) | bit;
    }
    return price;
}

/* The position slot of a distance value (distance - 1), value < 2^32. */
static uint32_t slot_of(uint32_t value)
{
    if (value < 4)
        return value;
    uint32_t bits = 0;
    for (uint32_t v = value; v > 1; v >>= 1)
        bits++;
    return (bits << 1) | ((value >> (bits - 1)) & 1u);
}

/* A growable byte buffer; a failed growth is remembered and reported at the end. */
typedef struct {
    uint8_t *data;
    size_t size;
    size_t capacity;
    int failed;
} bytes_t;

static void bytes_reserve(bytes_t *b, size_t extra)
{
    if (b->failed || b->size + extra <= b->capacity)
        return;
    size_t grown = b->capacity ? b->capacity : 256;
    while (grown < b->size + extra) {
        if (grown > SIZE_MAX / 2) {
            b->failed = 1;
            return;
        }
        grown *= 2;
    }
    uint8_t *data = realloc(b->data, grown);
    if (data == NULL) {
        b->failed = 1;
        return;
    }
    b->data = data;
    b->capacity = grown;
}

static void bytes_put(bytes_t *b, uint8_t byte)
{
    bytes_reserve(b, 1);
    if (!b->failed)
        b->data[b->size++] = byte;
}

typedef struct {
    uint64_t low;
    uint32_t range;
    uint8_t cache;
    uint64_t cache_size;
    bytes_t out;
} range_encoder_t;

static void rc_reset(range_encoder_t *rc)
{
    rc->low = 0;
    rc->range = 0xFFFFFFFFu;
    rc->cache = 0;
    rc->cache_size = 1;
    rc->out.size = 0;
}

static void rc_shift_low(range_encoder_t *rc)
{
    uint64_t low = rc->low;
    if (low < 0xFF000000u || low >= ((uint64_t)1 << 32)) {
        uint8_t carry = (uint8_t)(low >> 32);
        uint8_t temp = rc->cache;
        do {
            bytes_put(&rc->out, (uint8_t)(temp + carry));
            temp = 0xFF;
        } while (--rc->cache_size != 0);
        rc->cache = (uint8_t)(low >> 24);
    }
    rc->cache_size++;
    rc->low = (low & 0x00FFFFFFu) << 8;
}

static void rc_normalize(range_encoder_t *rc)
{
    while (rc->range < (1u << 24)) {
        rc->range <<= 8;
        rc_shift_low(rc);
    }
}

static void rc_bit(range_encoder_t *rc, prob_t *prob, unsigned bit)
{
    uint32_t p = *prob;
    uint32_t bound = (rc->range >> 11) * p;
    if (bit) {
        rc->low += bound;
        rc->range -= bound;
        *prob = (prob_t)(p - (p >> 5));
    } else {
        rc->range = bound;
        *prob = (prob_t)(p + ((2048u - p) >> 5));
    }
    rc_normalize(rc);
}

static void rc_direct(range_encoder_t *rc, uint32_t value, int count)
{
    for (int shift = count - 1; shift >= 0; shift--) {
        rc->range >>= 1;
        if ((value >> shift) & 1u)
            rc->low += rc->range;
        rc_normalize(rc);
    }
}

static void rc_tree(range_encoder_t *rc, prob_t *probs, int bits, uint32_t value)
{
    uint32_t m = 1;
    for (int shift = bits - 1; shift >= 0; shift--) {
        unsigned bit = (value >> shift) & 1u;
        rc_bit(rc, &probs[m], bit);
        m = (m << 1) | bit;
    }
}

static void rc_reverse(range_encoder_t *rc, prob_t *probs, int offset, int bits, uint32_t value)
{
    uint32_t m = 1;
    for (int i = 0; i < bits; i++) {
        unsigned bit = value & 1u;
        value >>= 1;
        rc_bit(rc, &probs[offset + (int)m], bit);
        m = (m << 1) | bit;
    }
}

/* Bytes this chunk will hold once flushed. */
static uint64_t rc_pending(const range_encoder_t *rc)
{
    return (uint64_t)rc->out.size + rc->cache_size + 4;
}

static void rc_finish(range_encoder_t *rc)
{
    for (int i = 0; i < 5; i++)
        rc_shift_low(rc);
}

/* One LZMA length coder (2..273) for 16 position states. */
typedef struct {
    prob_t choice[2];
    prob_t low[POS_STATES_MAX << 3];
    prob_t mid[POS_STATES_MAX << 3];
    prob_t high[256];
} length_coder_t;

static void length_encode(range_encoder_t *rc, length_coder_t *lc, uint32_t length,
                          uint32_t pos_state)
{
    uint32_t value = length - MATCH_MIN;
    if (value < 8) {
        rc_bit(rc, &lc->choice[0], 0);
        rc_tree(rc, &lc->low[pos_state << 3], 3, value);
    } else if (value < 16) {
        rc_bit(rc, &lc->choice[0], 1);
        rc_bit(rc, &lc->choice[1], 0);
        rc_tree(rc, &lc->mid[pos_state << 3], 3, value - 8);
    } else {
        rc_bit(rc, &lc->choice[0], 1);
        rc_bit(rc, &lc->choice[1], 1);
        rc_tree(rc, lc->high, 8, value - 16);
    }
}

static void length_prices(const length_coder_t *lc, uint32_t pos_state, int32_t *table)
{
    int32_t a = bit_price(lc->choice[0], 0);
    int32_t b = bit_price(lc->choice[0], 1) + bit_price(lc->choice[1], 0);
    int32_t c = bit_price(lc->choice[0], 1) + bit_price(lc->choice[1], 1);
    table[0] = table[1] = 0;
    for (uint32_t v = 0; v < 8; v++)
        table[2 + v] = a + tree_price(&lc->low[pos_state << 3], 3, v);
    for (uint32_t v = 0; v < 8; v++)
        table[10 + v] = b + tree_price(&lc->mid[pos_state << 3], 3, v);
    for (uint32_t v = 0; v < 256; v++)
        table[18 + v] = c + tree_price(lc->high, 8, v);
}

typedef struct {
    int32_t length;
    int32_t distance;
} match_t;

typedef struct {
    uint8_t kind;
    int32_t length;
    int32_t arg;
} symbol_t;

/* One node of the optimal parse. */
typedef struct {
    int64_t price;
    int32_t from;
    int32_t length;
    int32_t arg;
    int32_t reps[4];
    uint8_t kind;
    uint8_t state;
} node_t;

/* A footer price cached for one distance value, in an open-addressed table that a
 * refresh empties at once: a slot holds a price only while its epoch is the
 * encoder's. Few distances are priced between refreshes, so the table stays small
 * and in the caches (an array by distance would span the whole input). */
typedef struct {
    uint32_t value;
    uint32_t epoch;
    int32_t price;
} footer_t;

#define FOOTER_SLOTS_MIN 1024

/* One slot of the 3-byte key table: key and position side by side, one cache line. */
typedef struct {
    uint32_t key; /* the key + 1; 0: empty, so calloc's zeroes need no filling */
    int32_t position;
} head3_slot_t;

/* The match finder every setting shares. The chains hold every position entered (the
 * dictionary's searched ranges, then all of the data), each linked to the one before
 * it with the same key, so the matches at a data position depend on the position
 * alone, not on which setting asks or when: the parse of each setting asks for its own
 * positions, and a position's list, once found, is kept for the settings after. */
typedef struct {
    /* the dictionary followed by the data */
    const uint8_t *buffer;
    int64_t start, end;
    int64_t depth;
    /* chain[p]: the last position before p with p's 3 bytes, or -1 */
    int32_t *chain;
    /* chain2[p - start]: the last position before data position p with its 2 bytes */
    int32_t *chain2;
    /* while entering: the last place of each exact 3-byte key (open-addressed) and
     * of each 2-byte key */
    head3_slot_t *head3;
    size_t head3_mask;
    int head3_shift;
    size_t head3_used, head3_limit;
    int32_t *head2; /* the position + 1; 0: none */
    int64_t inserted;
    int failed; /* out of memory growing the key table: the call raises MemoryError */
    /* the lists found, by data position: kept[p - start] indexes store (-1: none) */
    int32_t *kept;
    uint16_t *kept_count;
    match_t *store;
    size_t store_used, store_capacity, store_limit;
} finder_t;

/* One setting's coder over the finder's buffer. */
typedef struct {
    finder_t *finder;
    const uint8_t *buffer;
    int64_t start, end;
    int lc, lp, pb;
    uint32_t lp_mask, pb_mask;
    int64_t nice, window;
    int keep; /* store the lists found for the settings after this one */
    /* coder state */
    uint8_t state;
    int32_t reps[4]; /* distances (not distance - 1) */
    prob_t is_match[STATES << 4];
    prob_t is_rep[STATES];
    prob_t is_rep_g0[STATES];
    prob_t is_rep_g1[STATES];
    prob_t is_rep_g2[STATES];
    prob_t is_rep0_long[STATES << 4];
    prob_t literal[0x300 << 4];
    prob_t pos_slot[4 << 6];
    prob_t pos_special[1 + FULL_DISTANCES - END_POS_MODEL];
    prob_t align[1 << ALIGN_BITS];
    length_coder_t match_len, rep_len;
    int failed; /* out of memory growing the footer table */
    int has_pending;
    int64_t pending_position;
    int pending_count;
    match_t pending[LEN_SYMBOLS];
    /* prices, recomputed every REFRESH_SYMBOLS symbols */
    int32_t match_len_prices[POS_STATES_MAX][LEN_SYMBOLS];
    int32_t rep_len_prices[POS_STATES_MAX][LEN_SYMBOLS];
    int32_t slot_prices[4][64];
    footer_t *footer;
    size_t footer_mask, footer_used;
    uint32_t epoch;
    int64_t since_refresh;
    /* the parse */
    node_t *nodes;
    symbol_t *symbols;
    int64_t node_count;
} encoder_t;

/* The slot of `key` (the key + 1, never 0) or the empty one where it goes. */
static size_t head3_find(const finder_t *e, uint32_t stored)
{
    size_t slot = (size_t)(((stored - 1) * 2654435761u) >> e->head3_shift) & e->head3_mask;
    while (e->head3[slot].key != 0 && e->head3[slot].key != stored)
        slot = (slot + 1) & e->head3_mask;
    return slot;
}

/* Double the key table. It grows with the distinct keys rather than being sized by
 * the positions: a smaller table stays in the caches the chain walk needs. */
static int head3_grow(finder_t *e)
{
    head3_slot_t *old = e->head3;
    size_t old_capacity = e->head3_mask + 1, capacity = old_capacity * 2;
    head3_slot_t *grown = calloc(capacity, sizeof(head3_slot_t));
    if (grown == NULL)
        return -1;
    e->head3 = grown;
    e->head3_mask = capacity - 1;
    e->head3_shift--;
    e->head3_limit = capacity / 8 * 5;
    for (size_t i = 0; i < old_capacity; i++)
        if (old[i].key != 0)
            grown[head3_find(e, old[i].key)] = old[i];
    free(old);
    return 0;
}

static int32_t head3_swap(finder_t *e, uint32_t key, int32_t position)
{
    if (e->head3_used >= e->head3_limit && head3_grow(e) < 0) {
        /* past the limit the table still has room; when full, stop entering keys */
        e->failed = 1;
        if (e->head3_used >= e->head3_mask)
            return -1;
    }
    size_t slot = head3_find(e, key + 1);
    if (e->head3[slot].key == 0) {
        e->head3[slot].key = key + 1;
        e->head3[slot].position = position;
        e->head3_used++;
        return -1;
    }
    int32_t previous = e->head3[slot].position;
    e->head3[slot].position = position;
    return previous;
}

static uint32_t key3(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16);
}

static uint32_t key2(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8);
}

/* A hint to fetch what a later probe reads; no effect on any result. */
#if defined(__GNUC__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif
#define PREFETCH_AHEAD 16

/* Enter every position before `position` into the hash chains. */
static void insert_until(finder_t *e, int64_t position)
{
    const uint8_t *buffer = e->buffer;
    for (int64_t p = e->inserted; p < position; p++) {
        /* the probes of a run of positions are independent: the table's cache misses
         * can overlap when its slots are asked for ahead */
        if (p + PREFETCH_AHEAD + 3 <= e->end) {
            uint32_t ahead = key3(buffer + p + PREFETCH_AHEAD);
            PREFETCH(&e->head3[(size_t)((ahead * 2654435761u) >> e->head3_shift) & e->head3_mask]);
        }
        if (p + 3 <= e->end) {
            /* every position a chain reaches is entered here, so chain needs no
             * filling */
            e->chain[p] = head3_swap(e, key3(buffer + p), (int32_t)p);
        }
        /* a 1-byte key at the very end is never looked up */
        if (p + 2 <= e->end) {
            int32_t *head2 = &e->head2[key2(buffer + p)];
            if (p >= e->start)
                e->chain2[p - e->start] = *head2 - 1;
            *head2 = (int32_t)p + 1;
        }
    }
    if (position > e->inserted)
        e->inserted = position;
}

/* Length of the common prefix of the buffer at `earlier` and at `position`. */
static int32_t common(const uint8_t *buffer, int64_t earlier, int64_t position, int32_t limit)
{
    const uint8_t *a = buffer + earlier, *b = buffer + position;
    int32_t length = 0;
    /* eight bytes at a time while they agree (both runs lie within the buffer) */
    while (length + 8 <= limit) {
        uint64_t x, y;
        memcpy(&x, a + length, 8);
        memcpy(&y, b + length, 8);
        if (x != y)
            break;
        length += 8;
    }
    while (length < limit && a[length] == b[length])
        length++;
    return length;
}

/* (length, distance) pairs at data position `position`, longer ones farther: the
 * candidates are the positions before it with its 3 bytes, nearest first (as the heads
 * stood just before it was entered), or else the last one with its 2 bytes. Every
 * position is entered by now, so this reads only what entering it left. */
static int search(const finder_t *f, int64_t position, match_t *found)
{
    const uint8_t *buffer = f->buffer;
    int64_t avail = f->end - position;
    int32_t limit = avail < MATCH_MAX ? (int32_t)avail : MATCH_MAX;
    int count = 0;
    if (limit < 2)
        return 0;
    int32_t best = 1;
    if (limit >= 3) {
        int32_t candidate = f->chain[position];
        int64_t depth = f->depth;
        while (candidate >= 0 && depth) {
            if (buffer[candidate + best] == buffer[position + best]) {
                int32_t length = common(buffer, candidate, position, limit);
                if (length > best) {
                    /* lengths only grow, so at most MATCH_MAX - 1 entries */
                    found[count].length = length;
                    found[count].distance = (int32_t)(position - candidate);
                    count++;
                    best = length;
                    if (length == limit)
                        break;
                }
            }
            candidate = f->chain[candidate];
            depth--;
        }
    }
    if (best < 2) {
        int32_t candidate = f->chain2[position - f->start];
        if (candidate >= 0) {
            found[count].length = 2;
            found[count].distance = (int32_t)(position - candidate);
            count++;
        }
    }
    return count;
}

/* Keep the list found at `position` for the settings after; past the store's limit
 * (or without memory to grow it) they search again, which finds the same. */
static void keep(finder_t *f, int64_t position, const match_t *found, int count)
{
    if (f->store_used + (size_t)count > f->store_limit)
        return;
    if (f->store_used + (size_t)count > f->store_capacity) {
        size_t grown = f->store_capacity ? f->store_capacity * 2 : 4096;
        while (grown < f->store_used + (size_t)count)
            grown *= 2;
        if (grown > f->store_limit)
            grown = f->store_limit;
        match_t *store = realloc(f->store, grown * sizeof(match_t));
        if (store == NULL) {
            f->store_limit = f->store_used;
            return;
        }
        f->store = store;
        f->store_capacity = grown;
    }
    if (count) /* the store is NULL until the first list with matches */
        memcpy(f->store + f->store_used, found, (size_t)count * sizeof(match_t));
    f->kept[position - f->start] = (int32_t)f->store_used;
    f->kept_count[position - f->start] = (uint16_t)count;
    f->store_used += (size_t)count;
}

/* The matches at `position` for this setting's parse. */
static int matches(encoder_t *e, int64_t position, match_t *found)
{
    if (e->has_pending && e->pending_position == position) {
        e->has_pending = 0;
        memcpy(found, e->pending, (size_t)e->pending_count * sizeof(match_t));
        return e->pending_count;
    }
    finder_t *f = e->finder;
    if (f->kept != NULL && f->kept[position - f->start] >= 0) {
        int count = f->kept_count[position - f->start];
        if (count)
            memcpy(found, f->store + f->kept[position - f->start], (size_t)count * sizeof(match_t));
        return count;
    }
    int count = search(f, position, found);
    if (e->keep && f->kept != NULL)
        keep(f, position, found, count);
    return count;
}

/* Recompute the cached prices from the current probabilities. */
static void refresh(encoder_t *e)
{
    for (uint32_t s = 0; s < (1u << e->pb); s++) {
        length_prices(&e->match_len, s, e->match_len_prices[s]);
        length_prices(&e->rep_len, s, e->rep_len_prices[s]);
    }
    for (uint32_t state = 0; state < 4; state++)
        for (uint32_t slot = 0; slot < 64; slot++)
            e->slot_prices[state][slot] = tree_price(&e->pos_slot[state << 6], 6, slot);
    e->epoch++;
    e->footer_used = 0; /* every slot's epoch is now past */
    e->since_refresh = 0;
}

static size_t footer_find(const encoder_t *e, uint32_t value)
{
    size_t slot = (size_t)(value * 2654435761u) & e->footer_mask;
    while (e->footer[slot].epoch == e->epoch && e->footer[slot].value != value)
        slot = (slot + 1) & e->footer_mask;
    return slot;
}

/* Double the footer table, keeping this epoch's prices; -1 without memory. */
static int footer_grow(encoder_t *e)
{
    footer_t *old = e->footer;
    size_t old_capacity = e->footer_mask + 1;
    footer_t *grown = calloc(old_capacity * 2, sizeof(footer_t));
    if (grown == NULL)
        return -1;
    e->footer = grown;
    e->footer_mask = old_capacity * 2 - 1;
    for (size_t i = 0; i < old_capacity; i++)
        if (old[i].epoch == e->epoch)
            grown[footer_find(e, old[i].value)] = old[i];
    free(old);
    return 0;
}

/* The footer's price of a distance value, priced when first asked for since the
 * last refresh, as the twin's cache does. */
static int32_t footer_price(encoder_t *e, uint32_t value, uint32_t slot)
{
    footer_t *cached = &e->footer[footer_find(e, value)];
    if (cached->epoch == e->epoch)
        return cached->price;
    int bits = (int)(slot >> 1) - 1;
    uint32_t base = (2u | (slot & 1u)) << bits;
    int32_t footer;
    if (slot < END_POS_MODEL)
        footer = reverse_price(e->pos_special, (int)base - (int)slot - 1, bits, value - base);
    else
        footer = ((bits - ALIGN_BITS) << PRICE_BITS) +
                 reverse_price(e->align, 0, ALIGN_BITS, (value - base) & 15u);
    /* past 5/8 full the table doubles; without memory the price is not kept, which
     * the call then reports as MemoryError */
    if (e->footer_used >= (e->footer_mask + 1) / 8 * 5 && footer_grow(e) < 0) {
        e->failed = 1;
        return footer;
    }
    cached = &e->footer[footer_find(e, value)];
    cached->value = value;
    cached->price = footer;
    cached->epoch = e->epoch;
    e->footer_used++;
    return footer;
}

static int32_t literal_price(const encoder_t *e, int64_t position, uint8_t state, int32_t rep0)
{
    const uint8_t *buffer = e->buffer;
    uint32_t byte = buffer[position];
    uint32_t previous = position ? buffer[position - 1] : 0;
    const prob_t *probs =
        &e->literal[0x300u * ((((uint32_t)position & e->lp_mask) << e->lc) +
                              (previous >> (8 - e->lc)))];
    int32_t price = 0;
    if (state < 7)
        return tree_price(probs, 8, byte);
    /* rep0 never reaches before the buffer; the guard keeps a broken parse in bounds */
    uint32_t match_byte = position >= rep0 ? buffer[position - rep0] : 0;
    uint32_t symbol = byte | 0x100u;
    uint32_t offset = 0x100;
    while (symbol < 0x10000u) {
        match_byte <<= 1;
        unsigned bit = (symbol >> 7) & 1u;
        price += bit_price(probs[offset + (match_byte & offset) + (symbol >> 8)], bit);
        symbol <<= 1;
        offset &= ~(match_byte ^ symbol);
    }
    return price;
}

/* Price of choosing rep `index` (longer than one byte), without its length. */
static int32_t rep_price(const encoder_t *e, int index, uint8_t state, uint32_t pos_state)
{
    int32_t price =
        bit_price(e->is_match[(state << 4) + pos_state], 1) + bit_price(e->is_rep[state], 1);
    if (index == 0)
        return price + bit_price(e->is_rep_g0[state], 0) +
               bit_price(e->is_rep0_long[(state << 4) + pos_state], 1);
    price += bit_price(e->is_rep_g0[state], 1);
    if (index == 1)
        return price + bit_price(e->is_rep_g1[state], 0);
    return price + bit_price(e->is_rep_g1[state], 1) +
           bit_price(e->is_rep_g2[state], (unsigned)(index - 2));
}

static void rep_lengths_at(const encoder_t *e, int64_t p, const int32_t *reps, int32_t avail,
                           int32_t *lengths)
{
    for (int i = 0; i < 4; i++)
        lengths[i] = (reps[i] <= p && avail >= 2) ? common(e->buffer, p - reps[i], p, avail) : 0;
}

/* The cheapest symbols from `position` on, into e->symbols; returns their count. */
static int64_t optimum(encoder_t *e, int64_t position)
{
    const uint8_t *buffer = e->buffer;
    node_t *nodes = e->nodes;
    match_t found[LEN_SYMBOLS];
    int found_count = matches(e, position, found);
    int64_t remaining = e->end - position;
    int32_t avail = remaining < MATCH_MAX ? (int32_t)remaining : MATCH_MAX;
    int32_t rep_lengths[4];
    rep_lengths_at(e, position, e->reps, avail, rep_lengths);
    int best_rep = 0;
    for (int i = 1; i < 4; i++)
        if (rep_lengths[i] > rep_lengths[best_rep])
            best_rep = i;
    if (rep_lengths[best_rep] >= e->nice) {
        e->symbols[0].kind = KIND_REP;
        e->symbols[0].length = rep_lengths[best_rep];
        e->symbols[0].arg = best_rep;
        return 1;
    }
    if (found_count && found[found_count - 1].length >= e->nice) {
        e->symbols[0].kind = KIND_MATCH;
        e->symbols[0].length = found[found_count - 1].length;
        e->symbols[0].arg = found[found_count - 1].distance;
        return 1;
    }
    /* every node's price is PRICE_INFINITY between calls; the ones touched are put
     * back at the end */
    nodes[0].price = 0;
    nodes[0].state = e->state;
    memcpy(nodes[0].reps, e->reps, sizeof e->reps);
    int64_t end_at = 1;
    int64_t cur = 0;
    for (;;) {
        int64_t p = position + cur;
        if (cur) {
            if (cur >= end_at || cur >= e->window)
                break;
            found_count = matches(e, p, found);
            if (found_count && found[found_count - 1].length >= e->nice) {
                e->has_pending = 1;
                e->pending_position = p;
                e->pending_count = found_count;
                memcpy(e->pending, found, (size_t)found_count * sizeof(match_t));
                break;
            }
            remaining = e->end - p;
            avail = remaining < MATCH_MAX ? (int32_t)remaining : MATCH_MAX;
            rep_lengths_at(e, p, nodes[cur].reps, avail, rep_lengths);
        }
        const node_t *node = &nodes[cur];
        const int32_t *rreps = node->reps;
        uint8_t state = node->state;
        int64_t base_price = node->price;
        uint32_t pos_state = (uint32_t)p & e->pb_mask;
        prob_t is_match = e->is_match[(state << 4) + pos_state];
        /* a literal, or the byte at rep0 again (short rep) */
        node_t *next = &nodes[cur + 1];
        int64_t price = base_price + bit_price(is_match, 0) + literal_price(e, p, state, rreps[0]);
        if (price < next->price) {
            next->price = price;
            next->from = (int32_t)cur;
            next->kind = KIND_LITERAL;
            next->state = LIT_NEXT[state];
            memcpy(next->reps, rreps, sizeof next->reps);
        }
        if (rreps[0] <= p && buffer[p] == buffer[p - rreps[0]]) {
            price = base_price + bit_price(is_match, 1) + bit_price(e->is_rep[state], 1) +
                    bit_price(e->is_rep_g0[state], 0) +
                    bit_price(e->is_rep0_long[(state << 4) + pos_state], 0);
            if (price < next->price) {
                next->price = price;
                next->from = (int32_t)cur;
                next->kind = KIND_SHORTREP;
                next->state = SHORTREP_NEXT[state];
                memcpy(next->reps, rreps, sizeof next->reps);
            }
        }
        if (cur + 1 > end_at)
            end_at = cur + 1;
        /* repeated distances */
        const int32_t *rep_len_prices = e->rep_len_prices[pos_state];
        for (int index = 0; index < 4; index++) {
            int32_t longest = rep_lengths[index];
            if (longest < 2)
                continue;
            int64_t start_price = base_price + rep_price(e, index, state, pos_state);
            int32_t moved[4];
            moved[0] = rreps[index];
            for (int i = 0, j = 1; i < 4; i++)
                if (i != index)
                    moved[j++] = rreps[i];
            uint8_t next_state = REP_NEXT[state];
            for (int32_t length = 2; length <= longest; length++) {
                price = start_price + rep_len_prices[length];
                node_t *target = &nodes[cur + length];
                if (price < target->price) {
                    target->price = price;
                    target->from = (int32_t)cur;
                    target->kind = KIND_REP;
                    target->length = length;
                    target->arg = index;
                    target->state = next_state;
                    memcpy(target->reps, moved, sizeof moved);
                }
            }
            if (cur + longest > end_at)
                end_at = cur + longest;
        }
        /* new distances */
        if (found_count) {
            int64_t start_price =
                base_price + bit_price(is_match, 1) + bit_price(e->is_rep[state], 0);
            const int32_t *match_len_prices = e->match_len_prices[pos_state];
            uint8_t next_state = MATCH_NEXT[state];
            int32_t shortest = 2;
            for (int f = 0; f < found_count; f++) {
                int32_t longest = found[f].length, distance = found[f].distance;
                if (distance != rreps[0] && distance != rreps[1] && distance != rreps[2] &&
                    distance != rreps[3]) {
                    int32_t moved[4] = {distance, rreps[0], rreps[1], rreps[2]};
                    uint32_t value = (uint32_t)distance - 1;
                    uint32_t slot = slot_of(value);
                    int32_t footer = slot >= 4 ? footer_price(e, value, slot) : 0;
                    for (int32_t length = shortest; length <= longest; length++) {
                        int32_t length_state = length - 2 < 3 ? length - 2 : 3;
                        price = start_price + match_len_prices[length] +
                                e->slot_prices[length_state][slot] + footer;
                        node_t *target = &nodes[cur + length];
                        if (price < target->price) {
                            target->price = price;
                            target->from = (int32_t)cur;
                            target->kind = KIND_MATCH;
                            target->length = length;
                            target->arg = distance;
                            target->state = next_state;
                            memcpy(target->reps, moved, sizeof moved);
                        }
                    }
                }
                shortest = longest + 1;
                if (cur + longest > end_at)
                    end_at = cur + longest;
            }
        }
        cur++;
    }
    /* walk back from `cur` to the start */
    int64_t count = 0;
    for (int64_t at = cur; at; at = nodes[at].from) {
        symbol_t *symbol = &e->symbols[count++];
        symbol->kind = nodes[at].kind;
        if (symbol->kind == KIND_LITERAL || symbol->kind == KIND_SHORTREP) {
            symbol->length = 1;
            symbol->arg = 0;
        } else {
            symbol->length = nodes[at].length;
            symbol->arg = nodes[at].arg;
        }
    }
    for (int64_t i = 0, j = count - 1; i < j; i++, j--) {
        symbol_t swap = e->symbols[i];
        e->symbols[i] = e->symbols[j];
        e->symbols[j] = swap;
    }
    for (int64_t i = 0; i <= end_at && i < e->node_count; i++)
        nodes[i].price = PRICE_INFINITY;
    return count;
}

static void emit(encoder_t *e, range_encoder_t *rc, int64_t position, const symbol_t *symbol)
{
    uint8_t state = e->state;
    uint32_t pos_state = (uint32_t)position & e->pb_mask;
    const uint8_t *buffer = e->buffer;
    if (symbol->kind == KIND_LITERAL) {
        rc_bit(rc, &e->is_match[(state << 4) + pos_state], 0);
        uint32_t previous = position ? buffer[position - 1] : 0;
        prob_t *probs = &e->literal[0x300u * ((((uint32_t)position & e->lp_mask) << e->lc) +
                                              (previous >> (8 - e->lc)))];
        uint32_t byte = buffer[position];
        if (state < 7) {
            rc_tree(rc, probs, 8, byte);
        } else {
            uint32_t match_byte = position >= e->reps[0] ? buffer[position - e->reps[0]] : 0;
            uint32_t sym = byte | 0x100u;
            uint32_t offset = 0x100;
            while (sym < 0x10000u) {
                match_byte <<= 1;
                rc_bit(rc, &probs[offset + (match_byte & offset) + (sym >> 8)], (sym >> 7) & 1u);
                sym <<= 1;
                offset &= ~(match_byte ^ sym);
            }
        }
        e->state = LIT_NEXT[state];
        return;
    }
    rc_bit(rc, &e->is_match[(state << 4) + pos_state], 1);
    uint32_t length = (uint32_t)symbol->length;
    if (symbol->kind == KIND_MATCH) {
        rc_bit(rc, &e->is_rep[state], 0);
        length_encode(rc, &e->match_len, length, pos_state);
        uint32_t value = (uint32_t)symbol->arg - 1;
        uint32_t slot = slot_of(value);
        rc_tree(rc, &e->pos_slot[(length - 2 < 3 ? length - 2 : 3) << 6], 6, slot);
        if (slot >= 4) {
            int bits = (int)(slot >> 1) - 1;
            uint32_t base = (2u | (slot & 1u)) << bits;
            uint32_t reduced = value - base;
            if (slot < END_POS_MODEL) {
                rc_reverse(rc, e->pos_special, (int)base - (int)slot - 1, bits, reduced);
            } else {
                rc_direct(rc, reduced >> ALIGN_BITS, bits - ALIGN_BITS);
                rc_reverse(rc, e->align, 0, ALIGN_BITS, reduced & 15u);
            }
        }
        e->reps[3] = e->reps[2];
        e->reps[2] = e->reps[1];
        e->reps[1] = e->reps[0];
        e->reps[0] = symbol->arg;
        e->state = MATCH_NEXT[state];
        return;
    }
    rc_bit(rc, &e->is_rep[state], 1);
    if (symbol->kind == KIND_SHORTREP) {
        rc_bit(rc, &e->is_rep_g0[state], 0);
        rc_bit(rc, &e->is_rep0_long[(state << 4) + pos_state], 0);
        e->state = SHORTREP_NEXT[state];
        return;
    }
    int32_t arg = symbol->arg;
    if (arg == 0) {
        rc_bit(rc, &e->is_rep_g0[state], 0);
        rc_bit(rc, &e->is_rep0_long[(state << 4) + pos_state], 1);
    } else {
        rc_bit(rc, &e->is_rep_g0[state], 1);
        if (arg == 1) {
            rc_bit(rc, &e->is_rep_g1[state], 0);
        } else {
            rc_bit(rc, &e->is_rep_g1[state], 1);
            rc_bit(rc, &e->is_rep_g2[state], (unsigned)(arg - 2));
        }
        int32_t distance = e->reps[arg];
        for (int i = arg; i > 0; i--)
            e->reps[i] = e->reps[i - 1];
        e->reps[0] = distance;
    }
    length_encode(rc, &e->rep_len, length, pos_state);
    e->state = REP_NEXT[state];
}

static void fill_probs(prob_t *probs, size_t count)
{
    for (size_t i = 0; i < count; i++)
        probs[i] = 1024;
}

/* The encoding's outcome, decided without the GIL and reported with it. */
enum { ENCODED = 0, NO_MEMORY = 1, CHUNK_OVERFLOW = 2 };

typedef struct {
    int64_t chunk_unpacked, chunk_packed, packed_reserve;
} limits_t;

static int run(encoder_t *e, const limits_t *limits, bytes_t *chunks)
{
    range_encoder_t rc;
    memset(&rc, 0, sizeof rc);
    int64_t position = e->start;
    int first = 1;
    int status = ENCODED;
    while (position < e->end) {
        rc_reset(&rc);
        int64_t chunk_start = position;
        while (position < e->end) {
            if (position - chunk_start + e->window + MATCH_MAX > limits->chunk_unpacked ||
                rc_pending(&rc) + (uint64_t)limits->packed_reserve > (uint64_t)limits->chunk_packed)
                break;
            int64_t count = optimum(e, position);
            for (int64_t i = 0; i < count; i++) {
                emit(e, &rc, position, &e->symbols[i]);
                position += e->symbols[i].length;
                e->since_refresh++;
            }
            if (e->since_refresh >= REFRESH_SYMBOLS)
                refresh(e);
            if (e->failed)
                break;
        }
        rc_finish(&rc);
        if (rc.out.failed || e->failed) {
            status = NO_MEMORY;
            break;
        }
        if ((int64_t)rc.out.size > CHUNK_PACKED_MAX) {
            status = CHUNK_OVERFLOW;
            break;
        }
        uint32_t unpacked = (uint32_t)(position - chunk_start) - 1;
        uint32_t packed = (uint32_t)rc.out.size - 1;
        /* the first chunk sets the properties, and resets the dictionary unless the
         * decoder has just been given one; later chunks continue the state */
        uint8_t control = first ? (e->start == 0 ? 0xE0 : 0xC0) : 0x80;
        bytes_reserve(chunks, 6 + rc.out.size);
        if (chunks->failed) {
            status = NO_MEMORY;
            break;
        }
        uint8_t *out = chunks->data + chunks->size;
        *out++ = (uint8_t)(control | (unpacked >> 16));
        *out++ = (uint8_t)(unpacked >> 8);
        *out++ = (uint8_t)unpacked;
        *out++ = (uint8_t)(packed >> 8);
        *out++ = (uint8_t)packed;
        if (first)
            *out++ = (uint8_t)((e->pb * 5 + e->lp) * 9 + e->lc);
        memcpy(out, rc.out.data, rc.out.size);
        out += rc.out.size;
        chunks->size = (size_t)(out - chunks->data);
        first = 0;
    }
    free(rc.out.data);
    return status;
}

typedef struct {
    int64_t low, high;
} range_t;

static void finder_free(finder_t *f)
{
    if (f == NULL)
        return;
    free(f->chain);
    free(f->chain2);
    free(f->head3);
    free(f->head2);
    free(f->kept);
    free(f->kept_count);
    free(f->store);
    free(f);
}

/* How many positions enter the chains: the data's, and those of the dictionary that
 * finder_enter enters. */
static size_t entered_count(const range_t *ranges, Py_ssize_t count, int all, int64_t start,
                            int64_t end)
{
    int64_t entered = end - start, inserted = 0;
    if (all)
        return (size_t)end;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t low = ranges[i].low < 0 ? 0 : ranges[i].low;
        int64_t high = ranges[i].high < start ? ranges[i].high : start;
        if (low > start)
            low = start;
        if (low > inserted)
            inserted = low;
        if (high > inserted) {
            entered += high - inserted;
            inserted = high;
        }
    }
    return (size_t)entered;
}

/* A finder over `buffer` (end bytes, the data from `start`) with every position entered:
 * the dictionary's searched ranges (all of it when ranges is NULL), then the data. NULL
 * without memory. Every allocation is bounded by `end`; with `keeping`, the store of
 * lists found is bounded by the data's length too. */
static finder_t *finder_new(const uint8_t *buffer, int64_t start, int64_t end, int64_t depth,
                            const range_t *ranges, Py_ssize_t range_count, int all, int keeping)
{
    finder_t *f = calloc(1, sizeof(finder_t));
    if (f == NULL)
        return NULL;
    f->buffer = buffer;
    f->start = start;
    f->end = end;
    f->depth = depth;
    size_t size = end > 0 ? (size_t)end : 1;
    size_t data = end - start > 0 ? (size_t)(end - start) : 1;
    /* the key table starts at half the positions entered (code has about one distinct
     * key in four positions) and grows with the distinct keys (at most one per position
     * entered, and 2^24), kept at most 5/8 full */
    size_t entered = entered_count(ranges, range_count, all, start, end);
    size_t keys = entered / 4 < ((size_t)1 << 22) ? entered / 4 : ((size_t)1 << 22);
    size_t capacity = 16;
    int shift = 28;
    while (capacity < keys * 2) {
        capacity <<= 1;
        shift--;
    }
    f->head3_mask = capacity - 1;
    f->head3_shift = shift;
    f->head3_limit = capacity / 8 * 5;
    f->chain = malloc(size * sizeof(int32_t));
    f->chain2 = malloc(data * sizeof(int32_t));
    f->head3 = calloc(capacity, sizeof(head3_slot_t));
    f->head2 = calloc((size_t)1 << 16, sizeof(int32_t));
    if (keeping) {
        /* a list holds one entry per candidate of the chain walk at most (and fewer
         * than MATCH_MAX); code has a few: the store keeps up to 8 a position, and at
         * most 2^22 in all (32 MiB) */
        f->kept = malloc(data * sizeof(int32_t));
        f->kept_count = malloc(data * sizeof(uint16_t));
        f->store_limit = data * 8 < ((size_t)1 << 22) ? data * 8 : ((size_t)1 << 22);
    }
    if (f->chain == NULL || f->chain2 == NULL || f->head3 == NULL || f->head2 == NULL ||
        (keeping && (f->kept == NULL || f->kept_count == NULL))) {
        finder_free(f);
        return NULL;
    }
    if (keeping)
        memset(f->kept, 0xFF, data * sizeof(int32_t)); /* -1: nothing kept */
    if (all) {
        insert_until(f, start);
    } else {
        for (Py_ssize_t i = 0; i < range_count; i++) {
            int64_t low = ranges[i].low < 0 ? 0 : ranges[i].low;
            if (low > start)
                low = start;
            if (low > f->inserted)
                f->inserted = low;
            insert_until(f, ranges[i].high < start ? ranges[i].high : start);
        }
        f->inserted = start;
    }
    insert_until(f, end);
    /* the heads are needed no more: the chains say all the search reads */
    free(f->head3);
    free(f->head2);
    f->head3 = NULL;
    f->head2 = NULL;
    return f;
}

static void encoder_free(encoder_t *e)
{
    if (e == NULL)
        return;
    free(e->footer);
    free(e->nodes);
    free(e->symbols);
    free(e);
}

/* A coder of the finder's data under one setting, or NULL without memory. The parse's
 * nodes are bounded by the window plus one match, and by the data. */
static encoder_t *encoder_new(finder_t *finder, int lc, int lp, int pb, int64_t nice,
                              int64_t window)
{
    encoder_t *e = calloc(1, sizeof(encoder_t));
    if (e == NULL)
        return NULL;
    e->finder = finder;
    e->buffer = finder->buffer;
    e->start = finder->start;
    e->end = finder->end;
    e->lc = lc;
    e->lp = lp;
    e->pb = pb;
    e->lp_mask = (1u << lp) - 1;
    e->pb_mask = (1u << pb) - 1;
    e->nice = nice;
    e->window = window;
    e->reps[0] = e->reps[1] = e->reps[2] = e->reps[3] = 1;
    fill_probs(e->is_match, STATES << 4);
    fill_probs(e->is_rep, STATES);
    fill_probs(e->is_rep_g0, STATES);
    fill_probs(e->is_rep_g1, STATES);
    fill_probs(e->is_rep_g2, STATES);
    fill_probs(e->is_rep0_long, STATES << 4);
    fill_probs(e->literal, (size_t)0x300 << (lc + lp));
    fill_probs(e->pos_slot, 4 << 6);
    fill_probs(e->pos_special, 1 + FULL_DISTANCES - END_POS_MODEL);
    fill_probs(e->align, 1 << ALIGN_BITS);
    length_coder_t *coders[2] = {&e->match_len, &e->rep_len};
    for (int i = 0; i < 2; i++) {
        fill_probs(coders[i]->choice, 2);
        fill_probs(coders[i]->low, POS_STATES_MAX << 3);
        fill_probs(coders[i]->mid, POS_STATES_MAX << 3);
        fill_probs(coders[i]->high, 256);
    }
    e->footer = calloc(FOOTER_SLOTS_MIN, sizeof(footer_t));
    e->footer_mask = FOOTER_SLOTS_MIN - 1;
    int64_t data = e->end - e->start;
    int64_t reach = window + MATCH_MAX < data ? window + MATCH_MAX : data;
    e->node_count = reach + 1;
    e->nodes = malloc((size_t)e->node_count * sizeof(node_t));
    e->symbols = malloc((size_t)e->node_count * sizeof(symbol_t));
    if (e->footer == NULL || e->nodes == NULL || e->symbols == NULL) {
        encoder_free(e);
        return NULL;
    }
    for (int64_t i = 0; i < e->node_count; i++)
        e->nodes[i].price = PRICE_INFINITY;
    refresh(e);
    return e;
}

typedef struct {
    int lc, lp, pb;
} setting_t;

/* Code the data under each setting in turn into chunks[i], over one finder: the
 * settings after the first reuse the lists it found. Runs without the GIL. */
static int code_settings(const uint8_t *buffer, int64_t start, int64_t end,
                         const range_t *ranges, Py_ssize_t range_count, int all,
                         const setting_t *settings, Py_ssize_t setting_count, int64_t nice,
                         int64_t depth, int64_t window, const limits_t *limits,
                         bytes_t *chunks)
{
    finder_t *f = finder_new(buffer, start, end, depth, ranges, range_count, all,
                             setting_count > 1);
    if (f == NULL || f->failed) {
        finder_free(f);
        return NO_MEMORY;
    }
    int status = ENCODED;
    for (Py_ssize_t i = 0; i < setting_count && status == ENCODED; i++) {
        encoder_t *e = encoder_new(f, settings[i].lc, settings[i].lp, settings[i].pb, nice,
                                   window);
        if (e == NULL) {
            status = NO_MEMORY;
            break;
        }
        e->keep = i + 1 < setting_count;
        status = run(e, limits, &chunks[i]);
        encoder_free(e);
    }
    finder_free(f);
    return status;
}

/* The searched ranges, sorted as Python sorts them, saturated to int64 (which keeps
 * their order and every clamp to [0, start]). */
static range_t *read_ranges(PyObject *searched, Py_ssize_t *count)
{
    PyObject *list = PySequence_List(searched);
    if (list == NULL)
        return NULL;
    range_t *ranges = NULL;
    if (PyList_Sort(list) < 0)
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(list);
    ranges = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(range_t));
    if (ranges == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Tuple(PyList_GET_ITEM(list, i));
        if (item == NULL)
            goto fail;
        if (PyTuple_GET_SIZE(item) != 2) {
            PyErr_Format(PyExc_ValueError, "a searched range is (start, end), not %zd values",
                         PyTuple_GET_SIZE(item));
            Py_DECREF(item);
            goto fail;
        }
        long long low, high;
        int ok = hpatch_int64_arg(PyTuple_GET_ITEM(item, 0), &low) &&
                 hpatch_int64_arg(PyTuple_GET_ITEM(item, 1), &high);
        Py_DECREF(item);
        if (!ok)
            goto fail;
        ranges[i].low = low;
        ranges[i].high = high;
    }
    *count = n;
    goto done;
fail:
    PyMem_Free(ranges);
    ranges = NULL;
done:
    Py_DECREF(list);
    return ranges;
}

/* The data coded after the dictionary under each setting: the checks shared by both
 * calls (the twin's, in its order and with its messages), then the coding without the
 * GIL. A list of the streams, or one stream when `single`. */
static PyObject *compress_settings(Py_buffer *data, Py_buffer *dictionary,
                                   const setting_t *settings, Py_ssize_t setting_count,
                                   PyObject *searched, long long nice, long long depth,
                                   long long window, const limits_t *limits, int single)
{
    PyObject *result = NULL;
    uint8_t *buffer = NULL;
    range_t *ranges = NULL;
    Py_ssize_t range_count = 0;
    bytes_t *chunks = NULL;
    int64_t start = 0, end = 0;
    int status = NO_MEMORY;
    for (Py_ssize_t i = 0; i < setting_count; i++) {
        int lc = settings[i].lc, lp = settings[i].lp, pb = settings[i].pb;
        if (!(0 <= lc && lc <= 4 && 0 <= lp && lp <= 4 && lc + lp <= 4 && 0 <= pb && pb <= 4)) {
            PyErr_SetString(PyExc_ValueError, "LZMA2 needs lc + lp <= 4 and pb <= 4");
            goto done;
        }
    }
    if (nice < MATCH_MIN || depth < 0 || window < 1) {
        PyErr_SetString(PyExc_ValueError, "nice must be at least 2, depth at least 0 and window at least 1");
        goto done;
    }
    /* written so that no sum overflows: window >= 1 and packed_reserve >= 0 here */
    if (limits->chunk_unpacked > CHUNK_UNPACKED_MAX || limits->chunk_unpacked <= MATCH_MAX ||
        window > limits->chunk_unpacked - MATCH_MAX || limits->chunk_packed > CHUNK_PACKED_MAX ||
        limits->packed_reserve < 0 || limits->chunk_packed < 5 ||
        limits->packed_reserve > limits->chunk_packed - 5) {
        PyErr_SetString(PyExc_ValueError, "LZMA2 chunk limits leave no room for a window");
        goto done;
    }
    if ((int64_t)data->len + (int64_t)dictionary->len > BUFFER_MAX) {
        PyErr_SetString(PyExc_ValueError, "too much to compress at once");
        goto done;
    }
    if (searched != Py_None) {
        ranges = read_ranges(searched, &range_count);
        if (ranges == NULL)
            goto done;
    }
    start = dictionary->len;
    end = (int64_t)dictionary->len + data->len;
    buffer = PyMem_RawMalloc(end ? (size_t)end : 1);
    chunks = PyMem_Calloc((size_t)setting_count, sizeof(bytes_t));
    if (buffer == NULL || chunks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(buffer, dictionary->buf, (size_t)dictionary->len);
    memcpy(buffer + start, data->buf, (size_t)data->len);
    Py_BEGIN_ALLOW_THREADS
    status = code_settings(buffer, start, end, ranges, range_count, searched == Py_None,
                           settings, setting_count, nice, depth, window, limits, chunks);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < setting_count; i++)
        if (chunks[i].failed)
            status = NO_MEMORY;
    if (status == NO_MEMORY) {
        PyErr_NoMemory();
        goto done;
    }
    if (status == CHUNK_OVERFLOW) {
        PyErr_SetString(PyExc_ValueError, "an LZMA2 chunk overflowed its 64 KiB");
        goto done;
    }
    if (single) {
        result = PyBytes_FromStringAndSize((const char *)chunks[0].data, (Py_ssize_t)chunks[0].size);
        goto done;
    }
    result = PyList_New(setting_count);
    for (Py_ssize_t i = 0; result != NULL && i < setting_count; i++) {
        PyObject *stream =
            PyBytes_FromStringAndSize((const char *)chunks[i].data, (Py_ssize_t)chunks[i].size);
        if (stream == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, stream);
    }
done:
    if (chunks != NULL)
        for (Py_ssize_t i = 0; i < setting_count; i++)
            free(chunks[i].data);
    PyMem_Free(chunks);
    PyMem_RawFree(buffer);
    PyMem_Free(ranges);
    return result;
}

/* A setting's three values saturated to int (which keeps every range check's answer). */
static int setting_value(long long value)
{
    return value < -1 ? -1 : value > 5 ? 5 : (int)value;
}

PyDoc_STRVAR(lzma2_compress_doc,
"lzma2_compress(data, dictionary, lc, lp, pb, searched, nice, depth, window,\n"
"               chunk_unpacked, chunk_packed, packed_reserve, /)\n--\n\n"
"LZMA2 chunks (no end marker) coding data after dictionary, searching for matches in\n"
"the (start, end) ranges of searched (None: all of the dictionary). The chunks code\n"
"at most chunk_unpacked bytes and are closed packed_reserve bytes before\n"
"chunk_packed. The same bytes as the pure-Python twin.");

static PyObject *lzma2_compress(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, dictionary;
    long long lc, lp, pb, nice, depth, window, chunk_unpacked, chunk_packed, packed_reserve;
    PyObject *searched;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&OO&O&O&O&O&O&:lzma2_compress", hpatch_buffer_arg,
                          &data, hpatch_buffer_arg, &dictionary, hpatch_int64_arg, &lc,
                          hpatch_int64_arg, &lp, hpatch_int64_arg, &pb, &searched,
                          hpatch_int64_arg, &nice, hpatch_int64_arg, &depth, hpatch_int64_arg,
                          &window, hpatch_int64_arg, &chunk_unpacked, hpatch_int64_arg,
                          &chunk_packed, hpatch_int64_arg, &packed_reserve))
        return NULL;
    limits_t limits = {chunk_unpacked, chunk_packed, packed_reserve};
    setting_t setting = {setting_value(lc), setting_value(lp), setting_value(pb)};
    PyObject *result = compress_settings(&data, &dictionary, &setting, 1, searched, nice, depth,
                                         window, &limits, 1);
    PyBuffer_Release(&data);
    PyBuffer_Release(&dictionary);
    return result;
}

/* The (lc, lp, pb) settings of a sequence, as the twin reads them: each item a
 * sequence of three ints. NULL with an exception set. */
static setting_t *read_settings(PyObject *sequence, Py_ssize_t *count)
{
    PyObject *list = PySequence_List(sequence);
    if (list == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    setting_t *settings = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(setting_t));
    if (settings == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Tuple(PyList_GET_ITEM(list, i));
        if (item == NULL)
            goto fail;
        if (PyTuple_GET_SIZE(item) != 3) {
            PyErr_Format(PyExc_ValueError, "a setting is (lc, lp, pb), not %zd values",
                         PyTuple_GET_SIZE(item));
            Py_DECREF(item);
            goto fail;
        }
        long long values[3];
        int ok = 1;
        for (int j = 0; j < 3 && ok; j++)
            ok = hpatch_int64_arg(PyTuple_GET_ITEM(item, j), &values[j]);
        Py_DECREF(item);
        if (!ok)
            goto fail;
        settings[i].lc = setting_value(values[0]);
        settings[i].lp = setting_value(values[1]);
        settings[i].pb = setting_value(values[2]);
    }
    *count = n;
    Py_DECREF(list);
    return settings;
fail:
    PyMem_Free(settings);
    Py_DECREF(list);
    return NULL;
}

PyDoc_STRVAR(lzma2_compress_settings_doc,
"lzma2_compress_settings(data, dictionary, settings, searched, nice, depth, window,\n"
"                        chunk_unpacked, chunk_packed, packed_reserve, /)\n--\n\n"
"A list of the LZMA2 chunks lzma2_compress gives for each (lc, lp, pb) of settings,\n"
"the other arguments the same, in their order: the same bytes as one call a\n"
"setting, with the matches found once for all. The same bytes as the pure-Python\n"
"twin.");

static PyObject *lzma2_compress_settings(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer data, dictionary;
    long long nice, depth, window, chunk_unpacked, chunk_packed, packed_reserve;
    PyObject *sequence, *searched;
    if (!PyArg_ParseTuple(args, "O&O&OOO&O&O&O&O&O&:lzma2_compress_settings", hpatch_buffer_arg,
                          &data, hpatch_buffer_arg, &dictionary, &sequence, &searched,
                          hpatch_int64_arg, &nice, hpatch_int64_arg, &depth, hpatch_int64_arg,
                          &window, hpatch_int64_arg, &chunk_unpacked, hpatch_int64_arg,
                          &chunk_packed, hpatch_int64_arg, &packed_reserve))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = 0;
    setting_t *settings = read_settings(sequence, &count);
    if (settings != NULL) {
        if (count == 0) {
            PyErr_SetString(PyExc_ValueError, "LZMA2 needs at least one (lc, lp, pb) setting");
        } else {
            limits_t limits = {chunk_unpacked, chunk_packed, packed_reserve};
            result = compress_settings(&data, &dictionary, settings, count, searched, nice,
                                       depth, window, &limits, 0);
        }
        PyMem_Free(settings);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&dictionary);
    return result;
}

PyMethodDef hpatch_lzma2_methods[] = {
    {"lzma2_compress", lzma2_compress, METH_VARARGS, lzma2_compress_doc},
    {"lzma2_compress_settings", lzma2_compress_settings, METH_VARARGS,
     lzma2_compress_settings_doc},
    {NULL, NULL, 0, NULL},
};
