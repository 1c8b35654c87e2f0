/* Prefill attention over the paged f16 KV cache: causal within the step's
 * tokens, the cached prefix in full, every K/V row read from the pages. See
 * kcuda_attn.h for the contract; conventions in kcuda_attn_common.cuh.
 *
 * Grid: x = (run, KV head, head group), y = a stride over the run's query
 * tiles (a block takes tiles y, y + gridDim.y, ..., the latest ones, which
 * see the most keys, first). A query tile is 64 rows: 64 / G consecutive
 * tokens times the G query heads of the group, so each K/V tile loaded into
 * shared memory serves all of them.
 *
 * Math: plain f32 FMAs on CUDA cores (no tensor cores), flash-attention
 * style. Per 64-key tile: K (transposed, f32) and V (f32) into shared memory;
 * S = Q K^T as a 4 x 4 register tile per thread (rows 4 ty .. 4 ty + 3, keys
 * tx + 16 b); causal mask; online softmax per row (the 16 threads of a row
 * reduce with shuffles inside a half-warp); P to shared memory over the
 * consumed K; O += P V with rows 4 ty .. and channels tx + 16 k. Scores are
 * log2-scaled (the queries are multiplied by scale * log2(e) on load) and
 * exponentials are exp2.
 *
 * A row's arithmetic depends only on its own position and the cache: key
 * tiles always start at position 0, and tiles or keys past a row's position
 * contribute exact zeros. So the same token gives the same bits whether it
 * is prefilled in one chunk or several. */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"
#include "kcuda_attn_common.cuh"

#define PF_THREADS 256
#define PF_ROWS 64     /* query rows (tokens x heads) per tile */
#define PF_TK 64       /* keys per tile */
#define PF_PSTRIDE 68  /* floats per P row: 16-byte aligned, conflict-free stores */

struct PrefillParams {
    const float *q;
    size_t ld, gs;
    float *out_f32;
    uint16_t *out_bf16;
    size_t ld_out;
    const uint16_t *data;
    const int32_t *bt;
    size_t bt_stride;
    const kcuda_run *runs;
    int n_kv, qpk, hd, P, n_hg;
    int p_shift; /* log2(P), or -1 */
    float scale_log2;
};

/* Floats of shared memory: Q (hd, 64 rows), K (hd, 64 keys) later reused for
 * P (64 keys, PF_PSTRIDE), V (64 keys, hd). */
__host__ __device__ inline int pf_kp_floats(int hd)
{
    return hd * PF_TK > PF_TK * PF_PSTRIDE ? hd * PF_TK : PF_TK * PF_PSTRIDE;
}
__host__ __device__ inline unsigned pf_smem_bytes(int hd)
{
    return (unsigned)(hd * PF_ROWS + pf_kp_floats(hd) + PF_TK * hd) * 4u;
}

/* G query heads per KV head in a tile; NCH = channels per thread in P V
 * (head_dim <= 16 * NCH). Two blocks per SM up to head_dim 128 (96 KiB of
 * shared memory each); head_dim 256 takes 192 KiB, so one. */
