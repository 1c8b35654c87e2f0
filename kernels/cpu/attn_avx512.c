/* The page update of attn.c with AVX-512: the reference's operations in the
 * same order (see the definition at the top of attn.c), 16 lanes per
 * register, so the bits are the reference's.
 *
 * Per head, 16 keys' dot products accumulate in 16 registers, one per key,
 * lane j holding dimensions j (mod 16); one transpose-and-add network then
 * applies tree16 to all 16 keys at once, leaving the 16 scores in one
 * register. The output row stays in registers while the block's V rows are
 * added into it. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kcpu_internal.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __m512 load16(const uint8_t *row, int kv_type, size_t d) {
    if (kv_type == PT_DTYPE_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d)));
    if (kv_type == PT_DTYPE_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d))), 16));
    return _mm512_loadu_ps((const float *)row + d);
}

ALWAYS_INLINE __m512 exp16(__m512 x) {
    __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(KCPU_EXP_MIN), _CMP_GE_OQ);
    __m512 magic = _mm512_set1_ps(KCPU_ROUND_MAGIC);
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(KCPU_LOG2E));
    __m512 n = _mm512_sub_ps(_mm512_add_ps(t, magic), magic);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-KCPU_LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-KCPU_LN2_LO), r);
    __m512 p = _mm512_set1_ps(KCPU_EXP_C6);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KCPU_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KCPU_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KCPU_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KCPU_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(ok, p, _mm512_castsi512_ps(e));
}

/* tree16 of one register's lanes. */
ALWAYS_INLINE float tree16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

/* tree16 of acc[k] for the 16 keys at once; lane k of the result is key k.
 * Each level adds lanes j and j + 8, then j + 4, j + 2, j + 1 of every key,
 * as tree16 does, while packing two keys' halves into one register. */
ALWAYS_INLINE __m512 tree16x16(const __m512 acc[16]) {
    __m512 w[8], z[4], r[2];
    for (int i = 0; i < 8; i++) {
        __m512 a = acc[2 * i], b = acc[2 * i + 1];
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int i = 0; i < 4; i++) {
        __m512 a = w[2 * i], b = w[2 * i + 1];
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    for (int i = 0; i < 2; i++) {
        __m512 a = z[2 * i], b = z[2 * i + 1];
        r[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    __m512 s = _mm512_add_ps(_mm512_shuffle_ps(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* Lane 4i + c now holds key 4c + i: transpose the 4x4 back. */
    const __m512i back = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(back, s);
}

/* One 16-key block; k holds 16 readable rows, of which the first nb count. */
ALWAYS_INLINE void block(float *st, const float *q, size_t n_q, size_t hd, const uint8_t *k, const uint8_t *v,
                         int kv_type, size_t row_bytes, uint32_t nb, float scale) {
    const size_t nc = hd / 16;
    const __mmask16 valid = (__mmask16)((1u << nb) - 1);
    for (size_t h = 0; h < n_q; h++) {
        float *m = st + h, *l = st + n_q + h, *o = st + 2 * n_q + h * hd;
        __m512 qv[KCPU_ATTN_MAX_HD / 16], acc[16];
        for (size_t c = 0; c < nc; c++) qv[c] = _mm512_loadu_ps(q + h * hd + 16 * c);
        for (int kk = 0; kk < 16; kk++) {
            __m512 a = _mm512_setzero_ps();
            for (size_t c = 0; c < nc; c++) a = _mm512_fmadd_ps(qv[c], load16(k + kk * row_bytes, kv_type, 16 * c), a);
            acc[kk] = a;
        }
        __m512 s = _mm512_mul_ps(tree16x16(acc), _mm512_set1_ps(scale));
        s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s);
        float mb = _mm512_reduce_max_ps(s);
        float mn = *m > mb ? *m : mb;
        float corr = _mm_cvtss_f32(_mm512_castps512_ps128(exp16(_mm512_set1_ps(*m - mn))));
        __m512 p = exp16(_mm512_sub_ps(s, _mm512_set1_ps(mn)));
        *l = fmaf(*l, corr, tree16(p));
        float pk[16];
        _mm512_storeu_ps(pk, p);
        __m512 cv = _mm512_set1_ps(corr), ov[KCPU_ATTN_MAX_HD / 16];
        for (size_t c = 0; c < nc; c++) ov[c] = _mm512_mul_ps(_mm512_loadu_ps(o + 16 * c), cv);
        for (uint32_t kk = 0; kk < nb; kk++) {
            __m512 pb = _mm512_set1_ps(pk[kk]);
            for (size_t c = 0; c < nc; c++) ov[c] = _mm512_fmadd_ps(pb, load16(v + kk * row_bytes, kv_type, 16 * c), ov[c]);
        }
        for (size_t c = 0; c < nc; c++) _mm512_storeu_ps(o + 16 * c, ov[c]);
        *m = mn;
    }
}

ALWAYS_INLINE void page(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                        uint32_t n, float scale) {
    size_t rb = hd * (kv_type == PT_DTYPE_F32 ? 4 : 2);
    for (uint32_t j0 = 0; j0 < n; j0 += 16) {
        uint32_t nb = n - j0 < 16 ? n - j0 : 16;
        const uint8_t *kb = (const uint8_t *)k + j0 * rb, *vb = (const uint8_t *)v + j0 * rb;
        if (nb == 16) {
            block(st, q, n_q, hd, kb, vb, kv_type, rb, 16, scale);
        } else {
            /* A short block: its keys padded with zero rows, so that no row
             * past the page is read; their scores are masked out. */
            _Alignas(64) uint8_t kpad[16 * KCPU_ATTN_MAX_HD * 4];
            memcpy(kpad, kb, nb * rb);
            memset(kpad + nb * rb, 0, (16 - nb) * rb);
            block(st, q, n_q, hd, kpad, vb, kv_type, rb, nb, scale);
        }
    }
}

/* Instances with the element type and the common head dims as constants, so
 * the chunk loops unroll and the rows stay in registers. */
#define BY_HD(T)                                                           \
    switch (hd) {                                                          \
    case 64: page(st, q, n_q, 64, k, v, T, n, scale); break;              \
    case 128: page(st, q, n_q, 128, k, v, T, n, scale); break;            \
    default: page(st, q, n_q, hd, k, v, T, n, scale); break;              \
    }

void kcpu_attn_page_avx512(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v,
                           int kv_type, uint32_t n, float scale) {
    switch (kv_type) {
    case PT_DTYPE_F16: BY_HD(PT_DTYPE_F16) break;
    case PT_DTYPE_BF16: BY_HD(PT_DTYPE_BF16) break;
    default: BY_HD(PT_DTYPE_F32) break;
    }
}

void kcpu_widen_avx512(float *dst, const void *src, int type, size_t n) {
    size_t i = 0;
    if (type == PT_DTYPE_F16)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16(src, PT_DTYPE_F16, i));
    else
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16(src, PT_DTYPE_BF16, i));
    kcpu_widen_ref(dst + i, (const uint16_t *)src + i, type, n - i);
}
