/* Query-aware page selection on the GPU (DESIGN.md section 5): the page score
 * bound and the budgeted top-k of kcuda_attn.h, equal to the CPU definitions
 * of kernels/cpu/page_select.c (kcpu_page_score, kcpu_page_select).
 *
 * P = page_size, hd = head_dim, n_q = q_per_kv query heads per KV head. A
 * decode run r has context n_ctx = pos0 + 1 and n_pages = ceil(n_ctx / P);
 * "row" (r, h) = r * n_kv_heads + h indexes scores, sel and n_sel.
 *
 * Scores: eight lanes per page. Lane l of a page accumulates the terms
 * i = l, l + 8, ... in order, and the lanes are combined by the tree of
 * kcpu_dot_f32, every product and sum rounded on its own (no FMA): the
 * device gives the bits of kcpu_page_score, so CPU and GPU select the same
 * pages from the same cache.
 *
 * Top-k: one block per row. The k best middle pages under "higher score,
 * then lower index" are those whose key (the score's bits mapped to an
 * unsigned integer in the same order) is above the k-th largest key T, plus
 * the lowest-indexed pages whose key equals T. T is found by an MSB-first
 * radix select (four 8-bit digits, a histogram of the candidates per digit);
 * one block-wide prefix scan over the pages in index order then gives every
 * selected page its output position. Integer counts only, so the result does
 * not depend on thread timing. */
#include "kcuda_attn.h"
#include "check.h"
#include "kcuda_common.cuh"

#include <math.h>

#define SCORE_THREADS 256
#define SCORE_LANES 8 /* lanes per page: the 8 accumulators of kcpu_dot_f32 */
#define SCORE_PAGES (SCORE_THREADS / SCORE_LANES)
#define TOPK_THREADS 512
#define FULL_MASK 0xffffffffu

/* ---- page scores ----------------------------------------------------------- */

/* grid (n_runs * n_kv_heads, ceil(max_pages / SCORE_PAGES)); dynamic shared
 * memory holds the group's n_q query heads. */
__global__ void __launch_bounds__(SCORE_THREADS)
kcuda_page_score_kernel(float *scores, size_t score_stride, const float *q, size_t ld_q, size_t group_stride,
                        const float *minmax, uint32_t n_slots, const int32_t *block_tables, size_t bt_stride,
                        const kcuda_run *runs, int n_kv_heads, int n_q, int hd, uint32_t page_size,
                        uint32_t max_pages)
{
    extern __shared__ float q_s[]; /* (n_q, hd) */
    const int rh = blockIdx.x, r = rh / n_kv_heads, h = rh % n_kv_heads;
    const kcuda_run run = runs[r];
    const int64_t n_ctx = (int64_t)run.pos0 + 1;
    if (n_ctx <= 0)
        return;
    int64_t n_pages = (n_ctx + page_size - 1) / page_size;
    if (n_pages > (int64_t)max_pages) /* beyond the host's bound: never write past score_stride */
        n_pages = max_pages;
    const int64_t j0 = (int64_t)blockIdx.y * SCORE_PAGES;
    if (j0 >= n_pages) /* uniform over the block, before any barrier */
        return;

    const float *qg = q + (size_t)run.row0 * ld_q + (size_t)h * group_stride;
    for (int i = threadIdx.x; i < n_q * hd; i += blockDim.x)
        q_s[i] = qg[i];
    __syncthreads();

    /* Every lane runs the same loops and shuffles; lanes of a page past the
     * end (or with a bad slot) only skip their loads. */
    const int l = threadIdx.x % SCORE_LANES;
    const int64_t j = j0 + threadIdx.x / SCORE_LANES;
    bool valid = j < n_pages;
    const float *kmin = NULL, *kmax = NULL;
    if (valid) {
        const int32_t slot = block_tables[((size_t)run.seq * n_kv_heads + h) * bt_stride + (size_t)j];
        valid = slot >= 0 && (uint32_t)slot < n_slots;
        if (valid) {
            kmin = minmax + (size_t)slot * 2 * hd;
            kmax = kmin + hd;
        }
    }
    float best = -INFINITY;
    for (int hq = 0; hq < n_q; hq++) {
        const float *qh = q_s + hq * hd;
        float acc = 0.0f;
        for (int i = l; i < hd; i += SCORE_LANES) {
            if (valid) {
                const float a = __fmul_rn(qh[i], kmin[i]), b = __fmul_rn(qh[i], kmax[i]);
                acc = __fadd_rn(acc, a > b ? a : b);
            }
        }
        /* kcpu_dot_f32's tree within each group of 8 lanes: lane l < 4 gets
         * acc[l] + acc[l + 4], then lanes 0, 1 get (s0 + s2), (s1 + s3), then
         * lane 0 their sum. */
        acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 4, SCORE_LANES));
        acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 2, SCORE_LANES));
        acc = __fadd_rn(acc, __shfl_down_sync(FULL_MASK, acc, 1, SCORE_LANES));
        best = acc > best ? acc : best;
    }
    if (l == 0 && j < n_pages)
        scores[(size_t)rh * score_stride + (size_t)j] = valid ? best : -INFINITY;
}

