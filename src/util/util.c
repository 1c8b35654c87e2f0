#define _GNU_SOURCE
#include "proteus/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int pt_err_set(pt_err *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

static void *check_alloc(void *p) {
    if (!p) {
        fputs("proteus: out of memory\n", stderr);
        abort();
    }
    return p;
}

void *pt_xcalloc(size_t n, size_t size) { return check_alloc(calloc(n ? n : 1, size ? size : 1)); }
void *pt_xmalloc(size_t size) { return check_alloc(malloc(size ? size : 1)); }
char *pt_xstrdup(const char *s) { return check_alloc(strdup(s)); }

void *pt_aligned_alloc(size_t size) {
    void *p = NULL;
    if (posix_memalign(&p, 64, size ? size : 64) != 0) return NULL;
    return p;
}
void pt_aligned_free(void *p) { free(p); }

void pt_text_printf(pt_text *t, const char *fmt, ...) {
    while (!t->failed) {
        va_list ap;
        va_start(ap, fmt);
        int w = t->s ? vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap) : 0;
        va_end(ap);
        if (w < 0) return;
        if (t->s && (size_t)w < t->cap - t->len) {
            t->len += (size_t)w;
            return;
        }
        size_t cap = (t->cap + (size_t)w + 1) * 2;
        if (cap < 1024) cap = 1024;
        char *grown = realloc(t->s, cap);
        if (!grown) {
            t->failed = true;
            return;
        }
        t->s = grown;
        t->cap = cap;
    }
}

char *pt_text_take(pt_text *t) { /* NULL too when nothing was appended */
    char *s = t->s;
    if (t->failed || !s) {
        free(s);
        s = NULL;
    }
    *t = (pt_text){0};
    return s;
}

double pt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static pt_log_level log_level = PT_LOG_INFO;
void pt_log_set_level(pt_log_level level) { log_level = level; }

void pt_log(pt_log_level level, const char *fmt, ...) {
    if (level < log_level) return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One write per line so that lines from several threads do not interleave. */
    fprintf(stderr, "proteus %s: %s\n", names[level], line);
}

void pt_rng_seed(pt_rng *rng, uint64_t seed) { rng->state = seed; }

uint64_t pt_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* splitmix64: tiny, fast, and the same on every platform. */
uint64_t pt_rng_next(pt_rng *rng) { return pt_mix64(rng->state += 0x9E3779B97F4A7C15ull); }

float pt_rng_uniform(pt_rng *rng) { return (float)(pt_rng_next(rng) >> 40) * (1.0f / 16777216.0f); }

char *pt_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)sz + 1))) {
            if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
                free(buf);
                buf = NULL;
            } else {
                buf[sz] = 0;
                if (len) *len = (size_t)sz;
            }
        }
    }
    fclose(f);
    return buf;
}
