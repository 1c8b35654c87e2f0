/* Plain C references for the paged attention kernels of kcuda_attn.h: KV
 * append with the key bounding box, decode attention (dense or over
 * selected pages) and prefill attention. Host memory, same layouts as the
 * device (see kcuda_attn.h):
 *   data    (slot, {K, V}, page_size, head_dim)  f16 bits
 *   minmax  (slot, {min, max}, head_dim)         f32
 *   block_tables[(seq * n_kv_heads + h) * bt_stride + j] = slot of page j
 * Written for clarity: one query head at a time, scores and softmax in
 * double. Independent of the kernels (the conversions of kcuda_ref.h, no
 * CUDA headers). */
#ifndef PROTEUS_KCUDA_ATTN_REF_H
#define PROTEUS_KCUDA_ATTN_REF_H

#include <stddef.h>
#include <stdint.h>

#include "ref/kcuda_ref.h"

/* Same fields, in the same order, as kcuda_run. */
typedef struct {
    int32_t row0, n_tokens, pos0, seq;
} kcuda_ref_run;

/* One layer of a KV pool on the host. */
typedef struct {
    uint16_t *data;
    float *minmax;
    uint32_t page_size, head_dim;
} kcuda_ref_kv;

/* Where a step's rows are: query head j of group g of row t at
 * q + t * ld + g * group_stride + j * head_dim; key (value) of KV head g at
 * k (v) + t * ld + g * group_stride. */
typedef struct {
    const float *q, *k, *v;
    size_t ld, group_stride;
} kcuda_ref_qkv;

/* pt_kv_append for each token of each run in order: K and V rounded to f16;
 * a token at page offset 0 starts the page's box, later ones widen it with
 * the keys as stored. */
void kcuda_ref_kv_append(const kcuda_ref_kv *kv, const kcuda_ref_qkv *src,
                         const int32_t *block_tables, size_t bt_stride, const kcuda_ref_run *runs,
                         size_t n_runs, size_t n_kv_heads);

/* Decode: run r (one token, row runs[r].row0) attends to positions
 * [0, pos0]; with sel != NULL only to the pages sel[(r * n_kv_heads + h) *
 * sel_stride + i], i < n_sel[r * n_kv_heads + h] (all their positions below
 * pos0 + 1). out rows are ld_out floats apart, head g * q_per_kv + j at
 * column (g * q_per_kv + j) * head_dim. A head with nothing to attend gets
 * zeros. */
void kcuda_ref_attn_decode(float *out, size_t ld_out, const kcuda_ref_qkv *in,
                           const kcuda_ref_kv *kv, const int32_t *block_tables, size_t bt_stride,
                           const kcuda_ref_run *runs, size_t n_runs, size_t n_kv_heads,
                           size_t q_per_kv, float scale, const int32_t *sel, const int32_t *n_sel,
                           size_t sel_stride);

/* Prefill: token i of run r (row row0 + i, position pos0 + i) attends to
 * positions [0, pos0 + i]. */
void kcuda_ref_attn_prefill(float *out, size_t ld_out, const kcuda_ref_qkv *in,
                            const kcuda_ref_kv *kv, const int32_t *block_tables, size_t bt_stride,
                            const kcuda_ref_run *runs, size_t n_runs, size_t n_kv_heads,
                            size_t q_per_kv, float scale);

#endif
