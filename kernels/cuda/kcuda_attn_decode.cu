/* Decode attention over the paged f16 KV cache, dense or over selected pages,
 * split-KV. See kcuda_attn.h for the contract; conventions (P, hd, G,
 * chunk) in kcuda_attn_common.cuh.
 *
 * Grid: one block of 256 threads (8 warps) per (run, KV head, head group,
 * split); a head group is the whole GQA group (q_per_kv <= 8, G = q_per_kv
 * rounded up to 1, 2, 4 or 8) or 8 of its heads, so each K/V row is read once
 * per group. A split is a contiguous range of the run's page list (0..n_pages-1
 * dense, the selected indices sparse): the list of n pages is cut into
 * ns_r = min(n_splits, ceil(n / min_pages)) equal ranges; blocks of splits
 * beyond ns_r have nothing to do.
 *
 * Memory: the block streams its range in tiles of 32 tokens through a 3-stage
 * cp.async pipeline in shared memory (16-byte copies; 8 threads per token
 * row, so each warp copies 4 rows of 128 contiguous bytes per instruction),
 * so two tiles (32 KiB at hd = 128) are in flight per block while it computes
 * the third. The slot ids for those copies are prefetched into registers one
 * tile ahead (and the sparse list entries two tiles ahead), so address
 * lookups never stall the pipeline.
 *
 * Per tile: (1) scores: lane = token, warp = a slice of hd/8 channels per
 * warp; the queries are in shared memory and read as broadcasts, K rows are
 * padded to an odd number of 16-byte units so the 32 rows a warp reads hit
 * distinct banks; (2) warp g < G merges the 8 slices of head g, updates its
 * running max and sum (online softmax, exp2 of log2-scaled scores) and
 * writes the tile's probabilities; (3) thread (token lane, chunk) rescales
 * its 8 x G accumulators and adds p * V over its tokens. At the end the token
 * lanes are summed in a fixed order. One split: the block writes the
 * normalized output. Several: it writes (max, sum, unnormalized output) to
 * the workspace and kcuda_attn_combine_kernel merges the splits in order.
 *
 * All math is f32; the result of a run does not depend on the batch it is
 * in (the split count aside). */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"
#include "kcuda_attn_common.cuh"

#define DEC_THREADS 256
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_TK 32                        /* tokens per tile; one per lane in the score phase */
#define DEC_STAGES 3                     /* tiles in shared memory: 2 in flight + 1 in use */
#define DEC_TPT (DEC_THREADS / DEC_TK)   /* threads copying one token's K and V rows */
#define DEC_MIN_SPLIT_TOKENS 256         /* a split covers at least this many tokens' pages */
#define DEC_MAX_SPLITS 256
#define COMBINE_THREADS 128

static_assert(DEC_TK == 32, "the score phase maps one token per lane");
static_assert(DEC_WARPS >= KCUDA_ATTN_MAX_G, "the softmax phase needs one warp per head");

struct DecodeParams {
    const float *q;
    size_t ld, gs;              /* q rows and KV groups, floats */
    float *out_f32;
    uint16_t *out_bf16;
    size_t ld_out;
    const uint16_t *data;       /* the layer's (slot, {K, V}, P, hd) */
    const int32_t *bt;
    size_t bt_stride;
    const kcuda_run *runs;
    const int32_t *sel, *n_sel; /* sel == NULL: dense */
    size_t sel_stride;
    int n_kv, qpk, hd, P;
    int p_shift;                /* log2(P), or -1 */
    int n_hg;                   /* head groups per KV head: ceil(qpk / 8) */
    int ns;                     /* splits; 1 = write the output directly */
    int min_pages;              /* pages per split at least */
    float scale_log2;           /* scale * log2(e) */
    float *ws_acc;              /* (run, kv head, q head, split, hd) */
    float *ws_ml;               /* (run, kv head, q head, split, {max, sum}) */
};

