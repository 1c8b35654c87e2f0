/* Devices: budget accounting by memory class, host allocations through it,
 * and a CPU device's worker pool. */
#include "proteus/device.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Allocations at least this large are mapped: zero pages that the system
 * commits only when first written, so a KV pool sized for the budget costs
 * what its sequences use. Smaller ones come from the heap, where the
 * sanitizers see them. */
#define MAP_THRESHOLD ((size_t)64 << 20)

struct pt_device {
    pt_device_spec spec;
    char name[16];
    pt_pool *pool;                          /* CPU workers; NULL on CUDA */
    _Atomic uint64_t used[PT_MEM_CLASS_COUNT];
    _Atomic int64_t fail_after;             /* reservations left before an injected failure; < 0 = off */
};

static const char *const class_names[PT_MEM_CLASS_COUNT] = {"weights", "kv", "scratch"};

const char *pt_mem_class_name(pt_mem_class c) { return c < PT_MEM_CLASS_COUNT ? class_names[c] : "?"; }

int pt_device_create(pt_device **out, int id, const pt_device_spec *spec, pt_err *err) {
    *out = NULL;
    if (spec->kind != PT_DEVICE_CPU && spec->kind != PT_DEVICE_CUDA)
        return pt_err_set(err, PT_ERR_INVALID, "device %d: unknown kind %d", id, (int)spec->kind);
    if (spec->kind == PT_DEVICE_CPU && (spec->threads < 1 || spec->threads > 1024))
        return pt_err_set(err, PT_ERR_INVALID, "device cpu%d: %d threads (need 1 to 1024)", id, spec->threads);
    if (spec->kind == PT_DEVICE_CUDA && spec->ordinal < 0)
        return pt_err_set(err, PT_ERR_INVALID, "device %d: CUDA ordinal %d is negative", id, spec->ordinal);
    pt_device *d = calloc(1, sizeof(*d));
    if (!d) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating device %d", id);
    d->spec = *spec;
    atomic_init(&d->fail_after, -1);
    if (spec->kind == PT_DEVICE_CPU) {
        snprintf(d->name, sizeof(d->name), "cpu%d", id);
        d->pool = pt_pool_create(spec->threads);
        if (!d->pool) {
            free(d);
            return pt_err_set(err, PT_ERR_NOMEM, "device cpu%d: cannot start %d worker threads", id, spec->threads);
        }
        /* The pool runs with fewer threads when the system refuses some. */
        d->spec.threads = pt_pool_size(d->pool);
    } else {
        snprintf(d->name, sizeof(d->name), "cuda%d", spec->ordinal);
        d->spec.threads = 1;
    }
    *out = d;
    return PT_OK;
}

void pt_device_free(pt_device *d) {
    if (!d) return;
    for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
        if (atomic_load(&d->used[c]))
            pt_log(PT_LOG_WARN, "device %s freed with %llu bytes of %s still accounted", d->name,
                   (unsigned long long)atomic_load(&d->used[c]), class_names[c]);
    pt_pool_free(d->pool);
    free(d);
}

pt_device_kind pt_device_kind_of(const pt_device *d) { return d->spec.kind; }
const char *pt_device_name(const pt_device *d) { return d->name; }
int pt_device_ordinal(const pt_device *d) { return d->spec.kind == PT_DEVICE_CUDA ? d->spec.ordinal : -1; }
int pt_device_threads(const pt_device *d) { return d->spec.threads; }
pt_pool *pt_device_pool(pt_device *d) { return d->pool; }
uint64_t pt_device_budget(const pt_device *d) { return d->spec.budget_bytes; }

uint64_t pt_device_used(const pt_device *d, pt_mem_class c) {
    return c < PT_MEM_CLASS_COUNT ? atomic_load(&((pt_device *)d)->used[c]) : 0;
}

uint64_t pt_device_used_total(const pt_device *d) {
    uint64_t s = 0;
    for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
        if (!pt_add_size(s, pt_device_used(d, (pt_mem_class)c), &s)) return UINT64_MAX;
    return s;
}

