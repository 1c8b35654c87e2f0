/* AVX2 + FMA + F16C matmul kernels for every weight type.
 *
 * Each kernel is a tile of NR weight rows by NT tokens with one accumulator
 * vector per (row, token) pair. NR and NT are compile-time constants of each
 * instance, and a pair's accumulator sees the same operations in the same
 * order in every instance; the final horizontal sum is one fixed function.
 * So an element's value does not depend on the tile it was computed in
 * (kcpu_matmul.h's determinism contract). All float arithmetic is written as
 * explicit intrinsics (mul, fmadd), never as a * b + c, so that compiler FP
 * contraction cannot fuse differently in different instances.
 *
 * Integer products use maddubs (unsigned x signed bytes -> int16 pairs), then
 * madd with 1 (or with a sub-block scale) into int32 lanes. The unsigned side
 * is always the weight's quant (Q4: 0..15, Q6_K: 0..63, Q8_0: |w| with the
 * sign moved onto the activation), so no int16 sum can saturate given the
 * activations' range -127..127. */
#include <immintrin.h>

#include "cpu/kcpu_internal.h"
#include "cpu/kcpu_matmul.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE float ld_f16(const uint8_t *p) { return _cvtsh_ss(kcpu_load_u16(p)); }

/* ------------------------------------------------ Q4_0, Q4_1, Q8_0 (32-blocks)
 * WT: 0 = Q4_0 x Q8_0, 1 = Q4_1 x Q8_1, 2 = Q8_0 x Q8_0.
 * Per block and pair: p = int32 lanes of sum(q * a); acc += p * (dw * da);
 * for Q4_1 also acc += (m / 8) * s in each of the 8 lanes, which sums to
 * m * s (dividing by 8 is exact). Q4_0's -8 offset: p -= 8 * sum(a). */
INLINE void tile_b32(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K,
                     float *Y, size_t ldy, const int WT, const int NR, const int NT) {
    const size_t wb = WT == 0 ? sizeof(pt_block_q4_0) : WT == 1 ? sizeof(pt_block_q4_1) : sizeof(pt_block_q8_0);
    const size_t xb = WT == 1 ? sizeof(pt_block_q8_1) : sizeof(pt_block_q8_0);
    const size_t wq = WT == 1 ? 4 : 2, xq = WT == 1 ? 4 : 2;
    const size_t nb = K / PT_QK;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[4][4];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        __m256i q[4], wsgn[4];
        __m256 dw[4], mw[4];
        for (int r = 0; r < NR; r++) {
            const uint8_t *w = W + r * ws + b * wb;
            if (WT == 2) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + wq));
                q[r] = _mm256_abs_epi8(v);
                wsgn[r] = v;
            } else {
                __m128i raw = _mm_loadu_si128((const __m128i *)(w + wq));
                q[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4);
            }
            dw[r] = _mm256_set1_ps(ld_f16(w));
            if (WT == 1) mw[r] = _mm256_set1_ps(ld_f16(w + 2) * 0.125f);
        }
        for (int t = 0; t < NT; t++) {
            const uint8_t *x = X + t * xs + b * xb;
            __m256i a = _mm256_loadu_si256((const __m256i *)(x + xq));
            __m256 da = _mm256_set1_ps(ld_f16(x)), sa = _mm256_setzero_ps();
            __m256i corr = _mm256_setzero_si256();
            if (WT == 1) sa = _mm256_set1_ps(ld_f16(x + 2));
            if (WT == 0) corr = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(8), a), ones);
            for (int r = 0; r < NR; r++) {
                __m256i p;
                if (WT == 2)
                    p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], _mm256_sign_epi8(a, wsgn[r])), ones);
                else
                    p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], a), ones);
                if (WT == 0) p = _mm256_sub_epi32(p, corr);
                __m256 dd = _mm256_mul_ps(dw[r], da);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), dd, acc[r][t]);
                if (WT == 1) acc[r][t] = _mm256_fmadd_ps(mw[r], sa, acc[r][t]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) Y[t * ldy + r] = hsum8(acc[r][t]);
}

static void tile_q4_0(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_b32, nr, nt, W, ws, X, xs, K, Y, ldy, 0)
}
static void tile_q4_1(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_b32, nr, nt, W, ws, X, xs, K, Y, ldy, 1)
}
static void tile_q8_0(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_b32, nr, nt, W, ws, X, xs, K, Y, ldy, 2)
}

/* -------------------------------------------------------------- Q4_K x Q8_K
 * Per super-block and pair, all in exact int32 lanes:
 *   isum = sum_j sc_j * (q . a over sub-block j)   (maddubs, madd by sc_j)
 *   msum = sum_j m_j * (bsums[2j] + bsums[2j+1])   (one madd of the bsums)
 * then acc += isum * (d * da) and acc += msum * -(dmin * da). */
