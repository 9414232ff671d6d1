/*
 * sample.dll - a small freestanding C library used as hpatch test input.
 *
 * One source tree, four servicing versions selected with -DHP_VERSION=N:
 *   1  baseline (contains bugs A-D, see samples/README.md)
 *   2  month-1 update: fixes A and B
 *   3  month-2 update: fixes A, B, C and D
 *   4  feature update: also changes the layout of global data
 */
#ifndef HP_H
#define HP_H

#ifndef HP_VERSION
#define HP_VERSION 1
#endif

#define HP_API      __declspec(dllexport)
#define HP_IMPORT   __declspec(dllimport)
#define HP_NOINLINE __attribute__((noinline))
#define HP_COLD     __attribute__((cold))

typedef unsigned char      u8;
typedef unsigned short     u16;
typedef unsigned int       u32;
typedef unsigned long long u64;
typedef int                i32;
typedef long long          i64;
typedef __SIZE_TYPE__      size_t;

#define NULL ((void *)0)

/* status codes (negative) */
enum {
    HP_OK         = 0,
    HP_E_ARG      = -1,
    HP_E_RANGE    = -2,
    HP_E_NOSPACE  = -3,
    HP_E_TRUNC    = -4,
    HP_E_OVERFLOW = -5,
    HP_E_DEPTH    = -6,
    HP_E_SYNTAX   = -7,
    HP_E_STATE    = -8,
    HP_E_NOMEM    = -9,
    HP_E_CRC      = -10,
    HP_E_MAGIC    = -11
};
#define HP_NUM_ERRORS 12

/* ---- imports from samplehost.dll ---- */
HP_IMPORT void  host_log(const char *msg, int code);
HP_IMPORT void *host_alloc(size_t n);
HP_IMPORT void  host_free(void *p);
HP_IMPORT u32   host_now(void);
HP_IMPORT int   host_policy(int key);   /* exported by ordinal only (@10) */

#define HOST_POLICY_ALLOW_RAISE 1
#define HOST_POLICY_DEPTH_CAP   2

/* ---- global state (hp_state.c) ---- */
typedef struct hp_config {
    u32  magic;         /* 'HPCF' */
    u32  max_depth;     /* nesting limit for TLV containers and expressions */
    u32  max_records;   /* record limit for one TLV parse */
#if HP_VERSION >= 4
    u32  max_string;    /* v4: limit for strings copied out of records */
#endif
    u32  flags;
    char name[16];
} hp_config;

typedef struct hp_stats {
    u32 calls;
    u32 errors;
    u32 bytes_in;
    u32 bytes_out;
    i32 last_error;
    u32 last_time;
#if HP_VERSION >= 4
    u32 dropped;        /* v4: bytes dropped by full ring buffers */
#endif
} hp_stats;

#define HP_LIMIT_DEPTH   0
#define HP_LIMIT_RECORDS 1
#define HP_LIMIT_FLAGS   2

extern hp_config g_hp_config;   /* .data */
extern hp_stats  g_hp_stats;    /* .bss  */

/* Error paths are marked cold: gcc moves the code that leads to them out of
 * line into separate "<function>.cold" parts. */
HP_COLD int hp_fail(int code, const char *what);
void hp_init_defaults(void);

/* ---- runtime helpers (hp_rt.c) ---- */
void  *memcpy(void *dst, const void *src, size_t n);
void  *memset(void *dst, int c, size_t n);
void  *memmove(void *dst, const void *src, size_t n);
int    memcmp(const void *a, const void *b, size_t n);
size_t hp_strlen(const char *s);
int    hp_streq(const char *a, const char *b, size_t n);

/* ---- checksums (hp_crc.c) ---- */
HP_API u32 hp_crc32(const void *data, size_t n);
HP_API u32 hp_crc32_update(u32 crc, const void *data, size_t n);
HP_API u32 hp_adler32(const void *data, size_t n);
u32 hp_fnv1a(const void *data, size_t n);

/* ---- TLV records (hp_tlv.c) ----
 * record := type:u8 len:u16le value[len]; type & 0x80 marks a container
 * whose value is itself a sequence of records. */
#define HP_TLV_HDR       3
#define HP_TLV_CONTAINER 0x80

typedef struct hp_tlv {
    u8        type;
    u16       len;
    const u8 *value;
} hp_tlv;

