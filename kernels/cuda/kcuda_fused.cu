/* Fused forms the CUDA backend uses around its bf16 GEMMs: RMSNorm to bf16
 * (with an optional row gather), bias + RoPE over a fused QKV row in the chunk
 * layout, SwiGLU over a chunked gate|up row to bf16, f32 -> bf16, and the fold of
 * row-parallel partial sums into the residual stream.
 *
 * Each keeps the float math of the unfused kernel it replaces (kcuda_rmsnorm,
 * kcuda_rope, kcuda_swiglu), operation for operation, so that the fused and
 * unfused paths give the same floats; the bf16 forms then round those floats
 * once, to nearest even (cvt.rn.bf16.f32). T = tokens (rows), D = row width. */
#include <cuda_bf16.h>

#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"

/* Round to nearest even; a NaN gives the canonical bf16 NaN. */
__device__ __forceinline__ uint16_t kcuda_bf16_bits(float v)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

/* ---- RMSNorm to bf16 ---------------------------------------------------------- */

/* One block of KCUDA_BLOCK threads per output row. The sum of squares, its
 * reduction order and the scale are exactly those of kcuda_rmsnorm_kernel
 * (same block size, same strided fmaf, same butterflies), so the floats before
 * rounding equal kcuda_rmsnorm's bit for bit. out must not overlap x. */
