/* samplehost.dll - the host services imported by sample.dll.
 * Deterministic: a bump allocator over a static arena, a fake clock and an
 * in-memory log. host_policy is exported by ordinal only (see samplehost.def). */

typedef __SIZE_TYPE__ size_t;
typedef unsigned int u32;

#define LOG_SIZE   1024u
#define ARENA_SIZE 16384u

static char g_log[LOG_SIZE];
static u32 g_log_pos;
static u32 g_log_count;
static u32 g_clock = 1000;
static unsigned char g_arena[ARENA_SIZE] __attribute__((aligned(16)));
static size_t g_arena_top;
static u32 g_frees;

void host_log(const char *msg, int code)
{
    volatile char *log = g_log;
    (void)code;
    g_log_count++;
    if (msg == 0)
        return;
    while (*msg) {
        log[g_log_pos % LOG_SIZE] = *msg++;
        g_log_pos++;
    }
    log[g_log_pos % LOG_SIZE] = '\n';
    g_log_pos++;
}

void *host_alloc(size_t n)
{
    size_t need = (n + 15u) & ~(size_t)15u;
    void *p;
    if (n == 0 || need < n || need > ARENA_SIZE - g_arena_top)
        return 0;
    p = &g_arena[g_arena_top];
    g_arena_top += need;
    return p;
}

void host_free(void *p)
{
    if (p != 0)
        g_frees++;
}

u32 host_now(void)
{
    g_clock += 10;
    return g_clock;
}

u32 host_log_count(void)
{
    return g_log_count;
}

int host_policy(int key)
{
    switch (key) {
    case 1:  return 1;   /* HOST_POLICY_ALLOW_RAISE */
    case 2:  return 32;  /* HOST_POLICY_DEPTH_CAP */
    default: return 0;
    }
}

int __stdcall HostDllMain(void *instance, unsigned reason, void *reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return 1;
}
