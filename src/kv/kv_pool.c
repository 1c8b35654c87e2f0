#include "kv/kv_pool.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

uint64_t pt_kv_page_bytes(uint32_t n_layers, uint32_t head_dim, uint32_t page_size, pt_dtype dtype) {
    uint64_t elem = dtype == PT_DTYPE_F32 ? 4 : 2;
    return (uint64_t)n_layers * ((uint64_t)2 * page_size * head_dim * elem + 2 * head_dim * sizeof(float));
}

int pt_kv_pool_init_accounting(pt_kv_pool *kv, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                               uint32_t n_slots, pt_dtype dtype, pt_err *err) {
    memset(kv, 0, sizeof(*kv));
    if (dtype != PT_DTYPE_F32 && dtype != PT_DTYPE_F16 && dtype != PT_DTYPE_BF16)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "KV dtype %s is not supported (f32, f16 or bf16)",
                          pt_dtype_name(dtype));
    kv->n_layers = n_layers;
    kv->head_dim = head_dim;
    kv->page_size = page_size;
    kv->n_slots = kv->n_enabled = n_slots;
    kv->dtype = dtype;
    kv->elem = dtype == PT_DTYPE_F32 ? 4 : 2;
    kv->page_bytes = pt_kv_page_bytes(n_layers, head_dim, page_size, dtype);
    kv->free_slots = malloc(((size_t)n_slots + 1) * sizeof(uint32_t));
    kv->retired = malloc(((size_t)n_slots + 1) * sizeof(uint32_t));
    kv->refs = calloc((size_t)n_slots + 1, sizeof(uint32_t));
    if (!kv->free_slots || !kv->retired || !kv->refs || pthread_mutex_init(&kv->mu, NULL) != 0) {
        free(kv->free_slots);
        free(kv->retired);
        free(kv->refs);
        memset(kv, 0, sizeof(*kv));
        return pt_err_set(err, PT_ERR_NOMEM, "cannot allocate a KV pool of %u pages", n_slots);
    }
    /* Stack with slot 0 on top, so that allocation order is 0, 1, 2, ... */
    for (uint32_t i = 0; i < n_slots; i++) kv->free_slots[i] = n_slots - 1 - i;
    kv->n_free = n_slots;
    return PT_OK;
}

/* Anonymous memory committed only as it is written, and not charged to the
 * system's commit limit: capacity the device budget may never pay for. */
