/* Helpers shared by the paged attention kernels (kcuda_kv_append.cu,
 * kcuda_attn_decode.cu, kcuda_attn_prefill.cu): 16-byte f16 row pieces,
 * cp.async, output stores, and the host-side argument checks and device
 * facts (SM count) the launchers share.
 *
 * Conventions of these files: P = page size (tokens per page), hd = head
 * dim, G = query heads handled together for one KV head (the GQA group, or
 * 8 of them when q_per_kv > 8), "chunk" = 8 consecutive channels of a K or V
 * row = 16 bytes of f16, the unit of every K/V load. */
#ifndef PROTEUS_KCUDA_ATTN_COMMON_CUH
#define PROTEUS_KCUDA_ATTN_COMMON_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kcuda_attn.h"

/* head_dim must be a multiple of 8 (one chunk) up to this. */
#define KCUDA_ATTN_MAX_HD 256
/* Query heads one block handles; larger groups are cut into blocks of 8. */
#define KCUDA_ATTN_MAX_G 8
/* log2(e): the kernels take exponentials as exp2 of log2-scaled scores. */
#define KCUDA_LOG2E 1.4426950408889634f
/* Page sizes above this are refused, which keeps token indices in int. */
#define KCUDA_ATTN_MAX_PAGE 4096

/* ---- device side -------------------------------------------------------- */

/* 8 f16 (one uint4) to 8 floats, exactly. */
__device__ __forceinline__ void kcuda_h8_to_f32(uint4 u, float f[8])
{
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2 h;
        memcpy(&h, &w[i], sizeof h); /* a register move; no type punning */
        const float2 t = __half22float2(h);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

/* 8 floats to 8 f16 (round to nearest even), packed as one uint4. */
__device__ __forceinline__ uint4 kcuda_f32_to_h8(const float f[8])
{
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const __half2 h = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
        memcpy(&w[i], &h, sizeof h);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

/* Asynchronous 16-byte global -> shared copy that bypasses L1 (the K/V
 * stream is read once). */
__device__ __forceinline__ void kcuda_cp_async16(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void kcuda_cp_async_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
/* Waits until at most N of this thread's committed groups are pending. */
template <int N> __device__ __forceinline__ void kcuda_cp_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Division and remainder of a non-negative token index by the page size,
 * as shifts when the page size is a power of two (p_shift >= 0): page sizes
 * are, and integer division costs some twenty instructions. */
__device__ __forceinline__ int kcuda_page_div(int u, int P, int p_shift)
{
    return p_shift >= 0 ? u >> p_shift : u / P;
}
__device__ __forceinline__ int kcuda_page_mod(int u, int P, int p_shift)
{
    return p_shift >= 0 ? u & (P - 1) : u % P;
}

__device__ __forceinline__ float kcuda_warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* One output element, to whichever of the f32 and bf16 outputs exist; the
 * bf16 value is the round-to-nearest-even of the f32 one. */
__device__ __forceinline__ void kcuda_attn_store(float *out_f32, uint16_t *out_bf16, size_t at,
                                                 float v)
{
    if (out_f32)
        out_f32[at] = v;
    if (out_bf16)
        out_bf16[at] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

/* ---- host side ---------------------------------------------------------- */

static inline size_t kcuda_attn_ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

/* Query heads per block for a GQA group of q_per_kv: the next power of two,
 * at most 8 (the kernels are instantiated for 1, 2, 4 and 8; the heads a
 * block has beyond the group are computed on zero queries and not written). */
static inline int kcuda_attn_gtile(size_t q_per_kv)
{
    return q_per_kv > 4 ? 8 : q_per_kv > 2 ? 4 : (int)q_per_kv;
}

/* log2(P) when P is a power of two, else -1 (see kcuda_page_div). */
static inline int kcuda_page_shift(size_t P)
{
    if (P == 0 || (P & (P - 1)) != 0)
        return -1;
    int s = 0;
    while (((size_t)1 << s) < P)
        s++;
    return s;
}

/* Shape checks shared by decode and prefill (and by the workspace and split
 * queries, which look at nothing else). The caller handles a == NULL and
 * n_runs == 0 first. Host-side only: nothing here touches the device. */
static inline bool kcuda_attn_shape_ok(const kcuda_attn_args *a)
{
    const size_t hd = a->head_dim, P = a->kv.page_size;
    if (hd == 0 || hd % 8 != 0 || hd > KCUDA_ATTN_MAX_HD || hd != a->kv.head_dim)
        return false;
    if (P == 0 || P > KCUDA_ATTN_MAX_PAGE)
        return false;
    if (a->n_kv_heads == 0 || a->q_per_kv == 0 || a->n_kv_heads > 65536 || a->q_per_kv > 1024 ||
        a->n_runs > INT32_MAX)
        return false;
    if (a->ld_out < a->n_kv_heads * a->q_per_kv * hd)
        return false;
    if (!isfinite(a->scale))
        return false;
    /* Every run's context must fit its block-table row, and token indices
     * (up to bt_stride * P) must fit an int. */
    if (a->max_ctx == 0 || a->bt.bt_stride == 0 || a->bt.bt_stride > (size_t)INT32_MAX / P ||
        kcuda_attn_ceil_div(a->max_ctx, P) > a->bt.bt_stride)
        return false;
    return true;
}

/* The shape, and the pointers a launch needs (K/V data 16-byte aligned for
 * the 16-byte loads). */
static inline bool kcuda_attn_args_ok(const kcuda_attn_args *a)
{
    if (!a->in.q || (!a->out_f32 && !a->out_bf16) || !a->kv.data || !a->bt.block_tables ||
        !a->runs || a->kv.n_slots == 0)
        return false;
    if (((uintptr_t)a->kv.data & 15) != 0)
        return false;
    return kcuda_attn_shape_ok(a);
}

/* Streaming multiprocessors of the current device, queried once per device
 * and cached; `fallback` where there is no device (host-only callers). */
static inline int kcuda_attn_sm_count(int fallback)
{
    static int cache[64];
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return fallback;
    }
    if (dev >= 0 && dev < 64 && (v = __atomic_load_n(&cache[dev], __ATOMIC_RELAXED)) > 0)
        return v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0) {
        (void)cudaGetLastError();
        return fallback;
    }
    if (dev >= 0 && dev < 64)
        __atomic_store_n(&cache[dev], v, __ATOMIC_RELAXED);
    return v;
}

#endif
