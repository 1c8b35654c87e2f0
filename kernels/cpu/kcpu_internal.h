/* Internal interface between the CPU matmul dispatcher (matmul.c), the
 * reference definitions (quant_ref.c) and the ISA-specific kernels
 * (matmul_avx2.c, matmul_avx512.c). Not part of the public kernel API. */
#ifndef PROTEUS_KCPU_INTERNAL_H
#define PROTEUS_KCPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proteus/dtype.h"

/* Reference dot product of one weight row (type wtype) with one activation
 * row already in kcpu_act_type(wtype). This is the definition every fast
 * path must agree with: integer sums per block are exact, each block's term
 * is formed in float, and blocks are accumulated in double. */
float kcpu_ref_dot(pt_dtype wtype, const void *w, const void *x, size_t K);

/* Reference activation quantizers (deterministic per row). */
void kcpu_ref_quantize_q8_0(pt_block_q8_0 *dst, const float *x, size_t K);
void kcpu_ref_quantize_q8_1(pt_block_q8_1 *dst, const float *x, size_t K);
void kcpu_ref_quantize_q8_k(pt_block_q8_k *dst, const float *x, size_t K);

/* Fast paths. Each returns false, computing nothing, when it has no kernel
 * for wtype, so the dispatcher can fall back to a lower ISA. Arguments are
 * those of kcpu_matmul. */
bool kcpu_matmul_avx2(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                      const void *X, size_t x_stride, size_t T, size_t K, float *Y, size_t ldy);
bool kcpu_matmul_avx512(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                        const void *X, size_t x_stride, size_t T, size_t K, float *Y,
                        size_t ldy);

/* Fast Q8_0 / Q8_1 activation quantization (atype is the activation type):
 * the same bytes as kcpu_ref_quantize_q8_0 / _q8_1. */
void kcpu_quantize_act_avx512(pt_dtype atype, void *dst, const float *x, size_t K);

/* ---- attention (attn.c, attn_avx2.c, attn_avx512.c) ----
 * One query's online-softmax update over the first n rows of one head page:
 * K rows at k, V rows at v, hd elements each of kv_type (F32, F16 or BF16).
 * st is (m[n_q], l[n_q], o[n_q * hd]). The order of operations is defined in
 * attn.c; the fast paths take hd a multiple of 16 up to KCPU_ATTN_MAX_HD and
 * give the reference's bits. */
#define KCPU_ATTN_MAX_HD 256
void kcpu_attn_page_ref(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                        uint32_t n, float scale);
void kcpu_attn_page_avx2(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                         uint32_t n, float scale);
void kcpu_attn_page_avx512(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v,
                           int kv_type, uint32_t n, float scale);

/* dst[i] = element i of src (F16 or BF16) as F32, i < n: exact. */
void kcpu_widen_ref(float *dst, const void *src, int type, size_t n);
void kcpu_widen_avx2(float *dst, const void *src, int type, size_t n);
void kcpu_widen_avx512(float *dst, const void *src, int type, size_t n);

/* exp(x) for x <= 0 as attention computes it (0 below KCPU_EXP_MIN, where
 * 2^n would leave the normal range): n = round(x log2 e), r = x - n ln 2 in
 * two fma steps, a degree-6 Taylor polynomial in r by Horner with fma, times
 * 2^n. The vector paths perform the same operations. */
float kcpu_attn_exp(float x);
#define KCPU_EXP_MIN (-87.0f)
#define KCPU_LOG2E 1.44269504f
#define KCPU_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define KCPU_LN2_HI 0.693359375f
#define KCPU_LN2_LO (-2.12194440e-4f)
#define KCPU_EXP_C6 (1.0f / 720.0f)
#define KCPU_EXP_C5 (1.0f / 120.0f)
#define KCPU_EXP_C4 (1.0f / 24.0f)
#define KCPU_EXP_C3 (1.0f / 6.0f)
#define KCPU_EXP_C2 0.5f

/* Unaligned little-endian loads of block fields: blocks sit at any byte
 * offset a model file gives them, so fields are never read through casts. */
static inline uint16_t kcpu_load_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline float kcpu_load_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