static void *map_lazy(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int pt_kv_pool_init(pt_kv_pool *kv, pt_device *dev, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                    uint32_t n_enabled, uint32_t n_slots, pt_dtype dtype, pt_err *err) {
    uint64_t n_data, n_mm;
    if (n_enabled > n_slots || !pt_mul_size((uint64_t)n_layers * n_slots, (uint64_t)2 * page_size * head_dim, &n_data) ||
        !pt_mul_size((uint64_t)n_layers * n_slots, (uint64_t)2 * head_dim, &n_mm) || n_data > SIZE_MAX / 4)
        return pt_err_set(err, PT_ERR_INVALID, "KV pool of %u pages is too large", n_slots);
    int rc = pt_kv_pool_init_accounting(kv, n_layers, head_dim, page_size, n_slots, dtype, err);
    if (rc) return rc;
    kv->data_bytes = (n_data ? n_data : 1) * kv->elem;
    kv->minmax_bytes = (n_mm ? n_mm : 1) * sizeof(float);
    if (!dev) {
        kv->data = calloc(1, kv->data_bytes);
        kv->minmax = calloc(1, kv->minmax_bytes);
        if (!kv->data || !kv->minmax) {
            pt_kv_pool_free(kv);
            return pt_err_set(err, PT_ERR_NOMEM, "cannot allocate a KV pool of %u pages", n_slots);
        }
        return PT_OK;
    }
    kv->dev = dev; /* from here on the memory is mapped, and n_enabled pages charged */
    kv->data = map_lazy(kv->data_bytes);
    kv->minmax = map_lazy(kv->minmax_bytes);
    if (!kv->data || !kv->minmax) {
        pt_kv_pool_free(kv);
        return pt_err_set(err, PT_ERR_NOMEM, "cannot map a KV pool of %u pages on %s", n_slots, pt_device_name(dev));
    }
    /* Every slot starts retired; the first n_enabled are charged and freed. */
    kv->n_free = kv->n_enabled = 0;
    for (uint32_t i = 0; i < n_slots; i++) kv->retired[i] = n_slots - 1 - i;
    kv->n_retired = n_slots;
    if ((rc = pt_device_reserve(dev, PT_MEM_KV, (uint64_t)n_enabled * kv->page_bytes, "KV pages", err))) {
        pt_kv_pool_free(kv);
        return rc;
    }
    kv->n_enabled = n_enabled;
    for (uint32_t i = 0; i < n_enabled; i++) kv->free_slots[kv->n_free++] = kv->retired[--kv->n_retired];
    /* Slot 0 on top of the free stack, as on the heap. */
    for (uint32_t i = 0; i < kv->n_free / 2; i++) {
        uint32_t t = kv->free_slots[i];
        kv->free_slots[i] = kv->free_slots[kv->n_free - 1 - i];
        kv->free_slots[kv->n_free - 1 - i] = t;
    }
    return PT_OK;
}

void pt_kv_pool_free(pt_kv_pool *kv) {
    if (!kv->free_slots) return; /* never initialized, or freed */
    if (kv->release_data) {
        kv->release_data(kv);
    } else if (kv->dev) {
        pt_device_unreserve(kv->dev, PT_MEM_KV, (uint64_t)kv->n_enabled * kv->page_bytes);
        if (kv->data) munmap(kv->data, kv->data_bytes);
        if (kv->minmax) munmap(kv->minmax, kv->minmax_bytes);
    } else {
        free(kv->data);
        free(kv->minmax);
    }
    pthread_mutex_destroy(&kv->mu);
    free(kv->free_slots);
    free(kv->retired);
    free(kv->refs);
    memset(kv, 0, sizeof(*kv));
}

int64_t pt_kv_page_alloc(pt_kv_pool *kv) {
    pthread_mutex_lock(&kv->mu);
    int64_t slot = -1;
    if (kv->n_free > 0) {
        slot = kv->free_slots[--kv->n_free];
        kv->refs[slot] = 1;
    }
    pthread_mutex_unlock(&kv->mu);
    return slot;
}

void pt_kv_page_ref(pt_kv_pool *kv, uint32_t slot) {
    pthread_mutex_lock(&kv->mu);
    kv->refs[slot]++;
    pthread_mutex_unlock(&kv->mu);
}

void pt_kv_page_release(pt_kv_pool *kv, uint32_t slot) {
    pthread_mutex_lock(&kv->mu);
    if (kv->refs[slot] > 0 && --kv->refs[slot] == 0) kv->free_slots[kv->n_free++] = slot;
    pthread_mutex_unlock(&kv->mu);
}

uint32_t pt_kv_pool_free_pages(pt_kv_pool *kv) {
    pthread_mutex_lock(&kv->mu);
    uint32_t n = kv->n_free;
    pthread_mutex_unlock(&kv->mu);
    return n;
}

uint32_t pt_kv_pool_enabled_pages(pt_kv_pool *kv) {
    pthread_mutex_lock(&kv->mu);
    uint32_t n = kv->n_enabled;
    pthread_mutex_unlock(&kv->mu);
    return n;
}

uint32_t pt_kv_pool_grow(pt_kv_pool *kv, uint32_t n) {
    if (!kv->dev) return 0;
    pthread_mutex_lock(&kv->mu);
    uint64_t fit = pt_device_available(kv->dev) / kv->page_bytes;
    if (n > kv->n_retired) n = kv->n_retired;
    if (n > fit) n = (uint32_t)fit;
    if (n && pt_device_reserve(kv->dev, PT_MEM_KV, (uint64_t)n * kv->page_bytes, "KV pages", NULL) != PT_OK) n = 0;
    /* Under the free pages already there: those were written before, and
     * handing them out first keeps the memory actually touched small. */
    memmove(kv->free_slots + n, kv->free_slots, (size_t)kv->n_free * sizeof(uint32_t));
    for (uint32_t i = 0; i < n; i++) kv->free_slots[n - 1 - i] = kv->retired[--kv->n_retired];
    kv->n_free += n;
    kv->n_enabled += n;
    pthread_mutex_unlock(&kv->mu);
    return n;
}

bool pt_kv_pool_shrink(pt_kv_pool *kv, uint32_t n) {
    if (!kv->dev) return n == 0;
    pthread_mutex_lock(&kv->mu);
    bool ok = n <= kv->n_free;
    if (ok) {
        size_t blk = pt_kv_slot_stride(kv) * kv->elem;
        long pg = sysconf(_SC_PAGESIZE);
        /* From the bottom of the free stack: the pages freed longest ago
         * (or never written). The top holds the ones just written, which
         * the next allocations reuse without touching new memory. */
        for (uint32_t i = 0; i < n; i++) {
            uint32_t slot = kv->free_slots[i];
            kv->retired[kv->n_retired++] = slot;
            /* Give the written memory back when a slot's block is whole OS pages. */
            if (pg > 0 && blk % (size_t)pg == 0)
                for (uint32_t l = 0; l < kv->n_layers; l++) madvise(pt_kv_k(kv, l, slot), blk, MADV_DONTNEED);
        }
        kv->n_free -= n;
        memmove(kv->free_slots, kv->free_slots + n, (size_t)kv->n_free * sizeof(uint32_t));
        kv->n_enabled -= n;
        pt_device_unreserve(kv->dev, PT_MEM_KV, (uint64_t)n * kv->page_bytes);
    }
    pthread_mutex_unlock(&kv->mu);
    return ok;
}

void pt_kv_append(pt_kv_pool *kv, uint32_t layer, uint32_t slot, uint32_t off, const float *k,
                  const float *v) {
    size_t hd = kv->head_dim;
    float kr[hd]; /* the keys as stored: the bounding box must hold what attention will read */
    if (kv->dtype == PT_DTYPE_F16) {
        pt_f16 *kd = (pt_f16 *)pt_kv_k(kv, layer, slot) + off * hd, *vd = (pt_f16 *)pt_kv_v(kv, layer, slot) + off * hd;
        for (size_t i = 0; i < hd; i++) {
            kd[i] = pt_f32_to_f16(k[i]);
            vd[i] = pt_f32_to_f16(v[i]);
            kr[i] = pt_f16_to_f32(kd[i]);
        }
    } else if (kv->dtype == PT_DTYPE_BF16) {
        pt_bf16 *kd = (pt_bf16 *)pt_kv_k(kv, layer, slot) + off * hd, *vd = (pt_bf16 *)pt_kv_v(kv, layer, slot) + off * hd;
        for (size_t i = 0; i < hd; i++) {
            kd[i] = pt_f32_to_bf16(k[i]);
            vd[i] = pt_f32_to_bf16(v[i]);
            kr[i] = pt_bf16_to_f32(kd[i]);
        }
    } else {
        memcpy((float *)pt_kv_k(kv, layer, slot) + off * hd, k, hd * sizeof(float));
        memcpy((float *)pt_kv_v(kv, layer, slot) + off * hd, v, hd * sizeof(float));
        memcpy(kr, k, hd * sizeof(float));
    }
    float *mn = pt_kv_kmin(kv, layer, slot), *mx = pt_kv_kmax(kv, layer, slot);
    if (off == 0) {
        memcpy(mn, kr, hd * sizeof(float));
        memcpy(mx, kr, hd * sizeof(float));
        return;
    }
    for (size_t i = 0; i < hd; i++) {
        mn[i] = kr[i] < mn[i] ? kr[i] : mn[i];
        mx[i] = kr[i] > mx[i] ? kr[i] : mx[i];
    }
}