INLINE void q4k_unpack(const uint8_t *s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0xF) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

INLINE void tile_q4k(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                     size_t ldy, const int NR, const int NT) {
    const size_t nb = K / PT_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[2][2];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        uint8_t sc[2][8], mn[2][8];
        float dw[2], dmw[2];
        __m256i mv[2];
        const uint8_t *w[2];
        for (int r = 0; r < NR; r++) {
            w[r] = W + r * ws + b * sizeof(pt_block_q4_k);
            dw[r] = ld_f16(w[r]);
            dmw[r] = ld_f16(w[r] + 2);
            q4k_unpack(w[r] + 4, sc[r], mn[r]);
            /* [m0, m0, m1, m1, ...] as int16, to meet the 16 bsums. */
            __m128i m8 = _mm_loadl_epi64((const __m128i *)mn[r]);
            mv[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        }
        __m256i isum[2][2];
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) isum[r][t] = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i lo[2], hi[2], s_lo[2], s_hi[2];
            for (int r = 0; r < NR; r++) {
                __m256i raw = _mm256_loadu_si256((const __m256i *)(w[r] + 16 + 32 * g));
                lo[r] = _mm256_and_si256(raw, m4);
                hi[r] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                s_lo[r] = _mm256_set1_epi16(sc[r][2 * g]);
                s_hi[r] = _mm256_set1_epi16(sc[r][2 * g + 1]);
            }
            for (int t = 0; t < NT; t++) {
                const uint8_t *xq = X + t * xs + b * sizeof(pt_block_q8_k) + 4 + 64 * g;
                __m256i a_lo = _mm256_loadu_si256((const __m256i *)xq);
                __m256i a_hi = _mm256_loadu_si256((const __m256i *)(xq + 32));
                for (int r = 0; r < NR; r++) {
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(lo[r], a_lo), s_lo[r]);
                    p = _mm256_add_epi32(p, _mm256_madd_epi16(_mm256_maddubs_epi16(hi[r], a_hi), s_hi[r]));
                    isum[r][t] = _mm256_add_epi32(isum[r][t], p);
                }
            }
        }
        for (int t = 0; t < NT; t++) {
            const uint8_t *x = X + t * xs + b * sizeof(pt_block_q8_k);
            float da = kcpu_load_f32(x);
            __m256i bs = _mm256_loadu_si256((const __m256i *)(x + 4 + PT_QK_K));
            for (int r = 0; r < NR; r++) {
                __m256i msum = _mm256_madd_epi16(bs, mv[r]);
                float dd = dw[r] * da, dm = -(dmw[r] * da);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(dd), acc[r][t]);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dm), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) Y[t * ldy + r] = hsum8(acc[r][t]);
}

static void tile_q4_k(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_2x2(tile_q4k, nr, nt, W, ws, X, xs, K, Y, ldy)
}

/* -------------------------------------------------------------- Q6_K x Q8_K
 * q in 0..63 is unsigned, so isum = sum_g sc_g * (q . a over group g)
 * - 32 * sum_g sc_g * bsums[g], all exact in int32 lanes; acc += isum * (d * da). */
INLINE __m256i q6k_chunk(const uint8_t *w, int c) {
    int h = c / 4, k = c % 4;
    __m256i l = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32 * (k & 1)));
    if (k >= 2) l = _mm256_srli_epi16(l, 4);
    l = _mm256_and_si256(l, _mm256_set1_epi8(0x0F));
    __m256i hv = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
    hv = _mm256_and_si256(_mm256_srli_epi16(hv, 2 * k), _mm256_set1_epi8(3));
    return _mm256_or_si256(l, _mm256_slli_epi16(hv, 4));
}

