/* Head-centric paged KV cache of one device (DESIGN.md section 4).
 *
 * The unit of allocation is a head page: the K and V of one KV head for
 * page_size tokens, in every layer. A slot id names the same position in every
 * layer's array, so one id in a block table serves all layers. Beside each
 * head page, per layer, the per-channel min and max of its keys (post-RoPE)
 * over the valid tokens: the page's bounding box for query-aware selection.
 *
 * Layout: data    (layer, slot, {K, V}, page_size, head_dim) elements of dtype
 *                 (F32, or F16 / BF16 to halve the memory)
 *         minmax  (layer, slot, {min, max}, head_dim)        floats, of the
 *                 keys as stored (after rounding to F16 / BF16)
 *
 * A pool belongs to a device, not to an instance: a TP transformation hands
 * it from the instance that used the device to the one that uses it next,
 * so a head that stays on its device keeps its pages where they are.
 *
 * Capacity and charge: the address space is mapped for n_slots pages, but
 * the device is charged only for the n_enabled pages in use or free; the
 * rest are retired. A transformation grows the pool into memory that freed
 * weights leave, and shrinks it (free pages only) to make room for weights
 * it must receive.
 *
 * Pages are reference-counted: the block table entry that owns a page is
 * one reference; a transformation pins the pages it is copying with
 * another, so that they are not reused under it when their request ends.
 * Threads: alloc, ref, release, grow and shrink take the pool's lock (an
 * instance and a transformation touch one pool from two threads). */
#ifndef PROTEUS_KV_POOL_H
#define PROTEUS_KV_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/device.h"
#include "proteus/dtype.h"
#include "proteus/util.h"

typedef struct pt_kv_pool {
    uint32_t n_layers;
    uint32_t head_dim;
    uint32_t page_size;
    uint32_t n_slots;   /* capacity: slot ids are below it */
    uint32_t n_enabled; /* pages charged to the device: in use or free */
    pt_dtype dtype;   /* PT_DTYPE_F32, F16 or BF16 */
    size_t elem;      /* bytes per element */
    uint64_t page_bytes; /* one slot across all layers, min/max included */
    pt_device *dev;   /* where enabled pages are accounted (PT_MEM_KV), or NULL: the heap */
    void *data;
    float *minmax;
    size_t data_bytes, minmax_bytes;
    pthread_mutex_t mu;
    uint32_t *refs;       /* (n_slots) references to each page; 0 = free or retired */
    uint32_t *free_slots; /* stack of free slot ids */
    uint32_t n_free;
    uint32_t *retired;    /* stack of slots not charged (capacity beyond n_enabled) */
    uint32_t n_retired;
    /* Pages in memory another layer allocated (a GPU's): data and minmax
     * point there, and this releases them when the pool is freed, so that
     * they follow the pool from instance to instance. */
    void (*release_data)(struct pt_kv_pool *kv);
    void *release_ctx;
} pt_kv_pool;

/* Pages in the memory of `dev` (accounted as KV; NULL = plain heap memory):
 * `n_slots` of address space, the first `n_enabled` of them charged and
 * free. n_enabled == n_slots on the heap. */
int pt_kv_pool_init(pt_kv_pool *kv, pt_device *dev, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                    uint32_t n_enabled, uint32_t n_slots, pt_dtype dtype, pt_err *err);
/* The free list and the geometry only (data and minmax stay NULL): the pool
 * of a device whose pages live elsewhere, e.g. in GPU memory. */
int pt_kv_pool_init_accounting(pt_kv_pool *kv, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                               uint32_t n_slots, pt_dtype dtype, pt_err *err);
void pt_kv_pool_free(pt_kv_pool *kv);

/* Bytes one head page takes across all layers, min/max included. */
uint64_t pt_kv_page_bytes(uint32_t n_layers, uint32_t head_dim, uint32_t page_size, pt_dtype dtype);

/* A free slot (one reference), or -1 when the pool is exhausted. */
int64_t pt_kv_page_alloc(pt_kv_pool *kv);
/* One more reference to an allocated slot (a pin). */
void pt_kv_page_ref(pt_kv_pool *kv, uint32_t slot);
/* Drops a reference; the slot is free again when none is left. */
void pt_kv_page_release(pt_kv_pool *kv, uint32_t slot);
/* Free pages now (a snapshot: other threads may allocate). */
uint32_t pt_kv_pool_free_pages(pt_kv_pool *kv);
/* Enabled pages now (a transformation may grow or shrink the pool). */
uint32_t pt_kv_pool_enabled_pages(pt_kv_pool *kv);

/* Enables up to `n` retired pages, as many as the device's budget allows;
 * returns how many. */
uint32_t pt_kv_pool_grow(pt_kv_pool *kv, uint32_t n);
/* Retires `n` free pages and returns their memory to the device, or
 * changes nothing and returns false when fewer than n are free. */
bool pt_kv_pool_shrink(pt_kv_pool *kv, uint32_t n);

/* Elements between consecutive slots of one layer, and from a slot's K rows
 * to its V rows. */
static inline size_t pt_kv_slot_stride(const pt_kv_pool *kv) { return (size_t)2 * kv->page_size * kv->head_dim; }
static inline size_t pt_kv_v_offset(const pt_kv_pool *kv) { return (size_t)kv->page_size * kv->head_dim; }

/* K rows (page_size, head_dim) of a slot in a layer, in the pool's dtype. */
static inline void *pt_kv_k(const pt_kv_pool *kv, uint32_t layer, uint32_t slot) {
    return (uint8_t *)kv->data + ((size_t)layer * kv->n_slots + slot) * pt_kv_slot_stride(kv) * kv->elem;
}
static inline void *pt_kv_v(const pt_kv_pool *kv, uint32_t layer, uint32_t slot) {
    return (uint8_t *)pt_kv_k(kv, layer, slot) + pt_kv_v_offset(kv) * kv->elem;
}
static inline float *pt_kv_kmin(const pt_kv_pool *kv, uint32_t layer, uint32_t slot) {
    return kv->minmax + ((size_t)layer * kv->n_slots + slot) * 2 * kv->head_dim;
}
static inline float *pt_kv_kmax(const pt_kv_pool *kv, uint32_t layer, uint32_t slot) {
    return pt_kv_kmin(kv, layer, slot) + kv->head_dim;
}

/* Writes one token's K and V at offset `off` of a page and widens the page's
 * key bounding box; off == 0 starts a fresh box. */
void pt_kv_append(pt_kv_pool *kv, uint32_t layer, uint32_t slot, uint32_t off, const float *k,
                  const float *v);

#endif