/* Shared memory of one block, in bytes from the start: the stage buffers
 * (each: DEC_TK K rows of rowu 16-byte units, then DEC_TK V rows of ch
 * units), reused at the end for the reduction over token lanes; the queries
 * (G, hd); the partial scores (warp, G, DEC_TK); the probabilities
 * (DEC_TK, G); the per-head rescale factors; the final (max, sum) per head. */
struct DecLayout {
    int ch, rowu, ntl, stage_units;
    unsigned qs_off, part_off, pt_off, alpha_off, ml_off, total;
};

__host__ __device__ inline DecLayout dec_layout(int hd, int G)
{
    DecLayout L;
    L.ch = hd / 8;
    L.rowu = L.ch | 1;
    L.ntl = DEC_THREADS / L.ch;
    L.stage_units = DEC_TK * (L.rowu + L.ch);
    const unsigned stages = (unsigned)DEC_STAGES * L.stage_units * 16;
    const unsigned red = (unsigned)L.ntl * hd * 4;
    L.qs_off = stages > red ? stages : red;
    L.part_off = L.qs_off + (unsigned)G * hd * 4;
    L.pt_off = L.part_off + (unsigned)DEC_WARPS * G * DEC_TK * 4;
    L.alpha_off = L.pt_off + (unsigned)DEC_TK * G * 4;
    L.ml_off = L.alpha_off + (unsigned)G * 4;
    L.total = L.ml_off + 2u * G * 4;
    return L;
}