__global__ void kcuda_rmsnorm_bf16_kernel(uint16_t *__restrict__ out, size_t ld_out,
                                          const float *__restrict__ x, size_t ld_x,
                                          const int32_t *__restrict__ rows,
                                          const float *__restrict__ w, int D, float eps)
{
    const size_t row = blockIdx.x;
    const size_t src = rows ? (size_t)rows[row] : row;
    const float *xr = x + src * ld_x;
    uint16_t *yr = out + row * ld_out;

    const float scale = kcuda_rms_scale(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        yr[i] = kcuda_bf16_bits(__fmul_rn(__fmul_rn(xr[i], scale), w[i]));
}

extern "C" cudaError_t kcuda_rmsnorm_bf16(uint16_t *out, size_t ld_out, const float *x,
                                          size_t ld_x, const int32_t *rows, const float *w,
                                          size_t T, size_t D, float eps, cudaStream_t stream)
{
    if (T == 0 || D == 0)
        return cudaSuccess;
    if (!out || !x || !w || D > INT32_MAX || T > INT32_MAX || !(eps >= 0.0f))
        return cudaErrorInvalidValue;
    /* With a gather any row of x may be read, so its stride matters even for
     * one output row. */
    if ((T > 1 && ld_out < D) || ((T > 1 || rows) && ld_x < D))
        return cudaErrorInvalidValue;
    kcuda_rmsnorm_bf16_kernel<<<(unsigned)T, KCUDA_BLOCK, 0, stream>>>(out, ld_out, x, ld_x, rows,
                                                                      w, (int)D, eps);
    CUDA_CHECK_LAUNCH("kcuda_rmsnorm_bf16_kernel");
    return cudaSuccess;
}

/* ---- QKV bias + RoPE ---------------------------------------------------------- */

/* One thread per work item of a head. A head's items are its n_rot / 2 rotated
 * pairs, in the pairing of the style, then (only when there is a bias) its
 * head_dim - n_rot unrotated dims one by one; together they cover the head
 * once. Query heads and the K head (h <= q_per_kv) rotate their pairs; the V
 * head (h == q_per_kv + 1, present only with a bias) just adds the bias to
 * them. The rotation is kcuda_rope_kernel's, on the biased values.
 *
 * Item index, fastest first: k (item in head, < head_items), h (head in
 * group, < heads), g (group, < n_groups), t (token). */
__global__ void kcuda_qkv_bias_rope_kernel(float *__restrict__ qkv, size_t ld,
                                           const float *__restrict__ bias,
                                           const int32_t *__restrict__ pos,
                                           const float *__restrict__ inv_freq, size_t total,
                                           unsigned tok_items, unsigned head_items,
                                           unsigned heads, unsigned group_stride,
                                           unsigned head_dim, unsigned n_rot, unsigned q_per_kv,
                                           int neox)
{
    const unsigned half = n_rot / 2;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / tok_items;
        unsigned r = (unsigned)(idx - t * tok_items);
        const unsigned k = r % head_items;
        r /= head_items;
        const unsigned h = r % heads, g = r / heads;
        const unsigned off = g * group_stride + h * head_dim; /* < row width, fits */
        float *xh = qkv + t * ld + off;
        const float *bh = bias ? bias + off : nullptr;

        if (k < half) {
            const unsigned i0 = neox ? k : 2 * k;
            const unsigned i1 = neox ? k + half : 2 * k + 1;
            float a = xh[i0], b = xh[i1];
            if (bh) {
                a = __fadd_rn(a, bh[i0]);
                b = __fadd_rn(b, bh[i1]);
            }
            if (h <= q_per_kv) {
                float s, c;
                kcuda_rope_cos_sin(pos[t], inv_freq[k], &c, &s);
                xh[i0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
                xh[i1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
            } else {
                xh[i0] = a;
                xh[i1] = b;
            }
        } else {
            /* Unrotated dims exist as items only when bias is set. */
            const unsigned e = n_rot + (k - half);
            xh[e] = __fadd_rn(xh[e], bh[e]);
        }
    }
}

extern "C" cudaError_t kcuda_qkv_bias_rope(float *qkv, size_t ld, const float *bias,
                                           const int32_t *pos, const float *inv_freq, size_t T,
                                           size_t n_groups, size_t q_per_kv, size_t head_dim,
                                           size_t n_rot, kcuda_rope_style style,
                                           cudaStream_t stream)
{
    if (style != KCUDA_ROPE_NORM && style != KCUDA_ROPE_NEOX)
        return cudaErrorInvalidValue;
    if (n_rot % 2 != 0 || n_rot > head_dim)
        return cudaErrorInvalidValue;
    if (T == 0 || n_groups == 0 || head_dim == 0 || (!bias && n_rot == 0))
        return cudaSuccess;
    if (!qkv || (n_rot > 0 && (!pos || !inv_freq)))
        return cudaErrorInvalidValue;
    /* Row widths up to INT32_MAX floats; every offset within a row then fits
     * in 32 bits. Each product is checked before the next can overflow. */
    if (T > INT32_MAX || n_groups > INT32_MAX || q_per_kv > INT32_MAX || head_dim > INT32_MAX)
        return cudaErrorInvalidValue;
    const size_t group_stride = (q_per_kv + 2) * head_dim;
    if (group_stride > INT32_MAX || n_groups * group_stride > INT32_MAX)
        return cudaErrorInvalidValue;
    const size_t row = n_groups * group_stride;
    if (T > 1 && ld < row)
        return cudaErrorInvalidValue;

    /* Without a bias only the rotated pairs of Q and K change. */
    const size_t half = n_rot / 2;
    const size_t heads = bias ? q_per_kv + 2 : q_per_kv + 1;
    const size_t head_items = bias ? half + (head_dim - n_rot) : half;
    const size_t tok_items = n_groups * heads * head_items; /* <= row */
    const size_t total = T * tok_items;
    kcuda_qkv_bias_rope_kernel<<<kcuda_grid_1d(total), KCUDA_BLOCK, 0, stream>>>(
        qkv, ld, bias, pos, inv_freq, total, (unsigned)tok_items, (unsigned)head_items,
        (unsigned)heads, (unsigned)group_stride, (unsigned)head_dim, (unsigned)n_rot,
        (unsigned)q_per_kv, style == KCUDA_ROPE_NEOX);
    CUDA_CHECK_LAUNCH("kcuda_qkv_bias_rope_kernel");
    return cudaSuccess;
}

/* ---- SwiGLU over chunked gate|up, to bf16 ------------------------------------- */

/* One thread per output element j = m * chunk + i of row t; its gate is column
 * m * 2 * chunk + i of gu and its up `chunk` columns later. The silu and the
 * product are kcuda_swiglu_kernel's expression. out must not overlap gu. */
__global__ void kcuda_swiglu_chunked_bf16_kernel(uint16_t *__restrict__ out, size_t ld_out,
                                                 const float *__restrict__ gu, size_t ld_gu,
                                                 size_t total, unsigned D, unsigned chunk)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / D;
        const unsigned j = (unsigned)(idx - t * D);
        const unsigned m = j / chunk, i = j - m * chunk;
        const float *gr = gu + t * ld_gu + 2 * (size_t)m * chunk + i;
        const float g = gr[0];
        const float silu = g / (1.0f + expf(-g));
        out[t * ld_out + j] = kcuda_bf16_bits(silu * gr[chunk]);
    }
}

