/* Plain C references for the fused CUDA kernels and the GEMM of kcuda.h
 * ("Fused forms the CUDA backend uses", "GEMMs through cuBLASLt"). Same
 * arguments as the device functions, on host memory, no stream; enums are
 * passed as ints so this header needs no CUDA. Written for clarity, not speed.
 *
 * bf16 and f16 values are their IEEE bit patterns in a uint16_t. */
#ifndef PROTEUS_KCUDA_FUSED_REF_H
#define PROTEUS_KCUDA_FUSED_REF_H

#include <stddef.h>
#include <stdint.h>

#include "ref/kcuda_ref.h"

/* out[i][:] = bf16(rmsnorm(x[src][:]) * w), src = rows ? rows[i] : i: the float
 * values of kcuda_ref_rmsnorm (sum of squares in double), rounded once. Only
 * the first D elements of each out row are written. */
void kcuda_ref_rmsnorm_bf16(uint16_t *out, size_t ld_out, const float *x, size_t ld_x,
                            const int32_t *rows, const float *w, size_t T, size_t D, float eps);

/* The chunk-layout QKV row (per group: q_per_kv query heads, K head, V head):
 * adds bias (NULL = none) to the whole row, then rotates the query heads and
 * the K head of each group as kcuda_ref_rope does. neox: 0 = KCUDA_ROPE_NORM,
 * 1 = KCUDA_ROPE_NEOX. */
void kcuda_ref_qkv_bias_rope(float *qkv, size_t ld, const float *bias, const int32_t *pos,
                             const float *inv_freq, size_t T, size_t n_groups, size_t q_per_kv,
                             size_t head_dim, size_t n_rot, int neox);

/* out[t][m * chunk + i] = bf16(silu(g) * u) with g = gu[t][2 * m * chunk + i]
 * and u = gu[t][2 * m * chunk + chunk + i], silu as in kcuda_ref_swiglu. */
void kcuda_ref_swiglu_chunked_bf16(uint16_t *out, size_t ld_out, const float *gu, size_t ld_gu,
                                   size_t T, size_t n_chunks, size_t chunk);

/* x[i] += ((part_0[i] + part_1[i]) + ... + part_{n_chunks-1}[i]), chunk c at
 * part + c * chunk_stride: the fold of row-parallel partial sums, in float,
 * left to right (the CPU engine's fold_into). */
void kcuda_ref_fold_partials(float *x, const float *part, size_t n_chunks, size_t chunk_stride,
                             size_t n);

/* Y (T, N) = beta * Y + X W^T, exactly as kcuda_gemm defines it: X (T, K)
 * rows ldx apart; W (N, K) rows ldw apart when w_kn == 0 (KCUDA_W_NK), else
 * (K, N) rows ldw apart (KCUDA_W_KN); elements bf16 when f16 == 0, else f16.
 * The sum is taken in double over the exactly widened inputs and rounded to
 * float once. When beta == 0, Y is not read (NaNs in it do not propagate).
 * When abs_sum is not NULL it receives, laid out like Y, the scale of the
 * rounding error any f32 evaluation may make:
 * sum_k |x[t][k] w[n][k]| + |beta * Y[t][n]|. */
void kcuda_ref_gemm(float *Y, size_t ldy, float *abs_sum, const uint16_t *X, size_t ldx,
                    const uint16_t *W, size_t ldw, int w_kn, int f16, size_t T, size_t N,
                    size_t K, float beta);

#endif
