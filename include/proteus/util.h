/* Small helpers every module uses: error strings, overflow-checked sizes,
 * logging, timing. */
#ifndef PROTEUS_UTIL_H
#define PROTEUS_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Error codes are negative; 0 is success. A function that fails also writes a
 * one-line, human-readable reason into a pt_err the caller passed in. */
enum {
    PT_OK = 0,
    PT_ERR_IO = -1,       /* file missing or unreadable */
    PT_ERR_FORMAT = -2,   /* malformed input: bad magic, truncated, out of range */
    PT_ERR_UNSUPPORTED = -3,
    PT_ERR_NOMEM = -4,
    PT_ERR_INVALID = -5,  /* bad argument from the caller */
};

typedef struct {
    char msg[512];
} pt_err;

/* printf into err->msg (err may be NULL); returns code so callers can
 * `return pt_err_set(err, PT_ERR_FORMAT, "...")`. */
int pt_err_set(pt_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked arithmetic: return false on overflow. */
static inline bool pt_mul_size(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool pt_add_size(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* Allocation that aborts on failure is reserved for small internal
 * bookkeeping; large or input-sized buffers use malloc and report PT_ERR_NOMEM. */
void *pt_xcalloc(size_t n, size_t size);
void *pt_xmalloc(size_t size);
char *pt_xstrdup(const char *s);
/* 64-byte aligned allocation for kernels; free with pt_aligned_free. NULL on failure. */
void *pt_aligned_alloc(size_t size);
void pt_aligned_free(void *p);

/* A growing text (metrics pages): printf appends; once an allocation
 * fails it stays failed and pt_text_take gives NULL. */
typedef struct {
    char *s;
    size_t len, cap;
    bool failed;
} pt_text;
void pt_text_printf(pt_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The NUL-terminated text for the caller to free; NULL when an append
 * failed (what was built is freed). */
char *pt_text_take(pt_text *t);

/* Monotonic clock in seconds. */
double pt_now(void);

/* A whole file in a malloc'd buffer with a NUL after its `*len` bytes (len
 * may be NULL), or NULL when it cannot be opened or read. */
char *pt_read_file(const char *path, size_t *len);

typedef enum { PT_LOG_DEBUG, PT_LOG_INFO, PT_LOG_WARN, PT_LOG_ERROR } pt_log_level;
void pt_log_set_level(pt_log_level level);
void pt_log(pt_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Deterministic PRNG (splitmix64 / xoshiro-free): used for synthetic weights
 * and sampling so that a seed means the same numbers everywhere. */
typedef struct {
    uint64_t state;
} pt_rng;
void pt_rng_seed(pt_rng *rng, uint64_t seed);
uint64_t pt_rng_next(pt_rng *rng);
/* Uniform in [0, 1) with 24 random bits. */
float pt_rng_uniform(pt_rng *rng);
/* splitmix64's finaliser: a well-mixed 64-bit hash of a 64-bit value. */
uint64_t pt_mix64(uint64_t x);

#endif