extern "C" cudaError_t kcuda_page_score(float *scores, size_t score_stride, const kcuda_attn_args *a,
                                        cudaStream_t stream)
{
    if (!a)
        return cudaErrorInvalidValue;
    if (a->n_runs == 0 || a->n_kv_heads == 0)
        return cudaSuccess;
    if (!scores || !a->in.q || !a->kv.minmax || !a->bt.block_tables || !a->runs)
        return cudaErrorInvalidValue;
    const uint32_t P = a->kv.page_size;
    if (P == 0 || a->head_dim == 0 || a->q_per_kv == 0 || a->kv.head_dim != a->head_dim || a->max_ctx == 0)
        return cudaErrorInvalidValue;
    const uint64_t max_pages = ((uint64_t)a->max_ctx + P - 1) / P;
    const uint64_t grid_y = (max_pages + SCORE_PAGES - 1) / SCORE_PAGES;
    const size_t smem = a->q_per_kv * a->head_dim * sizeof(float);
    if (score_stride < max_pages || a->bt.bt_stride < max_pages || grid_y > 65535 ||
        a->n_kv_heads > INT32_MAX || a->n_runs > INT32_MAX / a->n_kv_heads || a->head_dim > INT32_MAX ||
        a->q_per_kv > INT32_MAX || smem > 48 * 1024)
        return cudaErrorInvalidValue;

    dim3 grid((unsigned)(a->n_runs * a->n_kv_heads), (unsigned)grid_y);
    kcuda_page_score_kernel<<<grid, SCORE_THREADS, smem, stream>>>(
        scores, score_stride, a->in.q, a->in.ld, a->in.group_stride, a->kv.minmax, a->kv.n_slots,
        a->bt.block_tables, a->bt.bt_stride, a->runs, (int)a->n_kv_heads, (int)a->q_per_kv, (int)a->head_dim,
        P, (uint32_t)max_pages);
    CUDA_CHECK_LAUNCH("kcuda_page_score_kernel");
    return cudaSuccess;
}

/* ---- top-k ------------------------------------------------------------------- */

/* Unsigned key in the order of the float: a larger float gets a larger key.
 * -0 becomes +0 first, so that the two zeros tie as they do in float
 * comparisons (and in the CPU rule). */
__device__ __forceinline__ uint32_t score_key(float f)
{
    uint32_t u = __float_as_uint(f);
    if (u == 0x80000000u)
        u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Inclusive prefix sum over the block in thread order; buf holds 32 words.
 * Every thread of the block must call it; blockDim.x is a multiple of 32. It
 * ends with a barrier, so buf may be reused by the next call at once. */
template <typename T>
__device__ __forceinline__ T block_incl_scan(T v, T *buf)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int off = 1; off < 32; off <<= 1) {
        const T n = __shfl_up_sync(FULL_MASK, v, off);
        if (lane >= off)
            v += n;
    }
    if (lane == 31)
        buf[warp] = v;
    __syncthreads();
    T base = 0;
    for (int w = 0; w < warp; w++)
        base += buf[w];
    __syncthreads();
    return v + base;
}