template <int G, int NCH>
__global__ void __launch_bounds__(PF_THREADS, NCH >= 16 ? 1 : 2)
    kcuda_attn_prefill_kernel(const PrefillParams p)
{
    constexpr int BQ = PF_ROWS / G; /* tokens per tile */
    extern __shared__ float4 smem4[];
    float *Qs = reinterpret_cast<float *>(smem4);
    float *Ks = Qs + p.hd * PF_ROWS;
    float *Ps = Ks; /* P replaces K once the scores are taken */
    float *Vs = Ks + pf_kp_floats(p.hd);

    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int hd = p.hd, P = p.P, CH = hd / 8;
    int bid = blockIdx.x;
    const int hg = bid % p.n_hg;
    bid /= p.n_hg;
    const int h = bid % p.n_kv, r = bid / p.n_kv;
    const int hbase = hg * KCUDA_ATTN_MAX_G;
    const int ng = min(G, p.qpk - hbase);

    const kcuda_run run = p.runs[r];
    if (run.n_tokens <= 0)
        return;
    const int n_qt = (run.n_tokens + BQ - 1) / BQ;
    const int32_t *bt_row = p.bt + ((size_t)run.seq * p.n_kv + h) * p.bt_stride;
    const size_t page_elems = (size_t)P * hd;

    for (int k_iter = blockIdx.y; k_iter < n_qt; k_iter += gridDim.y) {
        const int qt = n_qt - 1 - k_iter;
        const int i0 = qt * BQ;
        const int n_keys = run.pos0 + min(i0 + BQ, run.n_tokens); /* last position + 1 */

        /* Q was last read by the previous tile's S = Q K^T, which every
         * thread finished before that tile's last barrier: no barrier here. */
        for (int i = tid; i < PF_ROWS * hd; i += PF_THREADS) {
            const int rr = i % PF_ROWS, d = i / PF_ROWS;
            const int qi = rr / G, g = rr % G;
            float v = 0.0f;
            if (i0 + qi < run.n_tokens && g < ng)
                v = p.q[(size_t)(run.row0 + i0 + qi) * p.ld + (size_t)h * p.gs +
                        (size_t)(hbase + g) * hd + d] * p.scale_log2;
            Qs[d * PF_ROWS + rr] = v;
        }

        float m[4], l[4], o[4][NCH];
#pragma unroll
        for (int a = 0; a < 4; a++) {
            m[a] = -INFINITY;
            l[a] = 0.0f;
#pragma unroll
            for (int k = 0; k < NCH; k++)
                o[a][k] = 0.0f;
        }
        int pq[4]; /* position of each of this thread's rows */
#pragma unroll
        for (int a = 0; a < 4; a++)
            pq[a] = run.pos0 + i0 + (ty * 4 + a) / G;

        for (int k0 = 0; k0 < n_keys; k0 += PF_TK) {
            __syncthreads(); /* Q is written; the previous key tile's P and V are consumed */
            /* K, transposed to (channel, key): lanes take consecutive keys so
             * the shared stores are conflict-free. */
            for (int i = tid; i < PF_TK * CH; i += PF_THREADS) {
                const int key = i % PF_TK, c = i / PF_TK, kp = k0 + key;
                float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                if (kp < n_keys) {
                    const size_t slot = (size_t)bt_row[kcuda_page_div(kp, P, p.p_shift)];
                    const uint16_t *src = p.data + slot * 2 * page_elems +
                                          (size_t)kcuda_page_mod(kp, P, p.p_shift) * hd + c * 8;
                    kcuda_h8_to_f32(*reinterpret_cast<const uint4 *>(src), f);
                }
#pragma unroll
                for (int e = 0; e < 8; e++)
                    Ks[(c * 8 + e) * PF_TK + key] = f[e];
            }
            /* V, row-major: lanes take consecutive chunks of a row. */
            for (int i = tid; i < PF_TK * CH; i += PF_THREADS) {
                const int key = i / CH, c = i % CH, kp = k0 + key;
                float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                if (kp < n_keys) {
                    const size_t slot = (size_t)bt_row[kcuda_page_div(kp, P, p.p_shift)];
                    const uint16_t *src = p.data + slot * 2 * page_elems + page_elems +
                                          (size_t)kcuda_page_mod(kp, P, p.p_shift) * hd + c * 8;
                    kcuda_h8_to_f32(*reinterpret_cast<const uint4 *>(src), f);
                }
                float4 *dst = reinterpret_cast<float4 *>(Vs + key * hd + c * 8);
                dst[0] = make_float4(f[0], f[1], f[2], f[3]);
                dst[1] = make_float4(f[4], f[5], f[6], f[7]);
            }
            __syncthreads();

            /* S = Q K^T, rows 4 ty + a, keys tx + 16 b */
            float s[4][4];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++)
                    s[a][b] = 0.0f;
            for (int d = 0; d < hd; d++) {
                const float4 qv = *reinterpret_cast<const float4 *>(Qs + d * PF_ROWS + ty * 4);
                const float qa[4] = {qv.x, qv.y, qv.z, qv.w};
                float kb[4];
#pragma unroll
                for (int b = 0; b < 4; b++)
                    kb[b] = Ks[d * PF_TK + tx + 16 * b];
#pragma unroll
                for (int a = 0; a < 4; a++)
#pragma unroll
                    for (int b = 0; b < 4; b++)
                        s[a][b] = fmaf(qa[a], kb[b], s[a][b]);
            }

            /* causal mask and online softmax; keys past n_keys lie past
             * every row's position, so the mask covers them too */
#pragma unroll
            for (int a = 0; a < 4; a++) {
                float mx = -INFINITY;
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    if (k0 + tx + 16 * b > pq[a])
                        s[a][b] = -INFINITY;
                    mx = fmaxf(mx, s[a][b]);
                }
#pragma unroll
                for (int off = 8; off > 0; off >>= 1)
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
                const float m_new = fmaxf(m[a], mx);
                /* A row with no key yet (only rows past the run's last token,
                 * which are never written) keeps m = -inf: subtract 0 then. */
                const float m_use = m_new == -INFINITY ? 0.0f : m_new;
                const float alpha = exp2f(m[a] - m_use);
                float rs = 0.0f;
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    s[a][b] = exp2f(s[a][b] - m_use);
                    rs += s[a][b];
                }
#pragma unroll
                for (int off = 8; off > 0; off >>= 1)
                    rs += __shfl_xor_sync(0xffffffffu, rs, off);
                l[a] = l[a] * alpha + rs;
                m[a] = m_new;
#pragma unroll
                for (int k = 0; k < NCH; k++)
                    o[a][k] *= alpha;
            }
            __syncthreads(); /* all scores are taken: K may be overwritten by P */
