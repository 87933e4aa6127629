/* Counts the bytes a process copies with memcpy/memmove (LD_PRELOAD), all and in copies of
 * 4 KiB or more, and writes both to $COPYCOUNT_OUT at exit. Used by scripts/bench-large to
 * report bytes copied per byte forwarded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
static _Atomic unsigned long long copied, big;
static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);
void *memcpy(void *d, const void *s, size_t n) {
    if (!real_memcpy) real_memcpy = dlsym(RTLD_NEXT, "memcpy");
    copied += n; if (n >= 4096) big += n;
    return real_memcpy(d, s, n);
}
void *memmove(void *d, const void *s, size_t n) {
    if (!real_memmove) real_memmove = dlsym(RTLD_NEXT, "memmove");
    copied += n; if (n >= 4096) big += n;
    return real_memmove(d, s, n);
}
__attribute__((destructor)) static void report(void) {
    const char *p = getenv("COPYCOUNT_OUT");
    FILE *f = p ? fopen(p, "w") : stderr;
    if (!f) return;
    fprintf(f, "%llu %llu\n", (unsigned long long)copied, (unsigned long long)big);
    if (p) fclose(f);
}
