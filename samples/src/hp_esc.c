/* Escaping into caller-supplied buffers: JSON strings, URL encoding, hex. */
#include "hp.h"

static const char g_hex_digits[16] = "0123456789abcdef";

/* Short JSON escapes for control characters; 0 means use \u00XX. */
static const char g_json_short[32] = {
    0, 0, 0, 0, 0, 0, 0, 0, 'b', 't', 'n', 0, 'f', 'r', 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0,   0,   0,   0, 0,   0,   0, 0
};

static HP_NOINLINE char hex_digit(u32 v)
{
    return g_hex_digits[v & 15u];
}

static HP_NOINLINE int hex_value(u32 c)
{
    if (c >= '0' && c <= '9')
        return (int)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (int)(c - 'a' + 10);
    if (c >= 'A' && c <= 'F')
        return (int)(c - 'A' + 10);
    return -1;
}

static HP_NOINLINE int is_url_unreserved(u32 c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

/* Escapes n bytes of src as the body of a JSON string. Returns the length
 * written (excluding the terminating NUL). */
HP_API int hp_json_escape(const char *src, size_t n, char *dst, size_t cap)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        u8 c = (u8)src[i];
        if (c == '"' || c == '\\') {
            if (o + 2 > cap)
                return hp_fail(HP_E_NOSPACE, "json: no space");
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20) {
            if (g_json_short[c]) {
                if (o + 2 > cap)
                    return hp_fail(HP_E_NOSPACE, "json: no space");
                dst[o++] = '\\';
                dst[o++] = g_json_short[c];
                continue;
            }
#if HP_VERSION >= 2
            if (o + 6 > cap)
                return hp_fail(HP_E_NOSPACE, "json: no space for \\u escape");
#endif
            /* BUG A (fixed in v2): no bounds check before the 6-byte escape. */
            dst[o++] = '\\';
            dst[o++] = 'u';
            dst[o++] = '0';
            dst[o++] = '0';
            dst[o++] = hex_digit(c >> 4);
            dst[o++] = hex_digit(c);
        } else {
            if (o + 1 > cap)
                return hp_fail(HP_E_NOSPACE, "json: no space");
            dst[o++] = (char)c;
        }
    }
    if (o >= cap)
        return hp_fail(HP_E_NOSPACE, "json: no space for terminator");
    dst[o] = 0;
    g_hp_stats.bytes_out += (u32)o;
    return (int)o;
}

/* Returns a newly allocated, quoted JSON string; free with hp_release. */
HP_API char *hp_json_quote(const char *src)
{
    size_t n = hp_strlen(src);
    size_t cap;
    char *out;
    int rc;

    if (n > 0x10000u)
        return NULL;
    cap = n * 6 + 3;
    out = host_alloc(cap);
    if (out == NULL)
        return NULL;
    out[0] = '"';
    rc = hp_json_escape(src, n, out + 1, cap - 2);
    if (rc < 0) {
        host_free(out);
        return NULL;
    }
    out[rc + 1] = '"';
    out[rc + 2] = 0;
    return out;
}

HP_API void hp_release(void *p)
{
    if (p != NULL)
        host_free(p);
}

HP_API int hp_url_encode(const char *src, size_t n, char *dst, size_t cap)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        u8 c = (u8)src[i];
        if (is_url_unreserved(c)) {
            if (o + 1 >= cap)
                return HP_E_NOSPACE;
            dst[o++] = (char)c;
        } else if (c == ' ') {
            if (o + 1 >= cap)
                return HP_E_NOSPACE;
            dst[o++] = '+';
        } else {
            if (o + 3 >= cap)
                return HP_E_NOSPACE;
            dst[o++] = '%';
            dst[o++] = (char)(hex_digit(c >> 4) & ~0x20);
            dst[o++] = (char)(hex_digit(c) & ~0x20);
        }
    }
    if (cap == 0)
        return HP_E_NOSPACE;
    dst[o] = 0;
    return (int)o;
}

HP_API int hp_url_decode(const char *src, size_t n, char *dst, size_t cap)
{
    size_t i = 0, o = 0;
    while (i < n) {
        u8 c = (u8)src[i];
        if (o + 1 >= cap)
            return HP_E_NOSPACE;
        if (c == '%') {
            int hi, lo;
            if (n - i < 3)
                return hp_fail(HP_E_SYNTAX, "url: truncated escape");
            hi = hex_value((u8)src[i + 1]);
            lo = hex_value((u8)src[i + 2]);
            if (hi < 0 || lo < 0)
                return hp_fail(HP_E_SYNTAX, "url: bad escape");
            dst[o++] = (char)((hi << 4) | lo);
            i += 3;
        } else {
            dst[o++] = c == '+' ? ' ' : (char)c;
            i++;
        }
    }
    if (cap == 0)
        return HP_E_NOSPACE;
    dst[o] = 0;
    return (int)o;
}

HP_API int hp_hex_encode(const void *src, size_t n, char *dst, size_t cap)
{
    const u8 *p = src;
    size_t i;
    if (n > (cap - 1) / 2 || cap == 0)
        return HP_E_NOSPACE;
    for (i = 0; i < n; i++) {
        dst[2 * i] = hex_digit(p[i] >> 4);
        dst[2 * i + 1] = hex_digit(p[i]);
    }
    dst[2 * n] = 0;
    return (int)(2 * n);
}
