/* Batched token sampling: one block per row. See kcuda_sample.h for the
 * definition, which this file computes exactly (same token as
 * kcuda_ref_sample for every input).
 *
 * V = vocabulary size, NT = threads per block, NW = warps per block.
 *
 * Per row:
 *   argmax    one strided pass, (key, ~index) packed in 64 bits and reduced
 *             by max, so the lowest index wins among equal logits;
 *   top-k     the k-th largest logit key by MSB-first radix select: three
 *             passes (11, 11 and 10 bits), each a shared-memory histogram of
 *             counts over the candidates that match the digits found so far;
 *   top-p     lambda by the same radix search on logit keys, but with bins of
 *             integer weight (mass) instead of counts; only tokens that match
 *             the current prefix pay for an exp after the first pass;
 *   draw      the block narrows [lo, hi) to the part that holds the target:
 *             each warp sums the kept weights of one of NW contiguous parts,
 *             the part where the running mass passes the target becomes the
 *             range, until at most NARROW_MIN tokens remain, which one warp
 *             walks in order with a prefix scan.
 * Weights are integers (floor(p * 2^40)), so every sum is exact and every
 * decision independent of the order of atomics and reductions. Only basic
 * float operations with explicit rounding (__fmul_rn, __fadd_rn, ...: never
 * contracted into FMA) enter a weight, which keeps them the bits of the C
 * reference. */
#include "kcuda_sample.h"
#include "check.h"
#include "kcuda_common.cuh"

#include <float.h>
#include <math.h>

#define NT 512
#define NW (NT / 32)
#define RADIX_BINS 2048 /* the widest digit, 11 bits */
#define NARROW_MIN 256
#define FULL_MASK 0xffffffffu
#define KEY_NEG_INF 0x007fffffu /* key of -inf */

typedef unsigned long long u64;

/* NaN never wins; +inf would make l - m undefined. */
__device__ __forceinline__ float clean_logit(float x)
{
    if (x != x)
        return -INFINITY;
    if (x == INFINITY)
        return FLT_MAX;
    return x;
}