extern "C" cudaError_t kcuda_swiglu_chunked_bf16(uint16_t *out, size_t ld_out, const float *gu,
                                                 size_t ld_gu, size_t T, size_t n_chunks,
                                                 size_t chunk, cudaStream_t stream)
{
    if (T == 0 || n_chunks == 0 || chunk == 0)
        return cudaSuccess;
    if (!out || !gu)
        return cudaErrorInvalidValue;
    /* 2 * D (the gate|up width) must fit in 32 bits as well. */
    if (n_chunks > INT32_MAX || chunk > INT32_MAX || n_chunks * chunk > INT32_MAX / 2)
        return cudaErrorInvalidValue;
    const size_t D = n_chunks * chunk;
    if (T > 1 && (ld_out < D || ld_gu < 2 * D))
        return cudaErrorInvalidValue;
    const size_t total = T * D; /* T * 2^30 at most: no overflow in 64 bits */
    kcuda_swiglu_chunked_bf16_kernel<<<kcuda_grid_1d(total), KCUDA_BLOCK, 0, stream>>>(
        out, ld_out, gu, ld_gu, total, (unsigned)D, (unsigned)chunk);
    CUDA_CHECK_LAUNCH("kcuda_swiglu_chunked_bf16_kernel");
    return cudaSuccess;
}

/* ---- f32 -> bf16 -------------------------------------------------------------- */

__global__ void kcuda_f32_to_bf16_kernel(uint16_t *__restrict__ out, const float *__restrict__ in,
                                         size_t n)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x)
        out[idx] = kcuda_bf16_bits(in[idx]);
}

extern "C" cudaError_t kcuda_f32_to_bf16(uint16_t *out, const float *in, size_t n,
                                         cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    if (!out || !in)
        return cudaErrorInvalidValue;
    kcuda_f32_to_bf16_kernel<<<kcuda_grid_1d(n), KCUDA_BLOCK, 0, stream>>>(out, in, n);
    CUDA_CHECK_LAUNCH("kcuda_f32_to_bf16_kernel");
    return cudaSuccess;
}

/* ---- fold of row-parallel partial sums ----------------------------------------- */

/* __fadd_rn: each add rounded on its own, in the reference's order, whatever
 * the compiler would otherwise reassociate or fuse. */
__global__ void kcuda_fold_partials_kernel(float *__restrict__ x, const float *__restrict__ part,
                                           size_t n_chunks, size_t chunk_stride, size_t n)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        float acc = part[idx];
        for (size_t c = 1; c < n_chunks; c++)
            acc = __fadd_rn(acc, part[c * chunk_stride + idx]);
        x[idx] = __fadd_rn(x[idx], acc);
    }
}

extern "C" cudaError_t kcuda_fold_partials(float *x, const float *part, size_t n_chunks,
                                           size_t chunk_stride, size_t n, cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    if (!x || !part || n_chunks == 0 || (n_chunks > 1 && chunk_stride < n))
        return cudaErrorInvalidValue;
    kcuda_fold_partials_kernel<<<kcuda_grid_1d(n), KCUDA_BLOCK, 0, stream>>>(x, part, n_chunks,
                                                                           chunk_stride, n);
    CUDA_CHECK_LAUNCH("kcuda_fold_partials_kernel");
    return cudaSuccess;
}