INLINE void tile_q6k(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                     size_t ldy, const int NR, const int NT) {
    const size_t nb = K / PT_QK_K;
    __m256 acc[2][2];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *w[2];
        __m256i sc16[2];
        int8_t sc[2][16];
        for (int r = 0; r < NR; r++) {
            w[r] = W + r * ws + b * sizeof(pt_block_q6_k);
            memcpy(sc[r], w[r] + 192, 16);
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w[r] + 192)));
        }
        __m256i isum[2][2];
        for (int t = 0; t < NT; t++) {
            __m256i bs = _mm256_loadu_si256((const __m256i *)(X + t * xs + b * sizeof(pt_block_q8_k) + 4 + PT_QK_K));
            for (int r = 0; r < NR; r++)
                isum[r][t] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                              _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16[r]), 5));
        }
        for (int c = 0; c < 8; c++) {
            __m256i q[2], s[2];
            for (int r = 0; r < NR; r++) {
                q[r] = q6k_chunk(w[r], c);
                s[r] = _mm256_set_m128i(_mm_set1_epi16(sc[r][2 * c + 1]), _mm_set1_epi16(sc[r][2 * c]));
            }
            for (int t = 0; t < NT; t++) {
                __m256i a = _mm256_loadu_si256(
                    (const __m256i *)(X + t * xs + b * sizeof(pt_block_q8_k) + 4 + 32 * c));
                for (int r = 0; r < NR; r++)
                    isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_madd_epi16(_mm256_maddubs_epi16(q[r], a), s[r]));
            }
        }
        for (int t = 0; t < NT; t++) {
            float da = kcpu_load_f32(X + t * xs + b * sizeof(pt_block_q8_k));
            for (int r = 0; r < NR; r++) {
                float dd = ld_f16(w[r] + 208) * da;
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(dd), acc[r][t]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) Y[t * ldy + r] = hsum8(acc[r][t]);
}

static void tile_q6_k(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_2x2(tile_q6k, nr, nt, W, ws, X, xs, K, Y, ldy)
}

/* ------------------------------------------------------ F32, F16, BF16 x F32
 * WT: 0 = F32, 1 = F16, 2 = BF16. acc += w * x over 8-element steps; a tail
 * of K % 8 elements is copied into zero-padded buffers and takes the same
 * step, so the pair's sequence does not depend on where the tail is handled. */
INLINE __m256 load8w(const uint8_t *p, const int WT) {
    if (WT == 0) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (WT == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE void tile_f(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                   size_t ldy, const int WT, const int NR, const int NT) {
    const size_t es = WT == 0 ? 4 : 2;
    __m256 acc[4][2];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    size_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 w[4];
        for (int r = 0; r < NR; r++) w[r] = load8w(W + r * ws + k * es, WT);
        for (int t = 0; t < NT; t++) {
            __m256 x = _mm256_loadu_ps((const float *)(X + t * xs) + k);
            for (int r = 0; r < NR; r++) acc[r][t] = _mm256_fmadd_ps(w[r], x, acc[r][t]);
        }
    }
    if (k < K) {
        uint8_t wbuf[4][32];
        float xbuf[8];
        __m256 w[4];
        for (int r = 0; r < NR; r++) {
            memset(wbuf[r], 0, sizeof wbuf[r]);
            memcpy(wbuf[r], W + r * ws + k * es, (K - k) * es);
            w[r] = load8w(wbuf[r], WT);
        }
        for (int t = 0; t < NT; t++) {
            memset(xbuf, 0, sizeof xbuf);
            memcpy(xbuf, (const float *)(X + t * xs) + k, (K - k) * sizeof(float));
            __m256 x = _mm256_loadu_ps(xbuf);
            for (int r = 0; r < NR; r++) acc[r][t] = _mm256_fmadd_ps(w[r], x, acc[r][t]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) Y[t * ldy + r] = hsum8(acc[r][t]);
}

static void tile_f32(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                     size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_f, nr, nt, W, ws, X, xs, K, Y, ldy, 0)
}
static void tile_f16(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                     size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_f, nr, nt, W, ws, X, xs, K, Y, ldy, 1)
}
static void tile_bf16(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y,
                      size_t ldy, size_t nr, size_t nt) {
    KCPU_SWITCH_4x2(tile_f, nr, nt, W, ws, X, xs, K, Y, ldy, 2)
}

bool kcpu_matmul_avx2(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                      const void *X, size_t x_stride, size_t T, size_t K, float *Y, size_t ldy) {
    switch (wtype) {
    case PT_DTYPE_Q4_0: KCPU_DRIVE(tile_q4_0, 4, 2); return true;
    case PT_DTYPE_Q4_1: KCPU_DRIVE(tile_q4_1, 4, 2); return true;
    case PT_DTYPE_Q8_0: KCPU_DRIVE(tile_q8_0, 4, 2); return true;
    case PT_DTYPE_Q4_K: KCPU_DRIVE(tile_q4_k, 2, 2); return true;
    case PT_DTYPE_Q6_K: KCPU_DRIVE(tile_q6_k, 2, 2); return true;
    case PT_DTYPE_F32: KCPU_DRIVE(tile_f32, 4, 2); return true;
    case PT_DTYPE_F16: KCPU_DRIVE(tile_f16, 4, 2); return true;
    case PT_DTYPE_BF16: KCPU_DRIVE(tile_bf16, 4, 2); return true;
    default: return false;
    }
}
