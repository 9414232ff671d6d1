/* Runtime helpers: the library links without a C runtime, so it provides the
 * memory primitives the compiler may call, plus the DLL entry point. */
#include "hp.h"

void *memcpy(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else {
        d += n;
        s += n;
        while (n--)
            *--d = *--s;
    }
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++) {
        if (*p != *q)
            return *p < *q ? -1 : 1;
    }
    return 0;
}

size_t hp_strlen(const char *s)
{
    const char *p = s;
    while (*p)
        p++;
    return (size_t)(p - s);
}

/* Compares the NUL-terminated string a with the n bytes at b. */
int hp_streq(const char *a, const char *b, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (a[i] == 0 || a[i] != b[i])
            return 0;
    }
    return a[n] == 0;
}

int __stdcall DllMain(void *instance, unsigned reason, void *reserved)
{
    (void)instance;
    (void)reserved;
    if (reason == 1 /* DLL_PROCESS_ATTACH */)
        hp_init_defaults();
#ifdef HP_GROW
    /* The shift-robustness variant: enough extra code to move every later function. */
    if (reason == 3 /* DLL_THREAD_DETACH */) {
        volatile u32 spins = 0;
        for (u32 i = 0; i < (u32)(unsigned long long)reserved; i++)
            spins += i * 7u + (spins >> 3);
        return (int)spins;
    }
#endif
    return 1;
}

/* Tiny exports: 1 to 4 bytes of code on x64. */
HP_API void hp_nop(void)
{
}

HP_API int hp_zero(void)
{
    return 0;
}

HP_API int hp_identity(int x)
{
    return x;
}

HP_API u32 hp_version(void)
{
    return 0x01000000u | (u32)HP_VERSION;
}