template <int G>
__global__ void __launch_bounds__(DEC_THREADS, 2) kcuda_attn_decode_kernel(const DecodeParams p)
{
    extern __shared__ uint4 smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int hd = p.hd, P = p.P;
    const DecLayout L = dec_layout(hd, G);
    const int CH = L.ch, rowu = L.rowu, ntl = L.ntl;
    uint4 *stage = smem;
    float *qs = reinterpret_cast<float *>(reinterpret_cast<char *>(smem) + L.qs_off);
    float *part = reinterpret_cast<float *>(reinterpret_cast<char *>(smem) + L.part_off);
    float *pt = reinterpret_cast<float *>(reinterpret_cast<char *>(smem) + L.pt_off);
    float *alpha_s = reinterpret_cast<float *>(reinterpret_cast<char *>(smem) + L.alpha_off);
    float *ml_s = reinterpret_cast<float *>(reinterpret_cast<char *>(smem) + L.ml_off);

    int bid = blockIdx.x;
    const int split = bid % p.ns;
    bid /= p.ns;
    const int hg = bid % p.n_hg;
    bid /= p.n_hg;
    const int h = bid % p.n_kv, r = bid / p.n_kv;
    const int hbase = hg * KCUDA_ATTN_MAX_G; /* n_hg > 1 only when G == 8 */
    const int ng = min(G, p.qpk - hbase);

    const kcuda_run run = p.runs[r];
    int n_ctx = run.pos0 + 1;
    int n_pages = (n_ctx + P - 1) / P;
    if ((size_t)n_pages > p.bt_stride) { /* never read past the block-table row */
        n_pages = (int)p.bt_stride;
        n_ctx = n_pages * P;
    }
    const int32_t *bt_row = p.bt + ((size_t)run.seq * p.n_kv + h) * p.bt_stride;
    const int32_t *list = NULL;
    int n_list = n_pages;
    if (p.sel) {
        const size_t rh = (size_t)r * p.n_kv + h;
        list = p.sel + rh * p.sel_stride;
        n_list = min(min(p.n_sel[rh], n_pages), (int)min(p.sel_stride, (size_t)INT32_MAX));
        n_list = max(n_list, 0);
    }
    const int ns_r = n_list == 0 ? 0 : min(p.ns, (n_list + p.min_pages - 1) / p.min_pages);
    const size_t wbase = ((size_t)r * p.n_kv + h) * p.qpk + hbase;
    const size_t out_at = (size_t)run.row0 * p.ld_out + ((size_t)h * p.qpk + hbase) * hd;

    if (split >= ns_r) { /* nothing to attend in this split */
        if (p.ns == 1) { /* no page at all: zeros */
            for (int i = tid; i < ng * hd; i += DEC_THREADS)
                kcuda_attn_store(p.out_f32, p.out_bf16, out_at + i, 0.0f);
        } else if (tid < ng) {
            p.ws_ml[((wbase + tid) * p.ns + split) * 2] = -INFINITY;
            p.ws_ml[((wbase + tid) * p.ns + split) * 2 + 1] = 0.0f;
        }
        return;
    }
    const int lb = (int)((long long)split * n_list / ns_r);
    const int le = (int)((long long)(split + 1) * n_list / ns_r);
    /* Only the context's last page is partial, and in an increasing list it
     * can only be the last entry. */
    const int last_page = list ? list[le - 1] : le - 1;
    const int n_valid = (le - lb) * P - (last_page == n_pages - 1 ? n_pages * P - n_ctx : 0);
    const int n_tiles = (n_valid + DEC_TK - 1) / DEC_TK;

    const float *qrow = p.q + (size_t)run.row0 * p.ld + (size_t)h * p.gs + (size_t)hbase * hd;
    for (int i = tid; i < G * hd; i += DEC_THREADS)
        qs[i] = i / hd < ng ? qrow[i] : 0.0f;

    /* Copy role: thread copies 16-byte pieces sub, sub + 8, ... of the K and
     * V rows of token v_local of each tile. */
    const int v_local = tid / DEC_TPT, sub = tid % DEC_TPT;
    auto page_of = [&](int jt) -> int {
        const int u = jt * DEC_TK + v_local;
        if (u >= n_valid)
            return -1;
        const int at = lb + kcuda_page_div(u, P, p.p_shift);
        return list ? list[at] : at;
    };
    auto issue = [&](int jt, int slot) {
        if (slot >= 0) {
            const int u = jt * DEC_TK + v_local;
            const uint16_t *kg = p.data + ((size_t)slot * 2 * P + kcuda_page_mod(u, P, p.p_shift)) * hd;
            const uint16_t *vg = kg + (size_t)P * hd;
            uint4 *ks = stage + (jt % DEC_STAGES) * L.stage_units;
            uint4 *vs = ks + DEC_TK * rowu + v_local * CH;
            ks += v_local * rowu;
            for (int c = sub; c < 2 * CH; c += DEC_TPT) {
                if (c < CH)
                    kcuda_cp_async16(ks + c, kg + c * 8);
                else
                    kcuda_cp_async16(vs + (c - CH), vg + (c - CH) * 8);
            }
        }
        kcuda_cp_async_commit(); /* also when empty: one group per tile keeps the count */
    };

    for (int jt = 0; jt < DEC_STAGES - 1; jt++) {
        const int pg = page_of(jt);
        issue(jt, pg >= 0 ? bt_row[pg] : -1);
    }
    int pf_page = page_of(DEC_STAGES - 1);
    int pf_slot = pf_page >= 0 ? bt_row[pf_page] : -1; /* slot for tile j + STAGES - 1 */
    pf_page = page_of(DEC_STAGES);                     /* page for tile j + STAGES */

    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int e = 0; e < 8; e++)
            acc[g][e] = 0.0f;
    float m_run = -INFINITY, l_run = 0.0f; /* softmax state of head `warp`, warps < G */
    const int tl = tid / CH, cc = tid % CH;
    const bool v_active = tl < ntl;
    const int cb = warp * CH / DEC_WARPS, ce = (warp + 1) * CH / DEC_WARPS;

    for (int j = 0; j < n_tiles; j++) {
        kcuda_cp_async_wait<DEC_STAGES - 2>(); /* this thread's copies of tile j landed */
        __syncthreads(); /* everyone's did; and tile j - 1 is no longer read */
        issue(j + DEC_STAGES - 1, pf_slot);
        pf_slot = pf_page >= 0 ? bt_row[pf_page] : -1;
        pf_page = page_of(j + DEC_STAGES + 1);

        const uint4 *ks = stage + (j % DEC_STAGES) * L.stage_units;
        const uint4 *vs = ks + DEC_TK * rowu;
        const int tv = min(DEC_TK, n_valid - j * DEC_TK);

        /* (1) partial scores of token `lane` over this warp's channels */
        float sc[G];
#pragma unroll
        for (int g = 0; g < G; g++)
            sc[g] = 0.0f;
        /* At most 4 heads' queries live per pass, to stay within 128
         * registers (two blocks per SM) next to the 8 x G accumulators. */
        constexpr int GP = G < 4 ? G : 4;
#pragma unroll
        for (int g0 = 0; g0 < G; g0 += GP) {
#pragma unroll 1
            for (int c = cb; c < ce; c++) {
                float kf[8];
                kcuda_h8_to_f32(ks[lane * rowu + c], kf);
#pragma unroll
                for (int g = g0; g < g0 + GP; g++) {
                    const float4 *q4 = reinterpret_cast<const float4 *>(qs + g * hd + c * 8);
                    const float4 a = q4[0], b = q4[1];
                    float s = sc[g];
                    s = fmaf(a.x, kf[0], s);
                    s = fmaf(a.y, kf[1], s);
                    s = fmaf(a.z, kf[2], s);
                    s = fmaf(a.w, kf[3], s);
                    s = fmaf(b.x, kf[4], s);
                    s = fmaf(b.y, kf[5], s);
                    s = fmaf(b.z, kf[6], s);
                    s = fmaf(b.w, kf[7], s);
                    sc[g] = s;
                }
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++)
            part[(warp * G + g) * DEC_TK + lane] = sc[g];
        __syncthreads();

        /* (2) online softmax of head `warp` over the tile */
        if (warp < G) {
            const int g = warp;
            float s = -INFINITY;
            if (lane < tv) {
                float d = 0.0f;
#pragma unroll
                for (int w = 0; w < DEC_WARPS; w++)
                    d += part[(w * G + g) * DEC_TK + lane];
                s = d * p.scale_log2;
            }
            const float m_new = fmaxf(m_run, kcuda_warp_max(s)); /* finite: tv >= 1 */
            const float alpha = exp2f(m_run - m_new);            /* 0 on the first tile */
            const float pr = lane < tv ? exp2f(s - m_new) : 0.0f;
            l_run = l_run * alpha + kcuda_warp_sum(pr);
            m_run = m_new;
            pt[lane * G + g] = pr;
            if (lane == 0)
                alpha_s[g] = alpha;
        }
        __syncthreads();

        /* (3) acc = alpha * acc + sum_t p_t * V_t over this thread's tokens */
        if (v_active) {
#pragma unroll
            for (int g = 0; g < G; g++) {
                const float a = alpha_s[g];
                if (a != 1.0f) /* the same for the whole block: no divergence */
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        acc[g][e] *= a;
            }
#pragma unroll 2
            for (int t = tl; t < tv; t += ntl) {
                float vf[8], pg[G];
                kcuda_h8_to_f32(vs[t * CH + cc], vf);
                if constexpr (G % 4 == 0) {
                    const float4 *p4 = reinterpret_cast<const float4 *>(pt + t * G);
#pragma unroll
                    for (int k = 0; k < G / 4; k++) {
                        const float4 x = p4[k];
                        pg[4 * k] = x.x, pg[4 * k + 1] = x.y, pg[4 * k + 2] = x.z, pg[4 * k + 3] = x.w;
                    }
                } else {
#pragma unroll
                    for (int g = 0; g < G; g++)
                        pg[g] = pt[t * G + g];
                }
#pragma unroll
                for (int g = 0; g < G; g++)
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        acc[g][e] = fmaf(pg[g], vf[e], acc[g][e]);
            }
        }
    }

    /* Sum the token lanes (fixed order), one head at a time through the
     * stage buffers, which are free once every copy has landed. */
    kcuda_cp_async_wait<0>();
    if (warp < G && lane == 0) {
        ml_s[2 * warp] = m_run;
        ml_s[2 * warp + 1] = l_run;
    }
    __syncthreads();
    float *red = reinterpret_cast<float *>(stage);
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (g >= ng)
            break;
        if (v_active) {
            float4 *r4 = reinterpret_cast<float4 *>(red + tl * hd + cc * 8);
            r4[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
            r4[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
        }
        __syncthreads();
        const float m = ml_s[2 * g], l = ml_s[2 * g + 1];
        for (int i = tid; i < hd; i += DEC_THREADS) {
            float o = 0.0f;
            for (int t = 0; t < ntl; t++)
                o += red[t * hd + i];
            if (p.ns == 1)
                kcuda_attn_store(p.out_f32, p.out_bf16, out_at + (size_t)g * hd + i,
                                 l > 0.0f ? o / l : 0.0f);
            else
                p.ws_acc[((wbase + g) * p.ns + split) * hd + i] = o;
        }
        if (p.ns > 1 && tid == 0) {
            p.ws_ml[((wbase + g) * p.ns + split) * 2] = m;
            p.ws_ml[((wbase + g) * p.ns + split) * 2 + 1] = l;
        }
        __syncthreads();
    }
}

/* Merges the splits of one (run, query head): with M the largest split
 * max, out = sum_k 2^(m_k - M) acc_k / sum_k 2^(m_k - M) l_k, splits in
 * order. Empty splits (sum 0) are skipped; an empty total gives zeros. */
__global__ void __launch_bounds__(COMBINE_THREADS)
    kcuda_attn_combine_kernel(float *out_f32, uint16_t *out_bf16, size_t ld_out,
                              const float *__restrict__ ws_acc, const float *__restrict__ ws_ml,
                              const kcuda_run *__restrict__ runs, int heads, int hd, int ns)
{
    const size_t w = blockIdx.x; /* run * heads + head */
    const int r = (int)(w / heads), head = (int)(w % heads);
    const float *ml = ws_ml + w * ns * 2;
    const float *acc = ws_acc + w * ns * hd;

    float M = -INFINITY;
    for (int k = 0; k < ns; k++)
        if (ml[2 * k + 1] > 0.0f)
            M = fmaxf(M, ml[2 * k]);
    float Lsum = 0.0f;
    for (int k = 0; k < ns; k++)
        if (ml[2 * k + 1] > 0.0f)
            Lsum = fmaf(ml[2 * k + 1], exp2f(ml[2 * k] - M), Lsum);
    const float inv = Lsum > 0.0f ? 1.0f / Lsum : 0.0f;

    const size_t out_at = (size_t)runs[r].row0 * ld_out + (size_t)head * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < ns; k++)
            if (ml[2 * k + 1] > 0.0f)
                o = fmaf(exp2f(ml[2 * k] - M), acc[(size_t)k * hd + i], o);
        kcuda_attn_store(out_f32, out_bf16, out_at + i, o * inv);
    }
}