/* Row/token tiling shared by the fast paths. TILE(w, x, y, nr, nt) computes
 * nr <= MR rows by nt <= MT tokens; rows are the outer loop so a strip of
 * weight rows stays in L1 while the tokens stream past it. Any n0/n1 works:
 * a short last tile just runs with a smaller nr, and every (row, token) pair
 * executes the same operations whatever nr and nt are.
 *
 * Weights stream from DRAM once per call, so before a strip's first tile the
 * strip about KCPU_PF_BYTES ahead is prefetched (and the first KCPU_PF_BYTES
 * of the range up front): misses overlap instead of stalling one by one.
 * Prefetches move data only; results do not depend on them. */
#define KCPU_PF_BYTES 10240
#define KCPU_DRIVE(TILE, MR, MT)                                                       \
    do {                                                                               \
        const size_t sb_ = (MR) * w_stride;                                            \
        const size_t pfd_ = (KCPU_PF_BYTES + sb_ - 1) / sb_ * sb_;                     \
        const uint8_t *w0_ = (const uint8_t *)W + n0 * w_stride;                       \
        const size_t head_ = pfd_ < (n1 - n0) * w_stride ? pfd_ : (n1 - n0) * w_stride; \
        for (size_t o_ = 0; o_ < head_; o_ += 64) __builtin_prefetch(w0_ + o_, 0, 3);  \
        for (size_t n_ = n0; n_ < n1; n_ += (MR)) {                                    \
            size_t nr_ = n1 - n_ < (MR) ? n1 - n_ : (MR);                              \
            const uint8_t *w_ = (const uint8_t *)W + n_ * w_stride;                    \
            for (size_t o_ = 0; o_ < sb_; o_ += 64) __builtin_prefetch(w_ + pfd_ + o_, 0, 3); \
            for (size_t t_ = 0; t_ < T; t_ += (MT)) {                                  \
                size_t nt_ = T - t_ < (MT) ? T - t_ : (MT);                            \
                TILE(w_, w_stride, (const uint8_t *)X + t_ * x_stride, x_stride, K,    \
                     Y + t_ * ldy + n_, ldy, nr_, nt_);                                \
            }                                                                          \
        }                                                                              \
    } while (0)

/* Expands to a switch calling FN(args..., NR, NT) with NR, NT compile-time
 * constants, so each tile shape gets a fully unrolled instance. */
#define KCPU_CASE(FN, NR, NT, ...) \
    case (NR) * 8 + (NT):          \
        FN(__VA_ARGS__, NR, NT);   \
        break;
#define KCPU_SWITCH_4x4(FN, nr, nt, ...)                                              \
    switch ((nr) * 8 + (nt)) {                                                         \
        KCPU_CASE(FN, 1, 1, __VA_ARGS__) KCPU_CASE(FN, 1, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 1, 3, __VA_ARGS__) KCPU_CASE(FN, 1, 4, __VA_ARGS__)              \
        KCPU_CASE(FN, 2, 1, __VA_ARGS__) KCPU_CASE(FN, 2, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 2, 3, __VA_ARGS__) KCPU_CASE(FN, 2, 4, __VA_ARGS__)              \
        KCPU_CASE(FN, 3, 1, __VA_ARGS__) KCPU_CASE(FN, 3, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 3, 3, __VA_ARGS__) KCPU_CASE(FN, 3, 4, __VA_ARGS__)              \
        KCPU_CASE(FN, 4, 1, __VA_ARGS__) KCPU_CASE(FN, 4, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 4, 3, __VA_ARGS__) KCPU_CASE(FN, 4, 4, __VA_ARGS__)              \
        default: break;                                                                \
    }
#define KCPU_SWITCH_4x2(FN, nr, nt, ...)                                              \
    switch ((nr) * 8 + (nt)) {                                                         \
        KCPU_CASE(FN, 1, 1, __VA_ARGS__) KCPU_CASE(FN, 1, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 2, 1, __VA_ARGS__) KCPU_CASE(FN, 2, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 3, 1, __VA_ARGS__) KCPU_CASE(FN, 3, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 4, 1, __VA_ARGS__) KCPU_CASE(FN, 4, 2, __VA_ARGS__)              \
        default: break;                                                                \
    }
#define KCPU_SWITCH_2x2(FN, nr, nt, ...)                                              \
    switch ((nr) * 8 + (nt)) {                                                         \
        KCPU_CASE(FN, 1, 1, __VA_ARGS__) KCPU_CASE(FN, 1, 2, __VA_ARGS__)              \
        KCPU_CASE(FN, 2, 1, __VA_ARGS__) KCPU_CASE(FN, 2, 2, __VA_ARGS__)              \
        default: break;                                                                \
    }

#endif
