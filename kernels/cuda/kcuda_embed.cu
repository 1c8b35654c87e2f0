/* Embedding gather: one block per token copies (and widens) its table row. */
#include "kcuda.h"
#include "check.h"
#include "kcuda_common.cuh"

/* bf16 is the top half of an fp32: widening is a shift, exact for every bit
 * pattern including NaNs. */
__device__ __forceinline__ float kcuda_bf16_to_f32(uint16_t h)
{
    return __uint_as_float((unsigned)h << 16);
}

__device__ __forceinline__ float kcuda_load_f32(const float *p) { return *p; }
__device__ __forceinline__ float kcuda_load_f32(const uint16_t *p) { return kcuda_bf16_to_f32(*p); }

template <typename T>
__global__ void kcuda_embed_kernel(float *__restrict__ out, const T *__restrict__ table,
                                   const int32_t *__restrict__ ids, size_t D, size_t n_vocab)
{
    const size_t t = blockIdx.x;
    const int32_t id = ids[t];
    float *yr = out + t * D;
    if (id < 0 || (size_t)id >= n_vocab) {
        for (size_t i = threadIdx.x; i < D; i += blockDim.x)
            yr[i] = 0.0f;
        return;
    }
    const T *row = table + (size_t)id * D;
    for (size_t i = threadIdx.x; i < D; i += blockDim.x)
        yr[i] = kcuda_load_f32(row + i);
}

template <typename T>
static cudaError_t kcuda_embed(float *out, const T *table, const int32_t *ids, size_t T_,
                               size_t D, size_t n_vocab, cudaStream_t stream)
{
    if (T_ == 0 || D == 0)
        return cudaSuccess;
    if (!out || !table || !ids || T_ > INT32_MAX)
        return cudaErrorInvalidValue;
    kcuda_embed_kernel<T><<<(unsigned)T_, KCUDA_BLOCK, 0, stream>>>(out, table, ids, D, n_vocab);
    CUDA_CHECK_LAUNCH("kcuda_embed_kernel");
    return cudaSuccess;
}

extern "C" cudaError_t kcuda_embed_f32(float *out, const float *table, const int32_t *ids,
                                       size_t T, size_t D, size_t n_vocab, cudaStream_t stream)
{
    return kcuda_embed<float>(out, table, ids, T, D, n_vocab, stream);
}

extern "C" cudaError_t kcuda_embed_bf16(float *out, const uint16_t *table, const int32_t *ids,
                                        size_t T, size_t D, size_t n_vocab, cudaStream_t stream)
{
    return kcuda_embed<uint16_t>(out, table, ids, T, D, n_vocab, stream);
}