/* ---- host side ---------------------------------------------------------- */

template <int G> static void *decode_kernel_ptr(void)
{
    return reinterpret_cast<void *>(&kcuda_attn_decode_kernel<G>);
}
static void *decode_kernel_for(int G)
{
    switch (G) {
    case 1: return decode_kernel_ptr<1>();
    case 2: return decode_kernel_ptr<2>();
    case 4: return decode_kernel_ptr<4>();
    default: return decode_kernel_ptr<8>();
    }
}
static int gtile_index(int G) { return G == 1 ? 0 : G == 2 ? 1 : G == 4 ? 2 : 3; }

/* Lets kernel G use the shared memory of the largest head_dim on the
 * current device (once per device). */
static cudaError_t decode_prepare(int G, int dev)
{
    static int done[64];
    const int bit = 1 << gtile_index(G);
    if (dev >= 0 && dev < 64 && (__atomic_load_n(&done[dev], __ATOMIC_RELAXED) & bit))
        return cudaSuccess;
    const int bytes = (int)dec_layout(KCUDA_ATTN_MAX_HD, G).total;
    cudaError_t err = cudaFuncSetAttribute(decode_kernel_for(G),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess)
        return err;
    if (dev >= 0 && dev < 64)
        __atomic_fetch_or(&done[dev], bit, __ATOMIC_RELAXED);
    return cudaSuccess;
}

