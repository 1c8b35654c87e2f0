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

#endif