#pragma unroll
            for (int b = 0; b < 4; b++)
                *reinterpret_cast<float4 *>(Ps + (tx + 16 * b) * PF_PSTRIDE + ty * 4) =
                    make_float4(s[0][b], s[1][b], s[2][b], s[3][b]);
            __syncthreads();

            /* O += P V over the keys of the tile that exist */
            const int kn = min(PF_TK, n_keys - k0);
            for (int key = 0; key < kn; key++) {
                const float4 pv = *reinterpret_cast<const float4 *>(Ps + key * PF_PSTRIDE + ty * 4);
                const float pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
                for (int k = 0; k < NCH; k++) {
                    const int ch = tx + 16 * k;
                    if (ch < hd) {
                        const float v = Vs[key * hd + ch];
#pragma unroll
                        for (int a = 0; a < 4; a++)
                            o[a][k] = fmaf(pa[a], v, o[a][k]);
                    }
                }
            }
        }

#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int rr = ty * 4 + a, qi = rr / G, g = rr % G;
            if (i0 + qi >= run.n_tokens || g >= ng)
                continue;
            const float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
            const size_t at = (size_t)(run.row0 + i0 + qi) * p.ld_out +
                              ((size_t)h * p.qpk + hbase + g) * hd;
#pragma unroll
            for (int k = 0; k < NCH; k++) {
                const int ch = tx + 16 * k;
                if (ch < hd)
                    kcuda_attn_store(p.out_f32, p.out_bf16, at + ch, o[a][k] * inv);
            }
        }
    }
}

/* ---- host side ---------------------------------------------------------- */

template <int G, int NCH> static void *pf_kernel_ptr(void)
{
    return reinterpret_cast<void *>(&kcuda_attn_prefill_kernel<G, NCH>);
}
template <int G> static void *pf_kernel_for_g(int nch)
{
    return nch == 4 ? pf_kernel_ptr<G, 4>() : nch == 8 ? pf_kernel_ptr<G, 8>() : pf_kernel_ptr<G, 16>();
}
static void *pf_kernel_for(int G, int nch)
{
    switch (G) {
    case 1: return pf_kernel_for_g<1>(nch);
    case 2: return pf_kernel_for_g<2>(nch);
    case 4: return pf_kernel_for_g<4>(nch);
    default: return pf_kernel_for_g<8>(nch);
    }
}

/* Lets kernel (G, nch) use the shared memory of its largest head_dim on
 * the current device (once per device). */