/* Resident blocks per SM of the decode kernel for (G, hd), cached per
 * device; 2 where it cannot be asked (no device). */
static int decode_occupancy(int G, int hd)
{
    static int cache[64][4][KCUDA_ATTN_MAX_HD / 8 + 1];
    const int fallback = 2;
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return fallback;
    }
    const bool cacheable = dev >= 0 && dev < 64;
    if (cacheable && (n = __atomic_load_n(&cache[dev][gtile_index(G)][hd / 8], __ATOMIC_RELAXED)) > 0)
        return n;
    if (decode_prepare(G, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel_for(G), DEC_THREADS,
                                                      dec_layout(hd, G).total) != cudaSuccess ||
        n <= 0) {
        (void)cudaGetLastError();
        return fallback;
    }
    if (cacheable)
        __atomic_store_n(&cache[dev][gtile_index(G)][hd / 8], n, __ATOMIC_RELAXED);
    return n;
}

static size_t decode_min_pages(const kcuda_attn_args *a)
{
    return kcuda_attn_ceil_div(DEC_MIN_SPLIT_TOKENS, a->kv.page_size);
}

/* Decode's shape checks beyond kcuda_attn_shape_ok: the grid (n_runs *
 * n_kv_heads * head groups * splits blocks), the combine grid and the
 * workspace rows must fit an int for any split count. */
