#include "kv/kv_pool.h"

#include <stdlib.h>
#include <string.h>

uint64_t pt_kv_page_bytes(uint32_t n_layers, uint32_t head_dim, uint32_t page_size, pt_dtype dtype) {
    uint64_t elem = dtype == PT_DTYPE_F16 ? 2 : 4;
    return (uint64_t)n_layers * ((uint64_t)2 * page_size * head_dim * elem + 2 * head_dim * sizeof(float));
}

int pt_kv_pool_init_accounting(pt_kv_pool *kv, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                               uint32_t n_slots, pt_dtype dtype, pt_err *err) {
    memset(kv, 0, sizeof(*kv));
    if (dtype != PT_DTYPE_F32 && dtype != PT_DTYPE_F16)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "KV dtype %s is not supported (f32 or f16)", pt_dtype_name(dtype));
    kv->n_layers = n_layers;
    kv->head_dim = head_dim;
    kv->page_size = page_size;
    kv->n_slots = n_slots;
    kv->dtype = dtype;
    kv->elem = dtype == PT_DTYPE_F16 ? 2 : 4;
    kv->free_slots = malloc(((size_t)n_slots + 1) * sizeof(uint32_t));
    if (!kv->free_slots) return pt_err_set(err, PT_ERR_NOMEM, "cannot allocate a KV pool of %u pages", n_slots);
    /* Stack with slot 0 on top, so that allocation order is 0, 1, 2, ... */
    for (uint32_t i = 0; i < n_slots; i++) kv->free_slots[i] = n_slots - 1 - i;
    kv->n_free = n_slots;
    return PT_OK;
}

int pt_kv_pool_init(pt_kv_pool *kv, pt_device *dev, uint32_t n_layers, uint32_t head_dim, uint32_t page_size,
                    uint32_t n_slots, pt_dtype dtype, pt_err *err) {
    uint64_t n_data, n_mm;
    if (!pt_mul_size((uint64_t)n_layers * n_slots, (uint64_t)2 * page_size * head_dim, &n_data) ||
        !pt_mul_size((uint64_t)n_layers * n_slots, (uint64_t)2 * head_dim, &n_mm) ||
        n_data > SIZE_MAX / 4)
        return pt_err_set(err, PT_ERR_INVALID, "KV pool of %u pages is too large", n_slots);
    int rc = pt_kv_pool_init_accounting(kv, n_layers, head_dim, page_size, n_slots, dtype, err);
    if (rc) return rc;
    kv->data_bytes = (n_data ? n_data : 1) * kv->elem;
    kv->minmax_bytes = (n_mm ? n_mm : 1) * sizeof(float);
    if (dev) {
        /* Large device allocations are mapped zero pages: memory is committed
         * only as pages are first written. */
        kv->dev = dev;
        if ((rc = pt_device_alloc(dev, PT_MEM_KV, kv->data_bytes, &kv->data, "KV pages", err)) ||
            (rc = pt_device_alloc(dev, PT_MEM_KV, kv->minmax_bytes, (void **)&kv->minmax, "KV key bounds", err))) {
            pt_kv_pool_free(kv);
            return rc;
        }
        return PT_OK;
    }
    kv->data = calloc(1, kv->data_bytes);
    kv->minmax = calloc(1, kv->minmax_bytes);
    if (!kv->data || !kv->minmax) {
        pt_kv_pool_free(kv);
        return pt_err_set(err, PT_ERR_NOMEM, "cannot allocate a KV pool of %u pages", n_slots);
    }
    return PT_OK;
}

void pt_kv_pool_free(pt_kv_pool *kv) {
    if (kv->dev) {
        pt_device_release(kv->dev, PT_MEM_KV, kv->data, kv->data_bytes);
        pt_device_release(kv->dev, PT_MEM_KV, kv->minmax, kv->minmax_bytes);
    } else {
        free(kv->data);
        free(kv->minmax);
    }
    free(kv->free_slots);
    memset(kv, 0, sizeof(*kv));
}

int64_t pt_kv_page_alloc(pt_kv_pool *kv) {
    if (kv->n_free == 0) return -1;
    return kv->free_slots[--kv->n_free];
}

void pt_kv_page_release(pt_kv_pool *kv, uint32_t slot) { kv->free_slots[kv->n_free++] = slot; }

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
