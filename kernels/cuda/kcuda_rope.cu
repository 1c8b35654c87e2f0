/* RoPE in place: one thread per (token, head, pair). The multiplications are
 * written with __fmul_rn/__fadd_rn so nvcc does not fuse them into FMAs; the
 * only difference from the C reference is then the device's sincos (in
 * double, rounded to float: nearly always the same bits as libm's). */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"

__global__ void kcuda_rope_kernel(float *x, const int32_t *pos, const float *inv_freq,
                                  size_t n_pairs_total, unsigned H, unsigned head_dim,
                                  size_t token_stride, unsigned half, int neox)
{
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n_pairs_total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const unsigned p = (unsigned)(idx % half);
        const size_t th = idx / half;
        const unsigned h = (unsigned)(th % H);
        const size_t t = th / H;
        float *xh = x + t * token_stride + (size_t)h * head_dim;

        float s, c;
        kcuda_rope_cos_sin(pos[t], inv_freq[p], &c, &s);
        const unsigned i0 = neox ? p : 2 * p;
        const unsigned i1 = neox ? p + half : 2 * p + 1;
        const float a = xh[i0], b = xh[i1];
        xh[i0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        xh[i1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
}

extern "C" cudaError_t kcuda_rope(float *x, const int32_t *pos, const float *inv_freq, size_t T,
                                  size_t H, size_t head_dim, size_t token_stride, size_t n_rot,
                                  kcuda_rope_style style, cudaStream_t stream)
{
    if (style != KCUDA_ROPE_NORM && style != KCUDA_ROPE_NEOX)
        return cudaErrorInvalidValue;
    if (n_rot % 2 != 0 || n_rot > head_dim || head_dim > UINT32_MAX || H > UINT32_MAX)
        return cudaErrorInvalidValue;
    if (T == 0 || H == 0 || n_rot == 0)
        return cudaSuccess;
    if (!x || !pos || !inv_freq || (T > 1 && token_stride < H * head_dim))
        return cudaErrorInvalidValue;
    const size_t half = n_rot / 2;
    const size_t total = T * H * half;
    kcuda_rope_kernel<<<kcuda_grid_1d(total), KCUDA_BLOCK, 0, stream>>>(
        x, pos, inv_freq, total, (unsigned)H, (unsigned)head_dim, token_stride, (unsigned)half,
        style == KCUDA_ROPE_NEOX);
    CUDA_CHECK_LAUNCH("kcuda_rope_kernel");
    return cudaSuccess;
}