static bool decode_shape_ok(const kcuda_attn_args *a)
{
    if (!kcuda_attn_shape_ok(a))
        return false;
    /* head groups <= q_per_kv; kcuda_attn_shape_ok bounds the product by 2^26 */
    const size_t per_run = a->n_kv_heads * a->q_per_kv;
    return a->n_runs <= (size_t)INT32_MAX / DEC_MAX_SPLITS / per_run;
}

/* The split and workspace queries look at the shape only (the engine sizes
 * its workspace before it has staged any run). */
extern "C" int kcuda_attn_decode_splits(const kcuda_attn_args *a)
{
    if (!a || a->n_runs == 0 || !decode_shape_ok(a))
        return 1;
    const int G = kcuda_attn_gtile(a->q_per_kv);
    const size_t n_hg = kcuda_attn_ceil_div(a->q_per_kv, KCUDA_ATTN_MAX_G);
    const size_t base = a->n_runs * a->n_kv_heads * n_hg;
    /* At least two full waves of resident blocks, as long as every split
     * keeps DEC_MIN_SPLIT_TOKENS tokens' worth of pages. */
    const size_t target = 2 * (size_t)kcuda_attn_sm_count(132) * decode_occupancy(G, (int)a->head_dim);
    size_t ns = kcuda_attn_ceil_div(target, base);
    const size_t pages = kcuda_attn_ceil_div(a->max_ctx, a->kv.page_size);
    const size_t by_len = kcuda_attn_ceil_div(pages, decode_min_pages(a));
    if (ns > by_len)
        ns = by_len;
    if (ns > DEC_MAX_SPLITS)
        ns = DEC_MAX_SPLITS;
    return ns < 1 ? 1 : (int)ns;
}

