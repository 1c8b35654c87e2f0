/* RMSNorm: one block per row. Each thread accumulates the squares of a strided
 * subset of the row, warps reduce with shuffles, and warp 0 reduces the warp
 * sums. The order of additions depends only on D and the block size, never on
 * the number of rows. */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"

/* No __restrict__: out may equal x. That is safe because each thread writes
 * only the elements it read itself. */
__global__ void kcuda_rmsnorm_kernel(float *out, const float *x, const float *w, int D, float eps)
{
    const size_t row = blockIdx.x;
    const float *xr = x + row * (size_t)D;
    float *yr = out + row * (size_t)D;

    const float scale = kcuda_rms_scale(xr, D, eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

extern "C" cudaError_t kcuda_rmsnorm(float *out, const float *x, const float *w, size_t T,
                                     size_t D, float eps, cudaStream_t stream)
{
    if (T == 0 || D == 0)
        return cudaSuccess;
    if (!out || !x || !w || D > INT32_MAX || T > INT32_MAX || !(eps >= 0.0f))
        return cudaErrorInvalidValue;
    kcuda_rmsnorm_kernel<<<(unsigned)T, KCUDA_BLOCK, 0, stream>>>(out, x, w, (int)D, eps);
    CUDA_CHECK_LAUNCH("kcuda_rmsnorm_kernel");
    return cudaSuccess;
}
