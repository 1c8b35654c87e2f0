/* Devices: one execution resource with a memory budget (DESIGN.md section 2).
 *
 * A CPU *virtual device* is a set of worker threads (its own pool) and an
 * accounted share of host memory; a CUDA device is a GPU ordinal whose
 * memory the CUDA backend allocates and accounts here. Every allocation of
 * weights, KV pages and scratch of an engine rank goes through its device,
 * so that the device can refuse what does not fit its budget (an error
 * value, never an abort) and report what it holds, by class, to /v1/layout
 * and /metrics.
 *
 * A device outlives the instances built on it: the server creates its
 * devices once and builds instances (engines) over them; a transformation
 * moves pages and weight chunks between devices that already exist.
 *
 * Threads: accounting is atomic (the server reads it while instances run);
 * pt_device_alloc and pt_device_release may be called from any thread. The
 * worker pool runs one job at a time: only the instance rank that owns the
 * device drives it. */
#ifndef PROTEUS_DEVICE_H
#define PROTEUS_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/threadpool.h"
#include "proteus/util.h"

typedef enum { PT_DEVICE_CPU = 0, PT_DEVICE_CUDA = 1 } pt_device_kind;

/* What a device's memory holds. */
typedef enum {
    PT_MEM_WEIGHTS = 0, /* the rank's weight shard and its replicated tensors */
    PT_MEM_KV,          /* head pages and their key bounding boxes */
    PT_MEM_SCRATCH,     /* step buffers: activations, partial sums, logits */
    PT_MEM_CLASS_COUNT,
} pt_mem_class;

typedef struct {
    pt_device_kind kind;
    int threads;           /* CPU: worker threads including the caller (>= 1) */
    int ordinal;           /* CUDA: device ordinal */
    uint64_t budget_bytes; /* 0 = no limit (CPU), or what the GPU has (CUDA) */
} pt_device_spec;

typedef struct pt_device pt_device;

/* `id` numbers the device in its kind ("cpu<id>"; a CUDA device is named by
 * its ordinal, "cuda<ordinal>"). Fails on a bad spec or when the worker
 * threads cannot be started. */
int pt_device_create(pt_device **out, int id, const pt_device_spec *spec, pt_err *err);
/* Everything allocated through the device must have been released. NULL is a no-op. */
void pt_device_free(pt_device *d);

pt_device_kind pt_device_kind_of(const pt_device *d);
const char *pt_device_name(const pt_device *d); /* "cpu0", "cuda1" */
int pt_device_ordinal(const pt_device *d);      /* CUDA ordinal; -1 on the CPU */
int pt_device_threads(const pt_device *d);
/* The device's workers (CPU); NULL on a CUDA device. */
pt_pool *pt_device_pool(pt_device *d);

uint64_t pt_device_budget(const pt_device *d); /* 0 = no limit */
uint64_t pt_device_used(const pt_device *d, pt_mem_class c);
uint64_t pt_device_used_total(const pt_device *d);
/* Bytes still available under the budget; UINT64_MAX without one. */
uint64_t pt_device_available(const pt_device *d);

/* Accounts `bytes` of class c, or fails with PT_ERR_NOMEM (naming the
 * device, the class, the bytes asked and what is left) when the budget
 * would be exceeded. For memory the caller allocates itself (GPU memory). */
int pt_device_reserve(pt_device *d, pt_mem_class c, uint64_t bytes, const char *what, pt_err *err);
void pt_device_unreserve(pt_device *d, pt_mem_class c, uint64_t bytes);

/* Host memory (64-byte aligned, zeroed) accounted to class c: reserve, then
 * allocate. Release it with the same class and size. */
int pt_device_alloc(pt_device *d, pt_mem_class c, size_t bytes, void **out, const char *what, pt_err *err);
void pt_device_release(pt_device *d, pt_mem_class c, void *p, size_t bytes);

/* Tests: the (n + 1)-th reservation from now fails as if out of memory;
 * n < 0 turns the injection off. */
void pt_device_fail_after(pt_device *d, int64_t n);

const char *pt_mem_class_name(pt_mem_class c); /* "weights", "kv", "scratch" */

#endif