extern "C" size_t kcuda_attn_decode_workspace(const kcuda_attn_args *a, int n_splits)
{
    if (!a || a->n_runs == 0 || n_splits < 0 || n_splits > DEC_MAX_SPLITS || !decode_shape_ok(a))
        return 0;
    const int ns = n_splits ? n_splits : kcuda_attn_decode_splits(a);
    if (ns <= 1)
        return 0; /* one split writes the output directly */
    /* decode_shape_ok bounds n_runs * n_kv_heads * q_per_kv * ns by INT32_MAX. */
    return a->n_runs * a->n_kv_heads * a->q_per_kv * (size_t)ns * (a->head_dim + 2) * sizeof(float);
}

extern "C" cudaError_t kcuda_attn_decode(const kcuda_attn_args *a, const kcuda_page_list *pages,
                                         int n_splits, void *workspace, size_t workspace_bytes,
                                         cudaStream_t stream)
{
    if (!a)
        return cudaErrorInvalidValue;
    if (a->n_runs == 0)
        return cudaSuccess;
    if (!kcuda_attn_args_ok(a) || !decode_shape_ok(a) || n_splits < 0 || n_splits > DEC_MAX_SPLITS)
        return cudaErrorInvalidValue;
    const bool sparse = pages && pages->sel;
    if (sparse && (!pages->n_sel || pages->sel_stride == 0))
        return cudaErrorInvalidValue;
    const int ns = n_splits ? n_splits : kcuda_attn_decode_splits(a);
    const size_t need = kcuda_attn_decode_workspace(a, ns);
    if (need > 0 && (!workspace || workspace_bytes < need || ((uintptr_t)workspace & 15) != 0))
        return cudaErrorInvalidValue;

    const int G = kcuda_attn_gtile(a->q_per_kv);
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(decode_prepare(G, dev));

    DecodeParams p;
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
    p.sel = sparse ? pages->sel : NULL;
    p.n_sel = sparse ? pages->n_sel : NULL;
    p.sel_stride = sparse ? pages->sel_stride : 0;
    p.n_kv = (int)a->n_kv_heads;
    p.qpk = (int)a->q_per_kv;
    p.hd = (int)a->head_dim;
    p.P = (int)a->kv.page_size;
    p.p_shift = kcuda_page_shift(a->kv.page_size);
    p.n_hg = (int)kcuda_attn_ceil_div(a->q_per_kv, KCUDA_ATTN_MAX_G);
    p.ns = ns;
    p.min_pages = (int)decode_min_pages(a);
    p.scale_log2 = a->scale * KCUDA_LOG2E;
    const size_t W = a->n_runs * a->n_kv_heads * a->q_per_kv * (size_t)ns;
    p.ws_acc = ns > 1 ? static_cast<float *>(workspace) : NULL;
    p.ws_ml = ns > 1 ? p.ws_acc + W * a->head_dim : NULL;

    const unsigned blocks = (unsigned)(a->n_runs * a->n_kv_heads * p.n_hg * ns);
    const unsigned smem = dec_layout(p.hd, G).total;
    switch (G) {
    case 1: kcuda_attn_decode_kernel<1><<<blocks, DEC_THREADS, smem, stream>>>(p); break;
    case 2: kcuda_attn_decode_kernel<2><<<blocks, DEC_THREADS, smem, stream>>>(p); break;
    case 4: kcuda_attn_decode_kernel<4><<<blocks, DEC_THREADS, smem, stream>>>(p); break;
    default: kcuda_attn_decode_kernel<8><<<blocks, DEC_THREADS, smem, stream>>>(p); break;
    }
    CUDA_CHECK_LAUNCH("kcuda_attn_decode_kernel");
    if (ns > 1) {
        const int heads = (int)(a->n_kv_heads * a->q_per_kv);
        kcuda_attn_combine_kernel<<<(unsigned)(a->n_runs * heads), COMBINE_THREADS, 0, stream>>>(
            a->out_f32, a->out_bf16, a->ld_out, p.ws_acc, p.ws_ml, a->runs, heads, p.hd, ns);
        CUDA_CHECK_LAUNCH("kcuda_attn_combine_kernel");
    }
    return cudaSuccess;
}
