/* Byte ring buffer with a power-of-two capacity and free-running indices. */
#include "hp.h"

#define DEFAULT_RING_CAP 256u

static hp_ring g_default_ring;                  /* .bss */
static u8 g_default_storage[DEFAULT_RING_CAP];  /* .bss */

static HP_NOINLINE int is_pow2(u32 v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

static HP_NOINLINE u32 ring_used(const hp_ring *r)
{
    return r->head - r->tail;
}

HP_API int hp_ring_init(hp_ring *r, void *storage, u32 cap)
{
    if (r == NULL || storage == NULL)
        return HP_E_ARG;
    if (!is_pow2(cap))
        return hp_fail(HP_E_ARG, "ring: capacity must be a power of two");
    r->buf = storage;
    r->cap = cap;
#ifdef HP_RING_FIELD
    r->flags = 0;
#endif
#line 27
    r->head = 0;
    r->tail = 0;
    return HP_OK;
}

HP_API int hp_ring_push(hp_ring *r, u32 byte)
{
    if (ring_used(r) >= r->cap) {
#if HP_VERSION >= 4
        g_hp_stats.dropped++;
#endif
        return HP_E_NOSPACE;
    }
    r->buf[r->head & (r->cap - 1)] = (u8)byte;
    r->head++;
    return (int)ring_used(r);
}

HP_API int hp_ring_pop(hp_ring *r)
{
    u8 b;
    if (ring_used(r) == 0)
        return HP_E_STATE;
    b = r->buf[r->tail & (r->cap - 1)];
    r->tail++;
    return b;
}

/* Writes up to n bytes, in at most two contiguous chunks. */
HP_API int hp_ring_write(hp_ring *r, const void *src, u32 n)
{
    const u8 *s = src;
    u32 room = r->cap - ring_used(r);
    u32 pos, first;
    if (n > room) {
#if HP_VERSION >= 4
        g_hp_stats.dropped += n - room;
#endif
        n = room;
    }
    pos = r->head & (r->cap - 1);
    first = r->cap - pos;
    if (first > n)
        first = n;
    memcpy(r->buf + pos, s, first);
    memcpy(r->buf, s + first, n - first);
    r->head += n;
    g_hp_stats.bytes_in += n;
    return (int)n;
}

HP_API int hp_ring_read(hp_ring *r, void *dst, u32 n)
{
    u8 *d = dst;
    u32 used = ring_used(r);
    u32 pos, first;
    if (n > used)
        n = used;
    pos = r->tail & (r->cap - 1);
    first = r->cap - pos;
    if (first > n)
        first = n;
    memcpy(d, r->buf + pos, first);
    memcpy(d + first, r->buf, n - first);
    r->tail += n;
    g_hp_stats.bytes_out += n;
    return (int)n;
}

HP_API hp_ring *hp_ring_default(void)
{
    if (g_default_ring.buf == NULL)
        hp_ring_reset_default();
    return &g_default_ring;
}

void hp_ring_reset_default(void)
{
    hp_ring_init(&g_default_ring, g_default_storage, DEFAULT_RING_CAP);
}