static cudaError_t pf_prepare(int G, int nch, int dev)
{
    static int done[64];
    const int bit = 1 << ((G == 1 ? 0 : G == 2 ? 1 : G == 4 ? 2 : 3) * 3 + (nch == 4 ? 0 : nch == 8 ? 1 : 2));
    if (dev >= 0 && dev < 64 && (__atomic_load_n(&done[dev], __ATOMIC_RELAXED) & bit))
        return cudaSuccess;
    cudaError_t err = cudaFuncSetAttribute(pf_kernel_for(G, nch),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)pf_smem_bytes(16 * nch));
    if (err != cudaSuccess)
        return err;
    if (dev >= 0 && dev < 64)
        __atomic_fetch_or(&done[dev], bit, __ATOMIC_RELAXED);
    return cudaSuccess;
}

template <int G>
static void pf_launch(int nch, dim3 grid, unsigned smem, cudaStream_t stream, const PrefillParams &p)
{
    if (nch == 4)
        kcuda_attn_prefill_kernel<G, 4><<<grid, PF_THREADS, smem, stream>>>(p);
    else if (nch == 8)
        kcuda_attn_prefill_kernel<G, 8><<<grid, PF_THREADS, smem, stream>>>(p);
    else
        kcuda_attn_prefill_kernel<G, 16><<<grid, PF_THREADS, smem, stream>>>(p);
}

extern "C" cudaError_t kcuda_attn_prefill(const kcuda_attn_args *a, cudaStream_t stream)
{
    if (!a)
        return cudaErrorInvalidValue;
    if (a->n_runs == 0)
        return cudaSuccess;
    if (!kcuda_attn_args_ok(a))
        return cudaErrorInvalidValue;
    const size_t n_hg = kcuda_attn_ceil_div(a->q_per_kv, KCUDA_ATTN_MAX_G);
    if (a->n_runs > (size_t)INT32_MAX / (a->n_kv_heads * n_hg))
        return cudaErrorInvalidValue;

    const int G = kcuda_attn_gtile(a->q_per_kv);
    const int hd = (int)a->head_dim;
    const int nch = hd <= 64 ? 4 : hd <= 128 ? 8 : 16;
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(pf_prepare(G, nch, dev));

    PrefillParams p;
    p.q = a->in.q;
    p.ld = a->in.ld;
    p.gs = a->in.group_stride;
    p.out_f32 = a->out_f32;
    p.out_bf16 = a->out_bf16;
    p.ld_out = a->ld_out;
    p.data = a->kv.data;
    p.bt = a->bt.block_tables;
    p.bt_stride = a->bt.bt_stride;
    p.runs = a->runs;
    p.n_kv = (int)a->n_kv_heads;
    p.qpk = (int)a->q_per_kv;
    p.hd = hd;
    p.P = (int)a->kv.page_size;
    p.p_shift = kcuda_page_shift(a->kv.page_size);
    p.n_hg = (int)n_hg;
    p.scale_log2 = a->scale * KCUDA_LOG2E;

    /* The host does not know each run's token count, only that it is at
     * most max_ctx: enough y-blocks for max_ctx tokens, capped at about
     * eight blocks per SM over the grid; blocks past a run's tiles exit. */
    const size_t base = a->n_runs * a->n_kv_heads * n_hg;
    const size_t tiles = kcuda_attn_ceil_div(a->max_ctx, (size_t)(PF_ROWS / G));
    size_t gy = kcuda_attn_ceil_div(8 * (size_t)kcuda_attn_sm_count(132), base);
    if (gy > tiles)
        gy = tiles;
    if (gy > 65535)
        gy = 65535;
    if (gy < 1)
        gy = 1;
    const dim3 grid((unsigned)base, (unsigned)gy);
    const unsigned smem = pf_smem_bytes(hd);
    switch (G) {
    case 1: pf_launch<1>(nch, grid, smem, stream, p); break;
    case 2: pf_launch<2>(nch, grid, smem, stream, p); break;
    case 4: pf_launch<4>(nch, grid, smem, stream, p); break;
    default: pf_launch<8>(nch, grid, smem, stream, p); break;
    }
    CUDA_CHECK_LAUNCH("kcuda_attn_prefill_kernel");
    return cudaSuccess;
}