/* Unsigned key in the order of the float (for non-NaN), -0 tied with +0. */
__device__ __forceinline__ uint32_t float_key(float f)
{
    uint32_t u = __float_as_uint(f);
    if (u == 0x80000000u)
        u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t key)
{
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

/* kcuda_ref_sample_exp, operation for operation. */
__device__ __forceinline__ float sample_exp(float x)
{
    const float log2e = 1.44269504088896341f, shift = 12582912.0f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float kf = __fmul_rn(x, log2e);
    kf = __fadd_rn(kf, shift);
    kf = __fsub_rn(kf, shift);
    const int k = __float2int_rz(kf);
    float r = __fsub_rn(x, __fmul_rn(kf, ln2_hi));
    r = __fsub_rn(r, __fmul_rn(kf, ln2_lo));
    const float z = __fmul_rn(r, r);
    float y = 1.9875691500e-4f;
    y = __fadd_rn(__fmul_rn(y, r), 1.3981999507e-3f);
    y = __fadd_rn(__fmul_rn(y, r), 8.3334519073e-3f);
    y = __fadd_rn(__fmul_rn(y, r), 4.1665795894e-2f);
    y = __fadd_rn(__fmul_rn(y, r), 1.6666665459e-1f);
    y = __fadd_rn(__fmul_rn(y, r), 5.0000001201e-1f);
    y = __fadd_rn(__fmul_rn(y, z), r);
    y = __fadd_rn(y, 1.0f);
    return __fmul_rn(y, __uint_as_float((uint32_t)(127 + k) << 23));
}

/* W = floor(p * 2^40) of a cleaned logit, p in *p (kcuda_ref_sample_weight). */
__device__ __forceinline__ u64 sample_weight(float l, float m, float T, float *p)
{
    float x = __fdiv_rn(__fsub_rn(l, m), T);
    if (!(x >= -28.0f)) {
        *p = 0.0f;
        return 0;
    }
    if (x > 0.0f)
        x = 0.0f;
    *p = sample_exp(x);
    return __float2ull_rz(__fmul_rn(*p, 0x1p40f));
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

__device__ __forceinline__ u64 warp_max_u64(u64 v)
{
    for (int off = 16; off > 0; off >>= 1) {
        const u64 o = __shfl_xor_sync(FULL_MASK, v, off);
        v = o > v ? o : v;
    }
    return v;
}

__device__ __forceinline__ u64 warp_incl_scan_u64(u64 v, int lane)
{
    for (int off = 1; off < 32; off <<= 1) {
        const u64 n = __shfl_up_sync(FULL_MASK, v, off);
        if (lane >= off)
            v += n;
    }
    return v;
}

struct sample_smem {
    u64 mass[RADIX_BINS];      /* top-p: weight per digit */
    uint32_t count[RADIX_BINS]; /* top-k: tokens per digit */
    u64 scan[NW];               /* block scan: per-warp totals */
    u64 part[NW];               /* draw: per-warp part sums; argmax: per-warp max */
    u64 res_base;               /* find_crossing's result */
    uint32_t res_digit;
};

/* Inclusive prefix sum over the block in thread order, and the block total.
 * Every thread calls it; it ends with a barrier, so sm->scan is free again. */
__device__ __forceinline__ u64 block_incl_scan(u64 v, sample_smem *sm, u64 *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_incl_scan_u64(v, lane);
    if (lane == 31)
        sm->scan[warp] = v;
    __syncthreads();
    u64 base = 0, all = 0;
    for (int w = 0; w < NW; w++) {
        const u64 s = sm->scan[w];
        base += w < warp ? s : 0;
        all += s;
    }
    __syncthreads();
    *total = all;
    return v + base;
}

/* Digit search over hist[0 .. nb) (nb = NT * a power of two): the largest
 * digit d with base + sum_{b >= d} hist[b] >= need, given
 * base < need <= base + sum of all. Thread t owns the nb / NT bins below
 * nb - 1 - t * (nb / NT), so a scan in thread order runs from the top digit
 * down. Leaves d in sm->res_digit and base + sum_{b > d} hist[b] in
 * sm->res_base, visible to all after the closing barrier. */
template <typename T>
__device__ void find_crossing(const T *hist, int nb, u64 need, u64 base, sample_smem *sm)
{
    const int per = nb / NT, top = nb - 1 - (int)threadIdx.x * per;
    u64 s = 0;
    for (int i = 0; i < per; i++)
        s += hist[top - i];
    u64 total;
    const u64 incl = block_incl_scan(s, sm, &total), excl = incl - s;
    if (base + excl < need && need <= base + incl) {
        u64 cum = base + excl;
        for (int i = 0; i < per; i++) {
            const u64 c = hist[top - i];
            if (cum + c >= need) {
                sm->res_digit = (uint32_t)(top - i);
                sm->res_base = cum;
                break;
            }
            cum += c;
        }
    }
    __syncthreads();
}

/* Radix digits, most significant first: bits [31:21], [20:10], [9:0]. */
__device__ __forceinline__ int digit_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__device__ __forceinline__ int digit_bins(int pass) { return pass == 2 ? 1024 : 2048; }

/* The k-th largest logit key of the row (1 <= k < V). */
__device__ uint32_t kth_largest_key(const float *l, int vocab, uint32_t k, sample_smem *sm)
{
    uint32_t prefix = 0, mask = 0;
    u64 base = 0; /* keys above every key that matches the prefix */
    for (int pass = 0; pass < 3; pass++) {
        const int shift = digit_shift(pass), nb = digit_bins(pass);
        for (int i = threadIdx.x; i < nb; i += NT)
            sm->count[i] = 0;
        __syncthreads();
        for (int j = threadIdx.x; j < vocab; j += NT) {
            const uint32_t key = float_key(clean_logit(l[j]));
            if ((key & mask) == prefix)
                atomicAdd(&sm->count[(key >> shift) & (uint32_t)(nb - 1)], 1u);
        }
        __syncthreads();
        find_crossing(sm->count, nb, k, base, sm);
        prefix |= sm->res_digit << shift;
        base = sm->res_base;
        mask |= (uint32_t)(nb - 1) << shift;
    }
    return prefix;
}

/* lambda's key for top_p < 1 over the tokens with key >= lo_key. */
__device__ uint32_t top_p_key(const float *l, int vocab, uint32_t lo_key, float m, float T, float top_p,
                              sample_smem *sm)
{
    uint32_t prefix = 0, mask = 0;
    u64 base = 0, need = 0;
    for (int pass = 0; pass < 3; pass++) {
        const int shift = digit_shift(pass), nb = digit_bins(pass);
        for (int i = threadIdx.x; i < nb; i += NT)
            sm->mass[i] = 0;
        __syncthreads();
        for (int j = threadIdx.x; j < vocab; j += NT) {
            const float c = clean_logit(l[j]);
            const uint32_t key = float_key(c);
            if (key >= lo_key && (key & mask) == prefix) {
                float p;
                const u64 w = sample_weight(c, m, T, &p);
                if (w)
                    atomicAdd(&sm->mass[(key >> shift) & (uint32_t)(nb - 1)], w);
            }
        }
        __syncthreads();
        if (pass == 0) {
            /* Z_K, the mass of every candidate, sets the target mass. */
            u64 s = 0;
            for (int i = 0; i < RADIX_BINS / NT; i++)
                s += sm->mass[threadIdx.x * (RADIX_BINS / NT) + i];
            u64 zk;
            block_incl_scan(s, sm, &zk);
            const double t = __dmul_rn((double)top_p, __ull2double_rn(zk));
            need = t < 1.0 ? 1 : __double2ull_rz(ceil(t));
        }
        find_crossing(sm->mass, nb, need, base, sm);
        prefix |= sm->res_digit << shift;
        base = sm->res_base;
        mask |= (uint32_t)(nb - 1) << shift;
    }
    return prefix;
}

/* W_j if token j is kept (key >= thr, passes min_p or is the argmax), else 0. */
__device__ __forceinline__ u64 kept_weight(const float *l, int j, uint32_t thr, float m, float T, float min_p,
                                           int amax)
{
    const float c = clean_logit(l[j]);
    if (float_key(c) < thr)
        return 0;
    float p;
    const u64 w = sample_weight(c, m, T, &p);
    return (p < min_p && j != amax) ? 0 : w;
}

__global__ void __launch_bounds__(NT)
kcuda_sample_kernel(int32_t *tokens, const float *logits, size_t ld, int vocab, const kcuda_sample_params *params)
{
    __shared__ sample_smem sm;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const size_t row = blockIdx.x;
    const float *l = logits + row * ld;
    const kcuda_sample_params prm = params[row];

    /* Argmax: the largest key, then the largest ~index (lowest index). */
    u64 best = 0;
    for (int j = tid; j < vocab; j += NT) {
        const u64 cand = ((u64)float_key(clean_logit(l[j])) << 32) | (0xffffffffu - (uint32_t)j);
        best = cand > best ? cand : best;
    }
    best = warp_max_u64(best);
    if (lane == 0)
        sm.part[warp] = best;
    __syncthreads();
    for (int w = 0; w < NW; w++)
        best = sm.part[w] > best ? sm.part[w] : best;
    __syncthreads(); /* sm.part is reused by the draw */
    const uint32_t max_key = (uint32_t)(best >> 32);
    const int amax = (int)(0xffffffffu - (uint32_t)best);
    const float T = prm.temperature;
    if (max_key == KEY_NEG_INF || !(T > 0.0f)) {
        if (tid == 0)
            tokens[row] = max_key == KEY_NEG_INF ? -1 : amax;
        return;
    }
    const float m = key_float(max_key);

    /* The filters as one key threshold (top-k, then top-p within it) and
     * min_p, which kept_weight applies. */
    uint32_t thr = 0;
    if (prm.top_k > 0 && prm.top_k < vocab)
        thr = prm.top_k == 1 ? max_key : kth_largest_key(l, vocab, (uint32_t)prm.top_k, &sm);
    if (prm.top_p < 1.0f) {
        const uint32_t lam = top_p_key(l, vocab, thr, m, T, prm.top_p, &sm);
        thr = lam > thr ? lam : thr;
    }
    const float min_p = prm.min_p > 0.0f ? prm.min_p : 0.0f;

    /* Draw. Invariant: before <= target < before + (kept mass of [lo, hi)). */
    int lo = 0, hi = vocab;
    u64 before = 0, target = 0;
    for (bool first = true;; first = false) {
        const int len = hi - lo;
        if (!first && len <= NARROW_MIN)
            break;
        const int part = (len + NW - 1) / NW;
        const int w_lo = min(lo + warp * part, hi), w_hi = min(w_lo + part, hi);
        u64 s = 0;
        for (int j = w_lo + lane; j < w_hi; j += 32)
            s += kept_weight(l, j, thr, m, T, min_p, amax);
        s = warp_sum_u64(s);
        if (lane == 0)
            sm.part[warp] = s;
        __syncthreads();
        if (first) {
            u64 z = 0;
            for (int w = 0; w < NW; w++)
                z += sm.part[w];
            float u = prm.uniform;
            if (!(u >= 0.0f))
                u = 0.0f;
            if (u >= 1.0f)
                u = 0x1.fffffep-1f;
            target = __double2ull_rz(__dmul_rn((double)u, __ull2double_rn(z)));
        }
        int pick = -1;
        u64 acc = before;
        for (int w = 0; w < NW; w++) {
            const u64 ps = sm.part[w];
            if (target < acc + ps) {
                pick = w;
                break;
            }
            acc += ps;
        }
        __syncthreads(); /* sm.part is rewritten by the next round */
        if (pick < 0) { /* cannot happen (exact sums); leaves the argmax */
            lo = hi;
            break;
        }
        before = acc;
        lo = min(lo + pick * part, hi);
        hi = min(lo + part, hi);
    }
    if (warp == 0) {
        int tok = amax;
        for (int b = lo; b < hi; b += 32) {
            const int j = b + lane;
            const u64 w = j < hi ? kept_weight(l, j, thr, m, T, min_p, amax) : 0;
            const u64 incl = warp_incl_scan_u64(w, lane);
            const unsigned hit = __ballot_sync(FULL_MASK, before + incl > target);
            if (hit) {
                tok = b + __ffs(hit) - 1;
                break;
            }
            before += __shfl_sync(FULL_MASK, incl, 31);
        }
        if (lane == 0)
            tokens[row] = tok;
    }
}

extern "C" cudaError_t kcuda_sample(int32_t *tokens, const float *logits, size_t ld, size_t n_rows, size_t vocab,
                                    const kcuda_sample_params *params, cudaStream_t stream)
{
    if (vocab == 0 || vocab > KCUDA_SAMPLE_MAX_VOCAB)
        return cudaErrorInvalidValue;
    if (n_rows == 0)
        return cudaSuccess;
    if (!tokens || !logits || !params || (n_rows > 1 && ld < vocab) || n_rows > INT32_MAX)
        return cudaErrorInvalidValue;
    kcuda_sample_kernel<<<(unsigned)n_rows, NT, 0, stream>>>(tokens, logits, ld, (int)vocab, params);
    CUDA_CHECK_LAUNCH("kcuda_sample_kernel");
    return cudaSuccess;
}
