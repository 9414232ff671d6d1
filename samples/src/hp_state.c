/* Global configuration, statistics and error reporting. */
#include "hp.h"

/* Initialised global state: lives in .data. */
hp_config g_hp_config = {
    0x46435048u,            /* 'HPCF' */
#if HP_VERSION >= 4
    16,                     /* max_depth: raised in the v4 feature update */
    64,                     /* max_records */
    48,                     /* max_string (new field in v4) */
#else
    8,                      /* max_depth */
    64,                     /* max_records */
#endif
    0x3u,                   /* flags */
    "sample"
};

/* Zero-initialised global state: lives in .bss. */
hp_stats g_hp_stats;

static const char *const g_error_text[HP_NUM_ERRORS] = {
    "ok",
    "invalid argument",
    "out of range",
    "no space in output buffer",
    "truncated input",
    "size overflow",
    "nesting too deep",
    "syntax error",
    "invalid state",
    "out of memory",
    "checksum mismatch",
    "bad magic"
};

static HP_NOINLINE void stats_note_error(int code)
{
    g_hp_stats.errors++;
    g_hp_stats.last_error = code;
}

#ifdef HP_NEW_GLOBAL
/* The global-v3 variant's fix: a caller failing on purpose could flood the host's
 * log, so only a quota of failures is logged, then one note. The quota, the count
 * past it and the note are new globals (.data, .bss, and .data holding a pointer to
 * a new string). (#line keeps the other builds' line numbers as they were.) */
u32 g_fail_quota = 64;
u32 g_fail_quieted;
const char *g_fail_quiet_note = "log: failure quota reached, further failures not logged";
#endif
#line 43
int hp_fail(int code, const char *what)
{
    stats_note_error(code);
#ifdef HP_NEW_IMPORT
    /* The import variant's fix: a caller failing on purpose could flood the host's
     * log, so logging stops once it holds 64 lines. host_log_count is imported by
     * no version: the fix adds an import. (#line keeps the other builds' line
     * numbers, hashed into their /brepro stamps, as they were.) */
    if (host_log_count() >= 64u)
        return code;
#endif
#ifdef HP_NEW_GLOBAL
    if (g_fail_quota == 0) {
        if (g_fail_quieted++ == 0)
            host_log(g_fail_quiet_note, code);
        return code;
    }
    g_fail_quota--;
#endif
#line 46
    host_log(what, code);
    return code;
}

void hp_init_defaults(void)
{
    memset(&g_hp_stats, 0, sizeof(g_hp_stats));
    hp_ring_reset_default();
}

HP_API const char *hp_error_string(int code)
{
    if (code > 0 || code <= -HP_NUM_ERRORS)
        return "unknown error";
    return g_error_text[-code];
}

HP_API int hp_get_stats(hp_stats *out)
{
    if (out == NULL)
        return HP_E_ARG;
    g_hp_stats.calls++;
    *out = g_hp_stats;
    return HP_OK;
}

static HP_NOINLINE u32 clamp_depth(u32 value)
{
    int cap = host_policy(HOST_POLICY_DEPTH_CAP);
    if (cap > 0 && value > (u32)cap)
        return (u32)cap;
    return value;
}

HP_API int hp_set_limit(u32 which, u32 value)
{
    switch (which) {
    case HP_LIMIT_DEPTH:
        if (value == 0)
            return hp_fail(HP_E_ARG, "limit: depth must be positive");
        if (value > g_hp_config.max_depth && !host_policy(HOST_POLICY_ALLOW_RAISE))
            return hp_fail(HP_E_STATE, "limit: raising depth not allowed");
        g_hp_config.max_depth = clamp_depth(value);
        return (int)g_hp_config.max_depth;
    case HP_LIMIT_RECORDS:
        g_hp_config.max_records = value;
        return (int)value;
    case HP_LIMIT_FLAGS:
        g_hp_config.flags = value & 0xffu;
        return (int)g_hp_config.flags;
    default:
        return hp_fail(HP_E_RANGE, "limit: unknown limit");
    }
}

HP_API u32 hp_get_limit(u32 which)
{
    if (which == HP_LIMIT_DEPTH)
        return g_hp_config.max_depth;
    if (which == HP_LIMIT_RECORDS)
        return g_hp_config.max_records;
    if (which == HP_LIMIT_FLAGS)
        return g_hp_config.flags;
    return 0;
}

HP_API int hp_reset(void)
{
    u32 now = host_now();
    hp_init_defaults();
    g_hp_stats.last_time = now;
    return (int)(now & 0x7fffffffu);
}
