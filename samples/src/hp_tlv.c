/* TLV records with nested containers.
 *
 *   record    := type:u8 len:u16le value[len]
 *   container := record whose type has bit 0x80 set; its value is a
 *                sequence of records (recursively)
 */
#include "hp.h"

u16 hp_rd16(const u8 *p)
{
    return (u16)(p[0] | (p[1] << 8));
}

u32 hp_rd32(const u8 *p)
{
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

static HP_NOINLINE int tlv_header(const u8 *p, size_t avail, hp_tlv *rec)
{
    if (avail < HP_TLV_HDR)
        return HP_E_TRUNC;
    rec->type = p[0];
    rec->len = hp_rd16(p + 1);
    rec->value = p + HP_TLV_HDR;
    return HP_TLV_HDR;
}

static HP_NOINLINE void tlv_visit_leaf(hp_tlv_summary *s, const hp_tlv *rec)
{
    s->records++;
    s->leaf_bytes += rec->len;
    s->crc = hp_crc32_update(s->crc, rec->value, rec->len);
}

#if HP_VERSION >= 3
/* v3: reports a nested record whose length runs past its container. */
static HP_NOINLINE int tlv_nested_overrun(const hp_tlv *rec, size_t room)
{
    host_log("tlv: nested record length exceeds its container", (int)rec->type);
    g_hp_stats.bytes_in += (u32)room;
    return hp_fail(HP_E_TRUNC, "tlv: truncated container");
}
#endif

/* Walks the body of a container; recurses into nested containers. */
static HP_NOINLINE int tlv_walk_nested(const u8 *p, size_t len, u32 depth, hp_tlv_summary *s)
{
    size_t off = 0;
    hp_tlv rec;
    int rc;

    if (depth > g_hp_config.max_depth)
        return hp_fail(HP_E_DEPTH, "tlv: containers nested too deeply");
    if (depth > s->max_depth)
        s->max_depth = depth;

    while (off < len) {
        rc = tlv_header(p + off, len - off, &rec);
        if (rc < 0)
            return hp_fail(rc, "tlv: truncated nested header");
        off += (size_t)rc;
#if HP_VERSION >= 3
        /* BUG D (fixed in v3): the child's length was never checked
         * against the room left in its parent container. */
        if (rec.len > len - off)
            return tlv_nested_overrun(&rec, len - off);
#endif
        if (rec.type & HP_TLV_CONTAINER) {
            s->containers++;
            rc = tlv_walk_nested(rec.value, rec.len, depth + 1, s);
            if (rc < 0)
                return rc;
        } else {
            tlv_visit_leaf(s, &rec);
        }
        off += rec.len;
    }
    return HP_OK;
}

HP_API int hp_tlv_parse(const void *buf, size_t len, hp_tlv_summary *out)
{
    const u8 *p = buf;
    size_t off = 0;
    hp_tlv_summary s;
    hp_tlv rec;
    int rc;

    if (p == NULL && len != 0)
        return hp_fail(HP_E_ARG, "tlv: null buffer");
    memset(&s, 0, sizeof(s));

    while (off < len) {
        rc = tlv_header(p + off, len - off, &rec);
        if (rc < 0)
            return hp_fail(rc, "tlv: truncated header");
        off += (size_t)rc;
        if (rec.len > len - off)
            return hp_fail(HP_E_TRUNC, "tlv: record exceeds buffer");
        if (s.records + s.containers >= g_hp_config.max_records)
            return hp_fail(HP_E_RANGE, "tlv: too many records");
        if (rec.type & HP_TLV_CONTAINER) {
            s.containers++;
            rc = tlv_walk_nested(rec.value, rec.len, 1, &s);
            if (rc < 0)
                return rc;
        } else {
            tlv_visit_leaf(&s, &rec);
        }
        off += rec.len;
    }

    g_hp_stats.bytes_in += (u32)len;
    if (out != NULL)
        *out = s;
    return (int)s.records;
}

/* Finds the first top-level record of the given type. Returns its offset. */
HP_API int hp_tlv_find(const void *buf, size_t len, u32 type, hp_tlv *out)
{
    const u8 *p = buf;
    size_t off = 0;
    hp_tlv rec;
    int rc;

    while (off < len) {
        size_t at = off;
        rc = tlv_header(p + off, len - off, &rec);
        if (rc < 0)
            return rc;
        off += (size_t)rc;
        if (rec.len > len - off)
            return HP_E_TRUNC;
        if (rec.type == type) {
            if (out != NULL)
                *out = rec;
            return (int)at;
        }
        off += rec.len;
    }
    return HP_E_RANGE;
}

static HP_NOINLINE int tlv_find_path_rec(const u8 *p, size_t len, const u8 *path,
                                         size_t depth, hp_tlv *out)
{
    hp_tlv rec;
    int rc = hp_tlv_find(p, len, path[0], &rec);
    if (rc < 0)
        return rc;
    if (depth == 1) {
        *out = rec;
        return HP_OK;
    }
    if (!(rec.type & HP_TLV_CONTAINER))
        return HP_E_STATE;
    return tlv_find_path_rec(rec.value, rec.len, path + 1, depth - 1, out);
}

/* Follows a path of record types down through nested containers. */
HP_API int hp_tlv_find_path(const void *buf, size_t len, const u8 *path, size_t depth, hp_tlv *out)
{
    if (path == NULL || out == NULL || depth == 0)
        return HP_E_ARG;
    if (depth > g_hp_config.max_depth)
        return hp_fail(HP_E_DEPTH, "tlv: path too long");
    return tlv_find_path_rec(buf, len, path, depth, out);
}

/* Copies a string record into dst as a NUL-terminated string. */
HP_API int hp_tlv_copy_string(const void *buf, size_t len, u32 type, char *dst, size_t cap)
{
    hp_tlv rec;
    int rc = hp_tlv_find(buf, len, type, &rec);
    if (rc < 0)
        return rc;
#if HP_VERSION >= 3
    if ((size_t)rec.len >= cap)
        return hp_fail(HP_E_NOSPACE, "tlv: string does not fit");
#else
    /* BUG C (fixed in v3): off by one, leaves no room for the NUL. */
    if ((size_t)rec.len > cap)
        return hp_fail(HP_E_NOSPACE, "tlv: string does not fit");
#endif
#if HP_VERSION >= 4
    if (rec.len > g_hp_config.max_string)
        return hp_fail(HP_E_RANGE, "tlv: string longer than max_string");
#endif
    memcpy(dst, rec.value, rec.len);
    dst[rec.len] = 0;
    g_hp_stats.bytes_out += rec.len;
    return (int)rec.len;
}

HP_API int hp_tlv_get_u32(const void *buf, size_t len, u32 type, u32 *out)
{
    hp_tlv rec;
    int rc = hp_tlv_find(buf, len, type, &rec);
    if (rc < 0)
        return rc;
    switch (rec.len) {
    case 1:
        *out = rec.value[0];
        break;
    case 2:
        *out = hp_rd16(rec.value);
        break;
    case 4:
        *out = hp_rd32(rec.value);
        break;
    default:
        return HP_E_RANGE;
    }
    return HP_OK;
}

HP_API int hp_tlv_encode(void *out, size_t cap, u32 type, const void *value, size_t n)
{
    u8 *o = out;
    if (type > 0xffu || n > 0xffffu)
        return HP_E_RANGE;
    if (cap < HP_TLV_HDR || n > cap - HP_TLV_HDR)
        return HP_E_NOSPACE;
    o[0] = (u8)type;
    o[1] = (u8)n;
    o[2] = (u8)(n >> 8);
    memcpy(o + HP_TLV_HDR, value, n);
    return (int)(n + HP_TLV_HDR);
}
