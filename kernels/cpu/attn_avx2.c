/* The page update of attn.c with AVX2, FMA and F16C: the reference's
 * operations in the same order (see the definition at the top of attn.c),
 * the 16 lanes of a dot product held in two 8-lane registers, so the bits
 * are the reference's. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kcpu_internal.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m256 load8(const uint8_t *row, int kv_type, size_t d) {
    if (kv_type == PT_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d)));
    if (kv_type == PT_DTYPE_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + d))), 16));
    return _mm256_loadu_ps((const float *)row + d);
}

ALWAYS_INLINE __m256 exp8(__m256 x) {
    __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(KCPU_EXP_MIN), _CMP_GE_OQ);
    __m256 magic = _mm256_set1_ps(KCPU_ROUND_MAGIC);
    __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(KCPU_LOG2E));
    __m256 n = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-KCPU_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-KCPU_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KCPU_EXP_C6);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KCPU_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KCPU_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KCPU_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KCPU_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(ok, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* tree16 of the 16 lanes lo (0-7) and hi (8-15). */
ALWAYS_INLINE float tree16(__m256 lo, __m256 hi) {
    __m256 a = _mm256_add_ps(lo, hi);
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

/* One 16-key block; only the first nb rows of k and v are read. */
ALWAYS_INLINE void block(float *st, const float *q, size_t n_q, size_t hd, const uint8_t *k, const uint8_t *v,
                         int kv_type, size_t row_bytes, uint32_t nb, float scale) {
    const size_t nc = hd / 16;
    for (size_t h = 0; h < n_q; h++) {
        float *m = st + h, *l = st + n_q + h, *o = st + 2 * n_q + h * hd;
        const float *qh = q + h * hd;
        _Alignas(32) float s[16];
        float mb = -INFINITY;
        for (uint32_t kk = 0; kk < 16; kk++) {
            if (kk >= nb) {
                s[kk] = -INFINITY;
                continue;
            }
            __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
            const uint8_t *kr = k + kk * row_bytes;
            for (size_t c = 0; c < nc; c++) {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 16 * c), load8(kr, kv_type, 16 * c), lo);
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 16 * c + 8), load8(kr, kv_type, 16 * c + 8), hi);
            }
            s[kk] = tree16(lo, hi) * scale;
            mb = s[kk] > mb ? s[kk] : mb;
        }
        float mn = *m > mb ? *m : mb;
        float corr = _mm256_cvtss_f32(exp8(_mm256_set1_ps(*m - mn)));
        __m256 vmn = _mm256_set1_ps(mn);
        __m256 p_lo = exp8(_mm256_sub_ps(_mm256_load_ps(s), vmn));
        __m256 p_hi = exp8(_mm256_sub_ps(_mm256_load_ps(s + 8), vmn));
        *l = fmaf(*l, corr, tree16(p_lo, p_hi));
        _Alignas(32) float pk[16];
        _mm256_store_ps(pk, p_lo);
        _mm256_store_ps(pk + 8, p_hi);
        __m256 cv = _mm256_set1_ps(corr);
        /* Eight output lanes at a time through all of the block's keys: per
         * element the same sequence as the reference. */
        for (size_t c = 0; c < 2 * nc; c++) {
            __m256 ov = _mm256_mul_ps(_mm256_loadu_ps(o + 8 * c), cv);
            for (uint32_t kk = 0; kk < nb; kk++)
                ov = _mm256_fmadd_ps(_mm256_set1_ps(pk[kk]), load8(v + kk * row_bytes, kv_type, 8 * c), ov);
            _mm256_storeu_ps(o + 8 * c, ov);
        }
        *m = mn;
    }
}

ALWAYS_INLINE void page(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                        uint32_t n, float scale) {
    size_t rb = hd * (kv_type == PT_DTYPE_F32 ? 4 : 2);
    for (uint32_t j0 = 0; j0 < n; j0 += 16) {
        uint32_t nb = n - j0 < 16 ? n - j0 : 16;
        block(st, q, n_q, hd, (const uint8_t *)k + j0 * rb, (const uint8_t *)v + j0 * rb, kv_type, rb, nb, scale);
    }
}

#define BY_HD(T)                                                           \
    switch (hd) {                                                          \
    case 64: page(st, q, n_q, 64, k, v, T, n, scale); break;              \
    case 128: page(st, q, n_q, 128, k, v, T, n, scale); break;            \
    default: page(st, q, n_q, hd, k, v, T, n, scale); break;              \
    }

void kcpu_attn_page_avx2(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                         uint32_t n, float scale) {
    switch (kv_type) {
    case PT_DTYPE_F16: BY_HD(PT_DTYPE_F16) break;
    case PT_DTYPE_BF16: BY_HD(PT_DTYPE_BF16) break;
    default: BY_HD(PT_DTYPE_F32) break;
    }
}

void kcpu_widen_avx2(float *dst, const void *src, int type, size_t n) {
    size_t i = 0;
    if (type == PT_DTYPE_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, PT_DTYPE_F16, i));
    else
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, PT_DTYPE_BF16, i));
    kcpu_widen_ref(dst + i, (const uint16_t *)src + i, type, n - i);
}
