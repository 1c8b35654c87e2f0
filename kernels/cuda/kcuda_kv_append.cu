/* KV append: a step's K and V rows into their head pages (f32 -> f16, round
 * to nearest even) and each touched page's per-channel key box.
 *
 * One block per (run, KV head). Its work items are (page, chunk) pairs over
 * the pages the run touches, chunk = 8 channels; a thread owns an item and
 * walks that page's tokens of the run in order, storing K and V 16 bytes at
 * a time and widening the box in registers. The box therefore sees the
 * tokens in exactly the order pt_kv_append (src/kv/kv_pool.c) would, which
 * makes it bit-identical to it, ties between -0 and +0 included. A page the
 * run enters at offset 0 starts a fresh box; the one page it may enter in
 * the middle (the first) starts from the box already in memory. Different
 * items touch disjoint bytes, so there is no synchronization at all. */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"
#include "kcuda_attn_common.cuh"

#define APPEND_THREADS 256

__global__ void __launch_bounds__(APPEND_THREADS)
    kcuda_kv_append_kernel(uint16_t *__restrict__ data, float *__restrict__ minmax,
                           const float *__restrict__ k, const float *__restrict__ v, size_t ld,
                           size_t gs, const int32_t *__restrict__ bt, size_t bt_stride,
                           const kcuda_run *__restrict__ runs, int n_kv, int P, int hd)
{
    const int r = blockIdx.x / n_kv, h = blockIdx.x % n_kv;
    const kcuda_run run = runs[r];
    if (run.n_tokens <= 0)
        return;
    const int CH = hd / 8;
    const int j0 = run.pos0 / P, j1 = (run.pos0 + run.n_tokens - 1) / P;
    const int n_items = (j1 - j0 + 1) * CH;
    const int32_t *bt_row = bt + ((size_t)run.seq * n_kv + h) * bt_stride;
    const size_t page_elems = (size_t)P * hd; /* K rows of a slot, then V rows */

    for (int item = threadIdx.x; item < n_items; item += blockDim.x) {
        const int j = j0 + item / CH, c = item % CH;
        const int p_beg = max(j * P, run.pos0), p_end = min((j + 1) * P, run.pos0 + run.n_tokens);
        const size_t slot = (size_t)bt_row[j];
        uint16_t *kpage = data + slot * 2 * page_elems + c * 8;
        float *mn_out = minmax + slot * 2 * hd + c * 8, *mx_out = mn_out + hd;

        float mn[8], mx[8];
        const bool mid_page = p_beg % P != 0;
        if (mid_page) { /* only the run's first page: widen the box of earlier steps */
            const float4 *m4 = reinterpret_cast<const float4 *>(mn_out);
            const float4 *x4 = reinterpret_cast<const float4 *>(mx_out);
            float4 a = m4[0], b = m4[1], e = x4[0], f = x4[1];
            mn[0] = a.x, mn[1] = a.y, mn[2] = a.z, mn[3] = a.w;
            mn[4] = b.x, mn[5] = b.y, mn[6] = b.z, mn[7] = b.w;
            mx[0] = e.x, mx[1] = e.y, mx[2] = e.z, mx[3] = e.w;
            mx[4] = f.x, mx[5] = f.y, mx[6] = f.z, mx[7] = f.w;
        }
        for (int p = p_beg; p < p_end; p++) {
            const size_t row = (size_t)run.row0 + (size_t)(p - run.pos0);
            const float *ks = k + row * ld + (size_t)h * gs + c * 8;
            const float *vs = v + row * ld + (size_t)h * gs + c * 8;
            float kf[8], vf[8];
#pragma unroll
            for (int e = 0; e < 8; e++) {
                kf[e] = ks[e];
                vf[e] = vs[e];
            }
            const uint4 kh = kcuda_f32_to_h8(kf), vh = kcuda_f32_to_h8(vf);
            const size_t off = (size_t)(p % P) * hd;
            *reinterpret_cast<uint4 *>(kpage + off) = kh;
            *reinterpret_cast<uint4 *>(kpage + page_elems + off) = vh;
            float kr[8]; /* the keys as stored */
            kcuda_h8_to_f32(kh, kr);
            if (p == p_beg && !mid_page) {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    mn[e] = mx[e] = kr[e];
            } else {
                /* The comparisons of pt_kv_append, in its order. */
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    mn[e] = kr[e] < mn[e] ? kr[e] : mn[e];
                    mx[e] = kr[e] > mx[e] ? kr[e] : mx[e];
                }
            }
        }
        float4 *m4 = reinterpret_cast<float4 *>(mn_out), *x4 = reinterpret_cast<float4 *>(mx_out);
        m4[0] = make_float4(mn[0], mn[1], mn[2], mn[3]);
        m4[1] = make_float4(mn[4], mn[5], mn[6], mn[7]);
        x4[0] = make_float4(mx[0], mx[1], mx[2], mx[3]);
        x4[1] = make_float4(mx[4], mx[5], mx[6], mx[7]);
    }
}

extern "C" cudaError_t kcuda_kv_append(const kcuda_kv_layer *kv, const kcuda_qkv *src,
                                       const kcuda_pages *bt, const kcuda_run *runs,
                                       size_t n_runs, size_t n_kv_heads, cudaStream_t stream)
{
    if (n_runs == 0)
        return cudaSuccess;
    if (!kv || !src || !bt || !runs || !src->k || !src->v || !kv->data || !kv->minmax ||
        !bt->block_tables)
        return cudaErrorInvalidValue;
    const size_t hd = kv->head_dim, P = kv->page_size;
    if (hd == 0 || hd % 8 != 0 || hd > KCUDA_ATTN_MAX_HD || P == 0 || P > KCUDA_ATTN_MAX_PAGE ||
        kv->n_slots == 0 || n_kv_heads == 0 || bt->bt_stride == 0 ||
        bt->bt_stride > (size_t)INT32_MAX / P)
        return cudaErrorInvalidValue;
    /* 16-byte stores of K/V pieces and of the boxes. */
    if (((uintptr_t)kv->data & 15) != 0 || ((uintptr_t)kv->minmax & 15) != 0)
        return cudaErrorInvalidValue;
    if (n_kv_heads > INT32_MAX / n_runs)
        return cudaErrorInvalidValue;

    const unsigned blocks = (unsigned)(n_runs * n_kv_heads);
    kcuda_kv_append_kernel<<<blocks, APPEND_THREADS, 0, stream>>>(
        kv->data, kv->minmax, src->k, src->v, src->ld, src->group_stride, bt->block_tables,
        bt->bt_stride, runs, (int)n_kv_heads, (int)P, (int)hd);
    CUDA_CHECK_LAUNCH("kcuda_kv_append_kernel");
    return cudaSuccess;
}
