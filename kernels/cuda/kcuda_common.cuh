/* Shared helpers for the .cu files of this directory (device side only). */
#ifndef PROTEUS_KCUDA_COMMON_CUH
#define PROTEUS_KCUDA_COMMON_CUH

#include <stddef.h>
#include <stdint.h>

/* Threads per block for the elementwise and per-row kernels. */
#define KCUDA_BLOCK 256

/* Blocks for a grid-stride loop over n elements: enough to fill the device,
 * capped so the grid size stays a small int whatever n is. */
static inline unsigned kcuda_grid_1d(size_t n)
{
    size_t blocks = (n + KCUDA_BLOCK - 1) / KCUDA_BLOCK;
    const size_t cap = (size_t)1 << 16;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* Sum over the 32 lanes of a warp with a fixed butterfly order; every lane
 * gets the same result. */
__device__ __forceinline__ float kcuda_warp_sum(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* cos and sin of the RoPE angle pos * inv_freq, taken in double as the CPU
 * engine does (kcpu_rope): in float the product alone is off by up to half
 * an ulp of the angle, 0.004 rad at position 65536, which long contexts feel. */
__device__ __forceinline__ void kcuda_rope_cos_sin(int32_t pos, float inv_freq, float *c, float *s)
{
    double sd, cd;
    sincos((double)pos * (double)inv_freq, &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}

/* 1 / sqrt(mean(x^2) + eps) of one row of D floats, computed by the whole
 * block (every thread gets it): per-thread fmaf sums in a fixed stride, a
 * warp butterfly, then the warps' sums in warp order. The same bits in every
 * kernel that normalizes a row (kcuda_rmsnorm, kcuda_rmsnorm_bf16). */
__device__ __forceinline__ float kcuda_rms_scale(const float *xr, int D, float eps)
{
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i];
        ss = fmaf(v, v, ss);
    }
    ss = kcuda_warp_sum(ss);

    __shared__ float warp_ss[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0)
        warp_ss[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        ss = lane < (int)(blockDim.x >> 5) ? warp_ss[lane] : 0.0f;
        ss = kcuda_warp_sum(ss);
        if (lane == 0)
            warp_ss[0] = ss;
    }
    __syncthreads();
    return rsqrtf(warp_ss[0] / (float)D + eps);
}

#endif