typedef struct hp_tlv_summary {
    u32 records;      /* leaf records visited */
    u32 containers;   /* container records visited */
    u32 leaf_bytes;   /* total payload bytes of leaf records */
    u32 crc;          /* running crc32 over the leaf payloads */
    u32 max_depth;    /* deepest container nesting seen */
} hp_tlv_summary;

HP_API int hp_tlv_parse(const void *buf, size_t len, hp_tlv_summary *out);
HP_API int hp_tlv_find(const void *buf, size_t len, u32 type, hp_tlv *out);
HP_API int hp_tlv_find_path(const void *buf, size_t len, const u8 *path, size_t depth, hp_tlv *out);
HP_API int hp_tlv_copy_string(const void *buf, size_t len, u32 type, char *dst, size_t cap);
HP_API int hp_tlv_get_u32(const void *buf, size_t len, u32 type, u32 *out);
HP_API int hp_tlv_encode(void *out, size_t cap, u32 type, const void *value, size_t n);
u16 hp_rd16(const u8 *p);
u32 hp_rd32(const u8 *p);

/* ---- packets (hp_pkt.c) ---- */
HP_API int hp_array_unpack(const void *buf, size_t len, void *out, size_t out_cap);
HP_API int hp_pkt_build(void *out, size_t cap, u32 flags, const void *payload, size_t n);
HP_API int hp_pkt_check(const void *buf, size_t len);
HP_API int hp_pkt_process(const void *buf, size_t len, hp_tlv_summary *out);

/* ---- escaping (hp_esc.c) ---- */
HP_API int   hp_json_escape(const char *src, size_t n, char *dst, size_t cap);
HP_API char *hp_json_quote(const char *src);
HP_API void  hp_release(void *p);
HP_API int   hp_url_encode(const char *src, size_t n, char *dst, size_t cap);
HP_API int   hp_url_decode(const char *src, size_t n, char *dst, size_t cap);
HP_API int   hp_hex_encode(const void *src, size_t n, char *dst, size_t cap);

/* ---- ring buffer (hp_ring.c) ---- */
typedef struct hp_ring {
    u8 *buf;
    u32 cap;     /* power of two */
#ifdef HP_RING_FIELD
    u32 flags;   /* struct-v3: a field inserted before head (head and tail move) */
#endif
#line 156
    u32 head;    /* next write position (free running) */
    u32 tail;    /* next read position (free running) */
} hp_ring;

HP_API int      hp_ring_init(hp_ring *r, void *storage, u32 cap);
HP_API int      hp_ring_push(hp_ring *r, u32 byte);
HP_API int      hp_ring_pop(hp_ring *r);
HP_API int      hp_ring_write(hp_ring *r, const void *src, u32 n);
HP_API int      hp_ring_read(hp_ring *r, void *dst, u32 n);
HP_API hp_ring *hp_ring_default(void);
void hp_ring_reset_default(void);

/* ---- command protocol state machine (hp_fsm.c) ---- */
typedef struct hp_fsm {
    u32  state;
    u32  lines;        /* commands dispatched */
    u32  errors;       /* lines rejected */
    u32  argc;
    i32  num;
    i32  sign;
    i32  args[4];
    u32  wlen;
    char word[16];
    u32  tlen;
    char text[48];
    i32  result;       /* result of the last command */
} hp_fsm;

typedef int (*hp_cmd_fn)(hp_fsm *m);

HP_API int hp_fsm_init(hp_fsm *m);
HP_API int hp_fsm_feed(hp_fsm *m, const char *s, size_t n);
HP_API int hp_cmd_register(const char *name, hp_cmd_fn fn);

/* ---- stack VM with an operation table (hp_vm.c) ---- */
HP_API int hp_vm_run(const u8 *code, size_t n, i32 *result);

/* ---- expressions (hp_expr.c) ---- */
HP_API int hp_expr_eval(const char *s, size_t n, i64 *out);

/* ---- misc (hp_rt.c, hp_state.c) ---- */
HP_API void        hp_nop(void);
HP_API int         hp_zero(void);
HP_API int         hp_identity(int x);
HP_API u32         hp_version(void);
HP_API const char *hp_error_string(int code);
HP_API int         hp_get_stats(hp_stats *out);
HP_API int         hp_set_limit(u32 which, u32 value);
HP_API u32         hp_get_limit(u32 which);
HP_API int         hp_reset(void);

/* The import-v3 variant's new import (declared last: the other builds' line
 * numbers, hashed into their /brepro stamps through the debug links, stay put). */
#ifdef HP_NEW_IMPORT
HP_IMPORT u32 host_log_count(void);
#endif
#endif /* HP_H */