/* grid (n_runs * n_kv_heads). */
__global__ void __launch_bounds__(TOPK_THREADS)
kcuda_page_topk_kernel(int32_t *sel, int32_t *n_sel, size_t sel_stride, const float *scores, size_t score_stride,
                       const kcuda_run *runs, int n_kv_heads, uint32_t page_size, uint32_t budget,
                       uint32_t max_ctx)
{
    __shared__ uint32_t hist[256];
    __shared__ uint32_t scan32[32];
    __shared__ unsigned long long scan64[32];
    __shared__ uint32_t s_prefix, s_krem;

    const int rh = blockIdx.x, r = rh / n_kv_heads;
    const int tid = threadIdx.x, nt = blockDim.x;
    const kcuda_run run = runs[r];
    int32_t *out = sel + (size_t)rh * sel_stride;
    const float *sc = scores + (size_t)rh * score_stride;

    const int64_t n_ctx = (int64_t)run.pos0 + 1;
    if (n_ctx <= 0 || n_ctx > (int64_t)max_ctx) {
        /* Outside the host's bound (sel_stride was checked against it): an
         * empty list rather than a write past the row. */
        if (tid == 0)
            n_sel[rh] = 0;
        return;
    }
    const int n_pages = (int)((n_ctx + page_size - 1) / page_size);
    const int n_mid = n_pages - 2;
    int64_t k = 0;
    if (n_mid > 0 && budget >= 2 * (uint64_t)page_size)
        k = (int64_t)((budget - 2 * (uint64_t)page_size) / page_size);
    if (k > n_mid)
        k = n_mid;
    if (n_ctx <= (int64_t)budget || n_pages <= 2 || k == n_mid) {
        for (int j = tid; j < n_pages; j += nt)
            out[j] = j;
        if (tid == 0)
            n_sel[rh] = n_pages;
        return;
    }
    if (tid == 0) {
        out[0] = 0;
        out[k + 1] = n_pages - 1;
        n_sel[rh] = (int32_t)k + 2;
    }
    if (k == 0)
        return;

    /* Radix select of T, the k-th largest key among the middle pages
     * m = 1 .. n_mid. Invariant: krem >= 1 keys match `prefix` under `mask`
     * and still count, and exactly k - krem keys lie above all of them. */
    uint32_t prefix = 0, mask = 0, krem = (uint32_t)k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += nt)
            hist[i] = 0;
        __syncthreads();
        for (int m = 1 + tid; m <= n_mid; m += nt) {
            const uint32_t key = score_key(sc[m]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        /* Thread t < 256 holds digit 255 - t: the scan runs from the top
         * digit down, and the one thread where the running count reaches
         * krem owns the digit of T. */
        const uint32_t c = tid < 256 ? hist[255 - tid] : 0u;
        const uint32_t incl = block_incl_scan(c, scan32), excl = incl - c;
        if (tid < 256 && excl < krem && krem <= incl) {
            s_prefix = prefix | ((uint32_t)(255 - tid) << shift);
            s_krem = krem - excl;
        }
        __syncthreads();
        prefix = s_prefix;
        krem = s_krem;
        mask |= 255u << shift;
    }
    const uint32_t T = prefix, need_eq = krem; /* k - need_eq keys are above T */

    /* Thread t owns the contiguous middle pages [lo, hi). Page j's output
     * position is 1 + (pages above T before j) + min(pages equal to T before
     * j, need_eq), from one exclusive scan of the packed pair of counts. */
    const int seg = (n_mid + nt - 1) / nt;
    const int lo = 1 + min(tid * seg, n_mid), hi = 1 + min((tid + 1) * seg, n_mid);
    uint32_t gt = 0, eq = 0;
    for (int m = lo; m < hi; m++) {
        const uint32_t key = score_key(sc[m]);
        gt += key > T;
        eq += key == T;
    }
    const unsigned long long own = ((unsigned long long)gt << 32) | eq;
    const unsigned long long before = block_incl_scan(own, scan64) - own;
    uint32_t gt_b = (uint32_t)(before >> 32), eq_b = (uint32_t)before;
    for (int m = lo; m < hi; m++) {
        const uint32_t key = score_key(sc[m]);
        if (key > T) {
            out[1 + gt_b + min(eq_b, need_eq)] = m;
            gt_b++;
        } else if (key == T) {
            if (eq_b < need_eq)
                out[1 + gt_b + eq_b] = m;
            eq_b++;
        }
    }
}

extern "C" cudaError_t kcuda_page_topk(const kcuda_page_list *out, const float *scores, size_t score_stride,
                                       const kcuda_run *runs, size_t n_runs, size_t n_kv_heads, uint32_t page_size,
                                       uint32_t budget_tokens, uint32_t max_ctx, cudaStream_t stream)
{
    if (n_runs == 0 || n_kv_heads == 0)
        return cudaSuccess;
    if (!out || !out->sel || !out->n_sel || !scores || !runs || page_size == 0 || max_ctx == 0)
        return cudaErrorInvalidValue;
    const uint64_t max_pages = ((uint64_t)max_ctx + page_size - 1) / page_size;
    if (out->sel_stride < max_pages || score_stride < max_pages || max_pages > (1u << 30) ||
        n_kv_heads > INT32_MAX || n_runs > INT32_MAX / n_kv_heads)
        return cudaErrorInvalidValue;

    /* The list is const in kcuda_page_list because attention only reads it;
     * here it is the output. */
    kcuda_page_topk_kernel<<<(unsigned)(n_runs * n_kv_heads), TOPK_THREADS, 0, stream>>>(
        (int32_t *)out->sel, (int32_t *)out->n_sel, out->sel_stride, scores, score_stride, runs, (int)n_kv_heads,
        page_size, budget_tokens, max_ctx);
    CUDA_CHECK_LAUNCH("kcuda_page_topk_kernel");
    return cudaSuccess;
}