uint64_t pt_device_available(const pt_device *d) {
    if (!d->spec.budget_bytes) return UINT64_MAX;
    uint64_t used = pt_device_used_total(d);
    return used < d->spec.budget_bytes ? d->spec.budget_bytes - used : 0;
}

void pt_device_fail_after(pt_device *d, int64_t n) { atomic_store(&d->fail_after, n < 0 ? -1 : n); }

int pt_device_reserve(pt_device *d, pt_mem_class c, uint64_t bytes, const char *what, pt_err *err) {
    if (c >= PT_MEM_CLASS_COUNT) return pt_err_set(err, PT_ERR_INVALID, "device %s: bad memory class", d->name);
    int64_t left = atomic_load(&d->fail_after);
    while (left >= 0 && !atomic_compare_exchange_weak(&d->fail_after, &left, left - 1)) {}
    if (left == 0)
        return pt_err_set(err, PT_ERR_NOMEM, "device %s: out of memory for %s (%llu bytes of %s; injected failure)",
                          d->name, what, (unsigned long long)bytes, class_names[c]);
    /* Above the budget on its own (or near 2^64): refused before any sum can wrap. */
    if ((d->spec.budget_bytes && bytes > d->spec.budget_bytes) || bytes > UINT64_MAX / 4)
        return pt_err_set(err, PT_ERR_NOMEM, "device %s: %s needs %llu bytes of %s, more than its budget of %llu",
                          d->name, what, (unsigned long long)bytes, class_names[c],
                          (unsigned long long)d->spec.budget_bytes);
    atomic_fetch_add(&d->used[c], bytes);
    if (d->spec.budget_bytes) {
        /* Other classes may grow concurrently: the check reads them after our add,
         * so two racing reservations can both fail, never both pass over budget. */
        uint64_t total = pt_device_used_total(d);
        if (total > d->spec.budget_bytes) {
            atomic_fetch_sub(&d->used[c], bytes);
            uint64_t had = total - bytes;
            return pt_err_set(err, PT_ERR_NOMEM,
                              "device %s: %s needs %llu bytes of %s, but only %llu of its budget of %llu bytes are "
                              "left (%llu weights, %llu kv, %llu scratch)",
                              d->name, what, (unsigned long long)bytes, class_names[c],
                              (unsigned long long)(had < d->spec.budget_bytes ? d->spec.budget_bytes - had : 0),
                              (unsigned long long)d->spec.budget_bytes,
                              (unsigned long long)pt_device_used(d, PT_MEM_WEIGHTS),
                              (unsigned long long)pt_device_used(d, PT_MEM_KV),
                              (unsigned long long)pt_device_used(d, PT_MEM_SCRATCH));
        }
    }
    return PT_OK;
}

void pt_device_unreserve(pt_device *d, pt_mem_class c, uint64_t bytes) {
    if (c < PT_MEM_CLASS_COUNT) atomic_fetch_sub(&d->used[c], bytes);
}

int pt_device_alloc(pt_device *d, pt_mem_class c, size_t bytes, void **out, const char *what, pt_err *err) {
    *out = NULL;
    int rc = pt_device_reserve(d, c, bytes, what, err);
    if (rc) return rc;
    void *p = NULL;
    if (bytes >= MAP_THRESHOLD) {
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) p = NULL;
    } else if ((p = pt_aligned_alloc(bytes))) {
        memset(p, 0, bytes);
    }
    if (!p) {
        pt_device_unreserve(d, c, bytes);
        return pt_err_set(err, PT_ERR_NOMEM, "device %s: the system refused %zu bytes for %s", d->name, bytes, what);
    }
    *out = p;
    return PT_OK;
}

void pt_device_release(pt_device *d, pt_mem_class c, void *p, size_t bytes) {
    if (!p) return;
    if (bytes >= MAP_THRESHOLD)
        munmap(p, bytes);
    else
        pt_aligned_free(p);
    pt_device_unreserve(d, c, bytes);
}
