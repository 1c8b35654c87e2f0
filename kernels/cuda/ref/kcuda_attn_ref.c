/* Plain C references for the paged attention kernels. See kcuda_attn_ref.h. */
#include "ref/kcuda_attn_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kcuda_ref_kv_append(const kcuda_ref_kv *kv, const kcuda_ref_qkv *src,
                         const int32_t *block_tables, size_t bt_stride, const kcuda_ref_run *runs,
                         size_t n_runs, size_t n_kv_heads)
{
    const size_t P = kv->page_size, hd = kv->head_dim;
    for (size_t r = 0; r < n_runs; r++) {
        const kcuda_ref_run run = runs[r];
        for (size_t h = 0; h < n_kv_heads; h++) {
            const int32_t *bt_row = block_tables + ((size_t)run.seq * n_kv_heads + h) * bt_stride;
            for (int32_t i = 0; i < run.n_tokens; i++) {
                const size_t pos = (size_t)run.pos0 + (size_t)i, off = pos % P;
                const size_t slot = (size_t)bt_row[pos / P];
                uint16_t *kd = kv->data + (slot * 2 * P + off) * hd, *vd = kd + P * hd;
                const size_t row = (size_t)run.row0 + (size_t)i;
                const float *ks = src->k + row * src->ld + h * src->group_stride;
                const float *vs = src->v + row * src->ld + h * src->group_stride;
                float *mn = kv->minmax + slot * 2 * hd, *mx = mn + hd;
                for (size_t d = 0; d < hd; d++) {
                    kd[d] = kcuda_ref_f32_to_f16(ks[d]);
                    vd[d] = kcuda_ref_f32_to_f16(vs[d]);
                    const float kr = kcuda_ref_f16_to_f32(kd[d]);
                    if (off == 0) {
                        mn[d] = mx[d] = kr;
                    } else {
                        mn[d] = kr < mn[d] ? kr : mn[d];
                        mx[d] = kr > mx[d] ? kr : mx[d];
                    }
                }
            }
        }
    }
}

/* One query head over the given pages of one block-table row, positions
 * below n_ctx: softmax(scale * q.k) . v, in double. pages == NULL means
 * pages 0 .. n_list - 1. scores needs room for n_list * page_size doubles. */
static void attend(float *out, const float *q, const kcuda_ref_kv *kv, const int32_t *bt_row,
                   const int32_t *pages, size_t n_list, size_t n_ctx, float scale, double *scores)
{
    const size_t P = kv->page_size, hd = kv->head_dim;
    size_t n = 0;
    double m = -INFINITY;
    for (size_t i = 0; i < n_list; i++) {
        const size_t page = pages ? (size_t)pages[i] : i, slot = (size_t)bt_row[page];
        for (size_t pos = page * P; pos < (page + 1) * P && pos < n_ctx; pos++) {
            const uint16_t *k = kv->data + (slot * 2 * P + pos % P) * hd;
            double dot = 0.0;
            for (size_t d = 0; d < hd; d++)
                dot += (double)q[d] * kcuda_ref_f16_to_f32(k[d]);
            scores[n] = (double)scale * dot;
            if (scores[n] > m)
                m = scores[n];
            n++;
        }
    }
    double *acc = calloc(hd, sizeof *acc);
    double sum = 0.0;
    n = 0;
    for (size_t i = 0; i < n_list; i++) {
        const size_t page = pages ? (size_t)pages[i] : i, slot = (size_t)bt_row[page];
        for (size_t pos = page * P; pos < (page + 1) * P && pos < n_ctx; pos++) {
            const uint16_t *v = kv->data + (slot * 2 * P + P + pos % P) * hd;
            const double w = exp(scores[n++] - m);
            sum += w;
            for (size_t d = 0; d < hd; d++)
                acc[d] += w * kcuda_ref_f16_to_f32(v[d]);
        }
    }
    for (size_t d = 0; d < hd; d++)
        out[d] = sum > 0.0 ? (float)(acc[d] / sum) : 0.0f;
    free(acc);
}

void kcuda_ref_attn_decode(float *out, size_t ld_out, const kcuda_ref_qkv *in,
                           const kcuda_ref_kv *kv, const int32_t *block_tables, size_t bt_stride,
                           const kcuda_ref_run *runs, size_t n_runs, size_t n_kv_heads,
                           size_t q_per_kv, float scale, const int32_t *sel, const int32_t *n_sel,
                           size_t sel_stride)
{
    const size_t P = kv->page_size, hd = kv->head_dim;
    for (size_t r = 0; r < n_runs; r++) {
        const kcuda_ref_run run = runs[r];
        const size_t n_ctx = (size_t)run.pos0 + 1, n_pages = (n_ctx + P - 1) / P;
        double *scores = malloc(n_pages * P * sizeof *scores);
        for (size_t h = 0; h < n_kv_heads; h++) {
            const int32_t *bt_row = block_tables + ((size_t)run.seq * n_kv_heads + h) * bt_stride;
            const int32_t *list = sel ? sel + (r * n_kv_heads + h) * sel_stride : NULL;
            const size_t n_list = sel ? (size_t)n_sel[r * n_kv_heads + h] : n_pages;
            for (size_t j = 0; j < q_per_kv; j++) {
                const float *q = in->q + (size_t)run.row0 * in->ld + h * in->group_stride + j * hd;
                float *o = out + (size_t)run.row0 * ld_out + (h * q_per_kv + j) * hd;
                attend(o, q, kv, bt_row, list, n_list, n_ctx, scale, scores);
            }
        }
        free(scores);
    }
}

void kcuda_ref_attn_prefill(float *out, size_t ld_out, const kcuda_ref_qkv *in,
                            const kcuda_ref_kv *kv, const int32_t *block_tables, size_t bt_stride,
                            const kcuda_ref_run *runs, size_t n_runs, size_t n_kv_heads,
                            size_t q_per_kv, float scale)
{
    const size_t P = kv->page_size, hd = kv->head_dim;
    for (size_t r = 0; r < n_runs; r++) {
        const kcuda_ref_run run = runs[r];
        const size_t max_pages = ((size_t)run.pos0 + (size_t)run.n_tokens + P - 1) / P;
        double *scores = malloc((max_pages ? max_pages : 1) * P * sizeof *scores);
        for (int32_t i = 0; i < run.n_tokens; i++) {
            const size_t n_ctx = (size_t)run.pos0 + (size_t)i + 1, row = (size_t)run.row0 + (size_t)i;
            for (size_t h = 0; h < n_kv_heads; h++) {
                const int32_t *bt_row = block_tables + ((size_t)run.seq * n_kv_heads + h) * bt_stride;
                for (size_t j = 0; j < q_per_kv; j++) {
                    const float *q = in->q + row * in->ld + h * in->group_stride + j * hd;
                    float *o = out + row * ld_out + (h * q_per_kv + j) * hd;
                    attend(o, q, kv, bt_row, NULL, (n_ctx + P - 1) / P, n_ctx, scale, scores);
                }
            }
        }
        free(scores);
    }
}
