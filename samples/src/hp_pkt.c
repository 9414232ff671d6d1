/* Packets: a 12-byte header protecting a TLV payload, plus packed arrays.
 *
 *   header := 'H' 'P' version:u8 flags:u8 length:u16le reserved:u16 crc32:u32le
 *   array  := count:u32le elem_size:u32le data[count * elem_size]
 */
#include "hp.h"

#define PKT_HDR     12
#define PKT_VERSION 1

static HP_NOINLINE void wr16(u8 *p, u32 v)
{
    p[0] = (u8)v;
    p[1] = (u8)(v >> 8);
}

static HP_NOINLINE void wr32(u8 *p, u32 v)
{
    p[0] = (u8)v;
    p[1] = (u8)(v >> 8);
    p[2] = (u8)(v >> 16);
    p[3] = (u8)(v >> 24);
}

#if HP_VERSION >= 2
/* v2: overflow-checked 32-bit multiplication. */
static HP_NOINLINE int mul_overflows_u32(u32 a, u32 b, u32 *out)
{
    u64 wide = (u64)a * (u64)b;
    *out = (u32)wide;
    return (wide >> 32) != 0;
}
#endif

/* Unpacks an array into out. Returns the element count. */
HP_API int hp_array_unpack(const void *buf, size_t len, void *out, size_t out_cap)
{
    const u8 *p = buf;
    u8 *o = out;
    u32 count, esize, total, i;

    if (len < 8)
        return hp_fail(HP_E_TRUNC, "array: short header");
    count = hp_rd32(p);
    esize = hp_rd32(p + 4);
    if (esize == 0)
        return hp_fail(HP_E_ARG, "array: zero element size");
#if HP_VERSION >= 2
    if (mul_overflows_u32(count, esize, &total))
        return hp_fail(HP_E_OVERFLOW, "array: element count * size overflows");
#else
    /* BUG B (fixed in v2): the 32-bit product can wrap around. */
    total = count * esize;
#endif
    if (total > len - 8 || total > out_cap)
        return hp_fail(HP_E_NOSPACE, "array: does not fit");

    for (i = 0; i < count; i++)
        memcpy(o + (size_t)i * esize, p + 8 + (size_t)i * esize, esize);
    g_hp_stats.bytes_out += total;
    return (int)count;
}

HP_API int hp_pkt_build(void *out, size_t cap, u32 flags, const void *payload, size_t n)
{
    u8 *o = out;
    if (n > 0xffffu)
        return HP_E_RANGE;
    if (cap < PKT_HDR || n > cap - PKT_HDR)
        return HP_E_NOSPACE;
    o[0] = 'H';
    o[1] = 'P';
    o[2] = PKT_VERSION;
    o[3] = (u8)flags;
    wr16(o + 4, (u32)n);
    wr16(o + 6, 0);
    wr32(o + 8, hp_crc32(payload, n));
    memcpy(o + PKT_HDR, payload, n);
    return (int)(n + PKT_HDR);
}

static HP_NOINLINE int pkt_header_ok(const u8 *p)
{
    return p[0] == 'H' && p[1] == 'P' && p[2] == PKT_VERSION && hp_rd16(p + 6) == 0;
}

/* Validates a packet. Returns the payload length. */
HP_API int hp_pkt_check(const void *buf, size_t len)
{
    const u8 *p = buf;
    u32 n;
    if (p == NULL || len < PKT_HDR)
        return hp_fail(HP_E_TRUNC, "pkt: short packet");
    if (!pkt_header_ok(p))
        return hp_fail(HP_E_MAGIC, "pkt: bad header");
    n = hp_rd16(p + 4);
    if (n > len - PKT_HDR)
        return hp_fail(HP_E_TRUNC, "pkt: payload truncated");
    if (hp_crc32(p + PKT_HDR, n) != hp_rd32(p + 8))
        return hp_fail(HP_E_CRC, "pkt: crc mismatch");
    return (int)n;
}

/* Validates a packet and parses its TLV payload. Returns the leaf count. */
HP_API int hp_pkt_process(const void *buf, size_t len, hp_tlv_summary *out)
{
    const u8 *p = buf;
    int n = hp_pkt_check(buf, len);
    if (n < 0)
        return n;
    g_hp_stats.calls++;
    g_hp_stats.last_time = host_now();
    if (p[3] & 1) {
        /* flag 1: parse a private copy of the payload */
        u8 *copy = host_alloc((size_t)n + 1);
        int rc;
        if (copy == NULL)
            return hp_fail(HP_E_NOMEM, "pkt: out of memory");
        memcpy(copy, p + PKT_HDR, (size_t)n);
        rc = hp_tlv_parse(copy, (size_t)n, out);
        host_free(copy);
        return rc;
    }
    return hp_tlv_parse(p + PKT_HDR, (size_t)n, out);
}
